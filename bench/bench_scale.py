"""Scale: the job's own costs (session, plan, score + commit) with a near-free model, and the ratios
that say whether cost follows the work or the table.

    python bench/bench_scale.py                       # prints the table and the ratios
    python bench/bench_scale.py --json scale.json --big-rows 2000000
    python bench/bench_scale.py --only groups --groups 2000   # 2,000 commit groups in one run (long)

Every run is `spark-infer score` as its own process on local[*] with a `custom` predictor that
returns the text's length, so only the job's overhead counts. Inputs are written with delta-rs.

| run | what it shows |
| --- | --- |
| 4,000 rows as 4 partitions, first run | the baseline first run |
| the same 4,000 rows as 400 partitions, first run | per-unit cost (commit groups) |
| 200k rows, 4 partitions, no-op rerun | the fixed cost of a run with nothing to do |
| 2M rows, 4 partitions, no-op rerun | ... that must not grow with the table (no row reads) |
| 200k / 2M rows + one new partition | a nightly run: only the new partition's rows are read |
| 40k rows in 8 partitions of 4 files: first run, input OPTIMIZE, run, no-op | the run after a compaction hashes and records it; the no-op after that reads no row and starts no JVM |
| `--groups N`: N partitions, one commit group per unit (`--group-units 1`) | per-group cost stays flat over a long run |

Goals (docs/performance.md reports the measured numbers): 400 vs 4 partitions ≤ 2x; no-op plan 2M vs
200k ≤ 1.1x; no-op plan vs a first run's session start ≤ 0.5x; one new partition on 2M vs on 200k ≤ 1.2x;
a no-op CLI run (no JVM: planned from the logs, the run record appended with delta-rs) ≤ 5 s wall, the
one after an input OPTIMIZE with 0 Spark jobs; with `--groups`, the mean group time of the last 10% of
groups vs the first 10% ≤ 1.2x. Group times are the `group_s` of each `event=group_committed` line the
job logs (from a group's start to its commit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # predictors.TextLength


def env() -> dict[str, str]:
    e = dict(os.environ, PYSPARK_PYTHON=sys.executable, TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.join(ROOT, "tests"), e.get("PYTHONPATH", "")) if p)
    e.pop("PYSPARK_GATEWAY_PORT", None)
    return e


def write_input(path: str, rows: int, partitions: int, start_id: int = 0, mode: str = "error",
                prefix: str = "p") -> None:
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake

    ids = np.arange(start_id, start_id + rows, dtype=np.int64)
    parts = np.array([f"{prefix}{i % partitions:04d}" for i in range(rows)])
    text = np.char.add("text of row ", ids.astype(str))
    write_deltalake(path, pa.table({"id": ids, "part": parts, "text": text}), partition_by=["part"], mode=mode)


def compact(path: str) -> None:
    """OPTIMIZE the input (delta-rs): every unit's files change, none of its rows."""
    from deltalake import DeltaTable

    DeltaTable(path).optimize.compact()


def group_times(log: str) -> list[float]:
    """Each commit group's seconds, from its start to its commit, in commit order (the job's
    `event=group_committed ... group_s=...` lines)."""
    return [float(m.group(1)) for line in log.splitlines() if line.startswith("event=group_committed")
            for m in [re.search(r"\bgroup_s=([0-9.eE+-]+)", line)] if m]


