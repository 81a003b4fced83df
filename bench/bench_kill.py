"""Repeated kills: SIGKILL the job at random moments, rerun, and compare with an uninterrupted run.

    python bench/bench_kill.py                  # 12 kills over 32 units of 20 rows, tiny BERT, local[2]
    python bench/bench_kill.py --kills 20 --seed 7 --json kill.json

Each attempt starts `spark-infer score` in its own process group and kills the whole group (driver,
JVM, Python workers) with SIGKILL at a random moment: a third of the attempts at a random time during
start-up and planning, the others a random time after their first or second commit, so kills land
in the middle of commit groups, right after commits and before any. After the last kill one run
finishes the job. The result is compared with a clean run of the same job: ids lost, ids
duplicated, rows whose outputs differ (allclose 1e-5), and whether a further rerun commits nothing.
It prints one table and, with --json, writes the numbers. A script, not a test: a run takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def env() -> dict[str, str]:
    e = dict(os.environ, PYSPARK_PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("PYSPARK_GATEWAY_PORT", None)
    return e


def job_cmd(inp: str, out: str, model: str, js: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--master", "local[2]", "--input", inp, "--output", out,
            "--model", model, "--group-units", "2", "--concurrent-units", "2", "--summary-json", js,
            "--progress-interval", "0"]


def run(cmd: list[str], log: str, kill_when=None) -> tuple[int | None, float]:
    """Run `cmd` in its own process group; SIGKILL the group once `kill_when(elapsed_s)` says so.
    Returns (exit code, or None when killed; seconds)."""
    t0 = time.monotonic()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        code = None
        try:
            while True:
                code = p.poll()
                if code is not None or time.monotonic() - t0 > 900:
                    break
                if kill_when is not None and kill_when(time.monotonic() - t0):
                    break
                time.sleep(0.05)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    return code, time.monotonic() - t0


def read(path: str) -> dict[int, tuple]:
    from deltalake import DeltaTable

    rows = DeltaTable(path).to_pyarrow_table(columns=["id", "embedding", "error", "input_state"]).to_pylist()
    out: dict[int, tuple] = {}
    for r in rows:
        out.setdefault(r["id"], []).append((r["embedding"], r["error"], r["input_state"]))
    return out


def versions(path: str) -> int:
    log = os.path.join(path, "_delta_log")
    return len([f for f in os.listdir(log) if f.endswith(".json")]) if os.path.isdir(log) else 0


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import pyarrow as pa
    from deltalake import write_deltalake
    from jobutil import rows_for
    from tiny_models import make_tiny_bert

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--rows-per-unit", type=int, default=20)
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--json", help="write the result here")
    ns = p.parse_args(argv)
    rng = random.Random(ns.seed)
    base = tempfile.mkdtemp(prefix="bench-kill-")
    model = make_tiny_bert(os.path.join(base, "model"))
    inp = os.path.join(base, "in")
    rows = []
    for k in range(ns.units):
        rows += [(i, f"unit{k:02d}", t) for i, _, t in rows_for("books", 1000 * k, ns.rows_per_unit)]
    ids, cats, texts = zip(*rows, strict=True)
    write_deltalake(inp, pa.table({"id": pa.array(ids, pa.int64()), "category": list(cats), "text": list(texts)}),
                    partition_by=["category"])

    clean = os.path.join(base, "clean")
    code, clean_s = run(job_cmd(inp, clean, model, os.path.join(base, "clean.json")), os.path.join(base, "clean.log"))
    assert code == 0, open(os.path.join(base, "clean.log")).read()[-3000:]
    print(f"clean run: {clean_s:.1f}s, {versions(clean) - 1} commits")

    with open(os.path.join(base, "clean.json")) as f:
        clean_record = json.load(f)
    startup = clean_record["durations_s"].get("session_start", 5.0) + clean_record["durations_s"].get("plan", 1.0)
    per_group = clean_record["durations_s"].get("score_commit", clean_s) / max(1, clean_record["plan"]["groups"])

    out = os.path.join(base, "out")
    attempts = []
    for k in range(ns.kills):
        before = versions(out)
        if k % 3 == 0:  # somewhere in start-up or planning
            moment, delay, after_commits = "start-up", rng.uniform(0.3, startup), 0
        else:  # after the first or second commit of this attempt, within a group's time
            moment, delay, after_commits = "after commit", rng.uniform(0.0, per_group), rng.choice((1, 2))
        seen: dict[str, float] = {}

        def kill_when(elapsed: float, before=before, delay=delay, after_commits=after_commits, seen=seen) -> bool:
            if after_commits == 0:
                return elapsed >= delay
            if "at" not in seen and versions(out) - max(before, 1) >= after_commits:
                seen["at"] = elapsed
            return "at" in seen and elapsed >= seen["at"] + delay

        code, took = run(job_cmd(inp, out, model, os.path.join(base, f"k{k}.json")), os.path.join(base, f"k{k}.log"),
                         kill_when)
        attempts.append({"moment": moment, "delay_s": round(delay, 1), "after_commits": after_commits,
                         "killed": code is None, "exit_code": code, "seconds": round(took, 1),
                         "commits_before": max(0, before - 1), "commits_after": max(0, versions(out) - 1)})
        print(f"attempt {k + 1:2d}: {moment:<12} +{delay:4.1f}s -> {'killed' if code is None else f'exit {code}'} "
              f"after {took:5.1f}s, commits {attempts[-1]['commits_before']} -> {attempts[-1]['commits_after']}")
    code, _ = run(job_cmd(inp, out, model, os.path.join(base, "final.json")), os.path.join(base, "final.log"))
    assert code == 0, open(os.path.join(base, "final.log")).read()[-3000:]
    final_versions = versions(out)
    code, _ = run(job_cmd(inp, out, model, os.path.join(base, "noop.json")), os.path.join(base, "noop.log"))
    noop = code == 0 and versions(out) == final_versions

    want, got = read(clean), read(out)
    lost = sorted(set(want) - set(got))
    duplicated = sorted(i for i, v in got.items() if len(v) > 1)
    differ = sorted(
        i for i in set(want) & set(got)
        if got[i][0][1] != want[i][0][1] or got[i][0][2] != want[i][0][2]
        or not np.allclose(np.array(got[i][0][0]), np.array(want[i][0][0]), atol=1e-5)
    )
    result = {
        "units": ns.units, "rows": len(rows), "kills": sum(a["killed"] for a in attempts),
        "attempts": len(attempts),
        "kills_after_a_commit": sum(a["killed"] and a["commits_after"] > a["commits_before"] for a in attempts),
        "ids_lost": len(lost), "ids_duplicated": len(duplicated), "rows_differing": len(differ),
        "rerun_commits_nothing": noop, "clean_run_s": round(clean_s, 1), "attempt_log": attempts,
    }
    print("\n| kills | of which after a commit of theirs | ids lost | ids duplicated | rows differing | no-op rerun |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {result['kills']} | {result['kills_after_a_commit']} | {result['ids_lost']} | "
          f"{result['ids_duplicated']} | {result['rows_differing']} | {'yes' if noop else 'NO'} |")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result, f, indent=2)
    ok = not lost and not duplicated and not differ and noop
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
