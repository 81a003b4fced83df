"""Scale: the job's own costs (session, plan, score + commit) with a near-free model, and the ratios
that say whether cost follows the work or the table.

    python bench/bench_scale.py                       # prints the table and the ratios
    python bench/bench_scale.py --json scale.json --big-rows 2000000

Every run is `spark-infer score` as its own process on local[*] with a `custom` predictor that
returns the text's length, so only the job's overhead counts. Inputs are written with delta-rs.

| run | what it shows |
| --- | --- |
| 4,000 rows as 4 partitions, first run | the baseline first run |
| the same 4,000 rows as 400 partitions, first run | per-unit cost (commit groups) |
| 200k rows, 4 partitions, no-op rerun | the fixed cost of a run with nothing to do |
| 2M rows, 4 partitions, no-op rerun | ... that must not grow with the table (no row reads) |
| 200k / 2M rows + one new partition | a nightly run: only the new partition's rows are read |

Goals (the README reports the measured numbers): 400 vs 4 partitions ≤ 2x; no-op plan 2M vs 200k
≤ 1.1x; no-op plan vs session start ≤ 0.5x; one new partition on 2M vs on 200k ≤ 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
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


def score(inp: str, out: str, model: str, base: str, name: str) -> dict:
    js = os.path.join(base, f"{name}.json")
    cmd = [sys.executable, "-m", "spark_infer", "score", "--master", "local[*]", "--input", inp, "--output", out,
           "--task", "custom", "--model", model, "--option", "predictor=predictors:TextLength",
           "--option", 'columns=["text"]', "--summary-json", js, "--progress-interval", "0"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    with open(js) as f:
        s = json.load(f)
    d = s["durations_s"]
    return {"run": name, "wall_s": round(wall, 1), "session_start_s": d.get("session_start", 0.0),
            "plan_s": d.get("plan", 0.0), "score_commit_s": d.get("score_commit", 0.0),
            "units_committed": len(s["units_committed"]), "groups": s["plan"].get("groups", 0),
            "spark_jobs": s.get("spark_jobs", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small-rows", type=int, default=200_000)
    p.add_argument("--big-rows", type=int, default=2_000_000)
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args(argv)
    base = tempfile.mkdtemp(prefix="bench-scale-")
    model = os.path.join(base, "model")
    os.makedirs(model)
    with open(os.path.join(model, "predictor.json"), "w") as f:
        f.write('{"name": "text length"}')

    results = []

    def run(inp: str, out: str, name: str) -> dict:
        r = score(inp, out, model, base, name)
        results.append(r)
        print(f"{name:<44} wall {r['wall_s']:7.1f}s  session {r['session_start_s']:5.1f}s  "
              f"plan {r['plan_s']:6.2f}s  score+commit {r['score_commit_s']:7.1f}s  jobs {r['spark_jobs']}",
              flush=True)
        return r

    for parts in (4, 400):
        inp = os.path.join(base, f"in{parts}")
        write_input(inp, 4000, parts)
        run(inp, os.path.join(base, f"out{parts}"), f"4,000 rows as {parts} partitions, first run")
    for rows in (ns.small_rows, ns.big_rows):
        inp, out = os.path.join(base, f"in_{rows}"), os.path.join(base, f"out_{rows}")
        write_input(inp, rows, 4)
        run(inp, out, f"{rows:,} rows, 4 partitions, first run")
        run(inp, out, f"{rows:,} rows, 4 partitions, no-op rerun")
        write_input(inp, 1000, 1, start_id=10**9, mode="append", prefix="new")
        run(inp, out, f"{rows:,} rows + one new partition")

    by = {r["run"]: r for r in results}
    small, big = f"{ns.small_rows:,}", f"{ns.big_rows:,}"
    ratios = {
        "first run, 400 vs 4 partitions (goal <= 2)":
            by["4,000 rows as 400 partitions, first run"]["wall_s"] / by["4,000 rows as 4 partitions, first run"]["wall_s"],
        f"no-op plan, {big} vs {small} rows (goal <= 1.1)":
            by[f"{big} rows, 4 partitions, no-op rerun"]["plan_s"]
            / max(by[f"{small} rows, 4 partitions, no-op rerun"]["plan_s"], 1e-3),
        "no-op plan vs session start (goal <= 0.5)":
            by[f"{big} rows, 4 partitions, no-op rerun"]["plan_s"]
            / by[f"{big} rows, 4 partitions, no-op rerun"]["session_start_s"],
        f"one new partition, {big} vs {small} rows (goal <= 1.2)":
            by[f"{big} rows + one new partition"]["wall_s"] / by[f"{small} rows + one new partition"]["wall_s"],
    }
    print("\n| run | wall | session start | plan | score + commit |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['run']} | {r['wall_s']:.1f} s | {r['session_start_s']:.1f} s | {r['plan_s']:.2f} s | "
              f"{r['score_commit_s']:.1f} s |")
    print("\n| ratio | measured |")
    print("| --- | --- |")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"runs": results, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