def flatness(times: list[float]) -> dict:
    """Mean group time of the first and the last 10% of groups, their ratio, and each decile's mean;
    the same ratio of medians too (the first groups wait for the Python workers to start: a mean
    over them flatters the ratio)."""
    import statistics

    n = max(1, len(times) // 10)
    first, last = sum(times[:n]) / n, sum(times[-n:]) / n
    mfirst, mlast = statistics.median(times[:n]), statistics.median(times[-n:])
    cuts = [i * len(times) // 10 for i in range(11)]
    deciles = [round(sum(times[a:b]) / max(1, b - a), 3) for a, b in zip(cuts, cuts[1:], strict=False)]
    return {"groups": len(times), "first_10pct_s": round(first, 3), "last_10pct_s": round(last, 3),
            "ratio": round(last / first, 3) if first else float("nan"),
            "median_ratio": round(mlast / mfirst, 3) if mfirst else float("nan"), "decile_means_s": deciles}


def score(inp: str, out: str, model: str, base: str, name: str, *extra: str) -> dict:
    js = os.path.join(base, f"{name}.json")
    cmd = [sys.executable, "-m", "spark_infer", "score", "--master", "local[*]", "--input", inp, "--output", out,
           "--task", "custom", "--model", model, "--option", "predictor=predictors:TextLength",
           "--option", 'columns=["text"]', "--summary-json", js, "--progress-interval", "0", *extra]
    log_path = os.path.join(base, f"{name}.log")  # streamed: a long run's group lines can be read while it runs
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        r = subprocess.run(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, timeout=4 * 3600)
    wall = time.monotonic() - t0
    with open(log_path) as f:
        output = f.read()
    if r.returncode != 0:
        raise SystemExit(f"{name} failed ({r.returncode}):\n{output[-4000:]}")
    with open(js) as f:
        s = json.load(f)
    d = s["durations_s"]
    return {"run": name, "wall_s": round(wall, 1), "session_start_s": d.get("session_start", 0.0),
            "plan_s": d.get("plan", 0.0), "score_commit_s": d.get("score_commit", 0.0),
            "units_committed": len(s["units_committed"]), "groups": s["plan"].get("groups", 0),
            "spark_jobs": s.get("spark_jobs", {}), "session_kind": s.get("session_kind", ""),
            "group_s": group_times(output)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-rows", type=int, default=200_000)
    p.add_argument("--big-rows", type=int, default=2_000_000)
    p.add_argument("--groups", type=int, default=0,
                   help="also score this many partitions of 2 rows, one commit group each (2000: ~30 min)")
    p.add_argument("--only", action="append", choices=["scale", "optimize", "groups"],
                   help="run only these parts (repeatable; default: scale and optimize, and groups with --groups)")
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args(argv)
    parts = set(ns.only or ["scale", "optimize", *(["groups"] if ns.groups else [])])
    if "groups" in parts and not ns.groups:
        p.error("--only groups needs --groups N")
    base = tempfile.mkdtemp(prefix="bench-scale-")
    model = os.path.join(base, "model")
    os.makedirs(model)
    with open(os.path.join(model, "predictor.json"), "w") as f:
        f.write('{"name": "text length"}')

    results = []

    def run(inp: str, out: str, name: str, *extra: str) -> dict:
        r = score(inp, out, model, base, name, *extra)
        results.append(r)
        print(f"{name:<52} wall {r['wall_s']:7.1f}s  session {r['session_start_s']:5.1f}s ({r['session_kind']})  "
              f"plan {r['plan_s']:6.2f}s  score+commit {r['score_commit_s']:7.1f}s  jobs {r['spark_jobs']}",
              flush=True)
        return r

    ratios: dict[str, float] = {}
    noops: list[dict] = []
    if "scale" in parts:
        for n in (4, 400):
            inp = os.path.join(base, f"in{n}")
            write_input(inp, 4000, n)
            run(inp, os.path.join(base, f"out{n}"), f"4,000 rows as {n} partitions, first run")
        for rows in (ns.small_rows, ns.big_rows):
            inp, out = os.path.join(base, f"in_{rows}"), os.path.join(base, f"out_{rows}")
            write_input(inp, rows, 4)
            run(inp, out, f"{rows:,} rows, 4 partitions, first run")
            noops.append(run(inp, out, f"{rows:,} rows, 4 partitions, no-op rerun"))
            write_input(inp, 1000, 1, start_id=10**9, mode="append", prefix="new")
            run(inp, out, f"{rows:,} rows + one new partition")
        by = {r["run"]: r for r in results}
        small, big = f"{ns.small_rows:,}", f"{ns.big_rows:,}"
        ratios.update({
            "first run, 400 vs 4 partitions (goal <= 2)":
                by["4,000 rows as 400 partitions, first run"]["wall_s"]
                / by["4,000 rows as 4 partitions, first run"]["wall_s"],
            f"no-op plan, {big} vs {small} rows (goal <= 1.1)":
                by[f"{big} rows, 4 partitions, no-op rerun"]["plan_s"]
                / max(by[f"{small} rows, 4 partitions, no-op rerun"]["plan_s"], 1e-3),
            # a no-op starts no session now: its plan is compared with the first run's session start
            "no-op plan vs a first run's session start (goal <= 0.5)":
                by[f"{big} rows, 4 partitions, no-op rerun"]["plan_s"]
                / by[f"{big} rows, 4 partitions, first run"]["session_start_s"],
            f"one new partition, {big} vs {small} rows (goal <= 1.2)":
                by[f"{big} rows + one new partition"]["wall_s"] / by[f"{small} rows + one new partition"]["wall_s"],
        })
    if "optimize" in parts:
        inp, out = os.path.join(base, "in_opt"), os.path.join(base, "out_opt")
        for k in range(4):  # four appends: four files per partition
            write_input(inp, 10_000, 8, start_id=10_000 * k, mode="append")
        run(inp, out, "40,000 rows in 8 x 4 files, first run")
        compact(inp)
        after = run(inp, out, "after an input OPTIMIZE: hashed, recorded")
        noop = run(inp, out, "after an input OPTIMIZE: the next no-op")
        noops.append(noop)
        ratios["post-OPTIMIZE run: Spark jobs planning (> 0: rows hashed)"] = after["spark_jobs"].get("plan", -1)
        ratios["post-OPTIMIZE no-op: Spark jobs planning (goal 0)"] = noop["spark_jobs"].get("plan", -1)
    if noops:
        ratios["no-op CLI wall, slowest, s (goal <= 5)"] = max(r["wall_s"] for r in noops)
    flat: dict = {}
    times: list[float] = []
    if "groups" in parts:
        inp, out = os.path.join(base, f"in_groups{ns.groups}"), os.path.join(base, f"out_groups{ns.groups}")
        write_input(inp, 2 * ns.groups, ns.groups)
        name = f"{ns.groups:,} partitions, one commit group each"
        print(f"{name}: the job's log is {os.path.join(base, name)}.log", flush=True)
        r = run(inp, out, name, "--group-units", "1")
        times = r["group_s"]
        flat = flatness(times)
        print(f"groups: {flat}", flush=True)
        ratios[f"{ns.groups:,} groups: mean group time, last vs first 10% (goal <= 1.2)"] = flat["ratio"]
    print("\n| run | wall | session start | plan | score + commit | Spark jobs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        session = f"{r['session_start_s']:.1f} s" if r["session_kind"] != "none" else "none"
        print(f"| {r['run']} | {r['wall_s']:.1f} s | {session} | {r['plan_s']:.2f} s | "
              f"{r['score_commit_s']:.1f} s | {r['spark_jobs']} |")
    print("\n| ratio | measured |")
    print("| --- | --- |")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"runs": [{k: v for k, v in r.items() if k != "group_s"} for r in results],
                       "ratios": ratios, "groups": flat, "group_s": times}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
