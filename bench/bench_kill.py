"""Repeated kills: SIGKILL the job at random moments, rerun, and compare with an uninterrupted run.

    python bench/bench_kill.py                  # 24 single-run kills + 6 overlap kills, 32 units of 20 rows
    python bench/bench_kill.py --kills 20 --overlap-kills 4 --seed 7 --json kill.json

Every run is `spark-infer score` (tiny BERT, local[2]) in its own process group, with its own Spark
local dir; a kill is SIGKILL to the whole group (driver, JVM, Python workers). Where a run is comes
from what it leaves: its log (`event=run_start`, the `plan: units_total=...` line), a `blockmgr-*`
folder in its Spark local dir (the session is up) and the output (a new `_delta_log` version, data
files written but not yet committed). A clean run of the same job first measures when each stage
starts; it is the reference for every comparison.

Single-run kills (`--kills`, default 24) go round the four stages in turn, all on one output, each
attempt resuming what the previous ones left:
  start-up   a random time before the session is up (imports, model fingerprint, JVM start)
  planning   a random time after the session is up, before the plan is printed
  scoring    mid-group: a random time into the first group, or after the attempt's first commit
  commit     within 0.3 s after a new output version appears, or while a group's data files are
             written and its version is not (the write in flight)
The stage an attempt aimed at is not always the one it hits (a slow start, a fast group): each
attempt records the stage its kill landed in, read from the run's state at the moment of the kill,
and the tables count by that. After each attempt the output is read: ids committed before that are
gone (lost), ids present twice (duplicated) and rows that differ from the clean run's are charged to
that attempt's stage. After the last kill one run finishes the output.

Overlap kills (`--overlap-kills`, default 6): two runs of the job start together on one output (they
share its units through `<output>_claims`); one of them, drawn at random, is killed at a random stage
while the other goes on. In some attempts (`--survivor-kill-share`) the survivor is killed too, at a
random moment later; otherwise it must finish with exit 0, without waiting for the dead run's claims.
An output that a survivor finished is replaced by a fresh one for the next attempt. Per attempt: exit
codes, the survivor's `rows_uncommitted` and claim waits (`event=claims_waited`), and the units each
run committed, from the output's log (each commit names its run): no unit may be committed by both.

At the end every output is finished by one run, compared with the clean run (ids lost, ids duplicated,
rows whose outputs differ, allclose 1e-5), and run once more: that no-op rerun must commit nothing.
It prints one table per stage, one per overlap attempt and the totals; with --json it writes them. It
keeps its temporary folder (logs, outputs, summaries) and prints its path. Exit 1 on any lost,
duplicated or differing row, a no-op rerun that commits, a survivor that fails or hangs, or
any run of an overlap attempt that was not killed and did not exit 0.
A script, not a test: with the defaults it runs about 20 minutes on 2 lightly loaded cores, an hour on busy ones.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

STAGES = ("start-up", "planning", "scoring", "commit")
#: a kill this soon after a new output version counts as a kill at the commit
COMMIT_WINDOW_S = 0.3
#: a run that has not ended after this long is killed and reported as hung
HANG_S = 900.0
POLL_S = 0.05

#: process groups started and not yet reaped: all killed on the way out, whatever happens
_LIVE: dict[int, subprocess.Popen] = {}


def env(local_dir: str | None = None) -> dict[str, str]:
    e = dict(os.environ, PYSPARK_PYTHON=sys.executable, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("PYSPARK_GATEWAY_PORT", None)
    if local_dir is not None:
        e["SPARK_LOCAL_DIRS"] = local_dir  # the run's own: its blockmgr-* says the session is up
    return e


def job_cmd(inp: str, out: str, model: str, js: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--master", "local[2]", "--input", inp, "--output", out,
            "--model", model, "--group-units", "2", "--concurrent-units", "2", "--summary-json", js,
            "--progress-interval", "0"]


def versions(path: str) -> int:
    log = os.path.join(path, "_delta_log")
    return len([f for f in os.listdir(log) if f.endswith(".json")]) if os.path.isdir(log) else 0


def data_files(path: str) -> int:
    """Parquet files under the output's partition folders (committed or not)."""
    n = 0
    for _, subdirs, files in os.walk(path):
        if "_delta_log" in subdirs:
            subdirs.remove("_delta_log")
        n += sum(f.endswith(".parquet") for f in files)
    return n


class Watch:
    """Where one run is, from its log, its Spark local dir and the output; `poll` it often."""

    def __init__(self, log: str, local_dir: str, out: str) -> None:
        self.log, self.local_dir, self.out = log, local_dir, out
        self.t0 = time.monotonic()
        self.run_id = ""
        self.session_at: float | None = None
        self.plan_at: float | None = None
        self.version_at: list[float] = []  # when each new output version was seen (not the table's creation)
        self.inflight_at: float | None = None  # data files beyond the last version's: a write in flight
        self._version = versions(out)
        self._files = data_files(out)
        self._pos = 0
        self._tail = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def poll(self) -> None:
        el = self.elapsed()
        if self.session_at is None and os.path.isdir(self.local_dir) and any(
                n.startswith("blockmgr-") for n in os.listdir(self.local_dir)):
            self.session_at = el
        self._read_log(el)
        v = versions(self.out)
        if v > self._version:
            self.version_at += [el] * (v - max(1, self._version))
            self._version, self._files, self.inflight_at = v, data_files(self.out), None
        elif self.inflight_at is None and self.plan_at is not None and data_files(self.out) > self._files:
            self.inflight_at = el

    def _read_log(self, el: float) -> None:
        try:
            with open(self.log, errors="replace") as f:
                f.seek(self._pos)
                text = f.read()
                self._pos = f.tell()
        except FileNotFoundError:
            return
        lines = (self._tail + text).split("\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith("event=run_start") and not self.run_id:
                m = re.search(r"\brun_id=(\w+)", line)
                self.run_id = m.group(1) if m else ""
            elif line.startswith("plan: units_total=") and self.plan_at is None:
                self.plan_at = el

    def stage(self) -> str:
        """The stage the run is in now."""
        if self.session_at is None:
            return "start-up"
        if self.plan_at is None:
            return "planning"
        if self.inflight_at is not None or (self.version_at and self.elapsed() - self.version_at[-1] <= COMMIT_WINDOW_S):
            return "commit"
        return "scoring"


@dataclass
class Timing:
    """When the clean run reached each stage (seconds from its start)."""

    session_s: float
    plan_s: float
    first_commit_s: float
    per_group_s: float


Trigger = Callable[[Watch], bool]


def trigger_for(stage: str, rng: random.Random, t: Timing) -> tuple[Trigger, str]:
    """A kill rule aimed at `stage` and its description."""
    if stage == "start-up":
        at = rng.uniform(0.3, max(0.5, 0.95 * t.session_s))
        return (lambda w: w.elapsed() >= at or w.session_at is not None), f"+{at:.1f}s"
    if stage == "planning":
        d = rng.uniform(0.0, 0.9 * max(0.2, t.plan_s - t.session_s))
        return (lambda w: (w.session_at is not None and w.elapsed() >= w.session_at + d) or w.plan_at is not None,
                f"session up +{d:.1f}s")
    if stage == "scoring":
        if rng.random() < 0.4:  # into the first group, before any commit
            d = rng.uniform(0.5, max(1.0, 0.8 * (t.first_commit_s - t.plan_s)))
            return (lambda w: w.plan_at is not None and w.elapsed() >= w.plan_at + d), f"plan +{d:.1f}s"
        d = rng.uniform(COMMIT_WINDOW_S + 0.2, max(1.0, 0.8 * t.per_group_s))
        return (lambda w: bool(w.version_at) and w.elapsed() >= w.version_at[0] + d), f"1st commit +{d:.1f}s"
    if rng.random() < 0.5:  # right after a commit
        d = rng.uniform(0.0, COMMIT_WINDOW_S)
        return (lambda w: bool(w.version_at) and w.elapsed() >= w.version_at[0] + d), f"1st commit +{d:.2f}s"
    d = rng.uniform(0.0, 0.15)  # while a group's files are written, before its version (else right after it)
    return (lambda w: (w.inflight_at is not None and w.elapsed() >= w.inflight_at + d)
            or (bool(w.version_at) and w.elapsed() >= w.version_at[0] + d)), f"write in flight +{d:.2f}s"


@dataclass
class Run:
    """One started job: its process group, what it is doing, and how it ended."""

    name: str
    log: str
    summary: str
    watch: Watch
    proc: subprocess.Popen
    code: int | None = None
    killed_stage: str | None = None
    seconds: float = 0.0
    hung: bool = False
    done: bool = False

    def poll(self) -> bool:
        """True once the run is over (ended, or killed)."""
        if not self.done:
            self.watch.poll()
            code = self.proc.poll()
            if code is not None:
                self.code, self.done, self.seconds = code, True, self.watch.elapsed()
            elif self.watch.elapsed() > HANG_S:
                self.hung = True
                self.kill()
        return self.done

    def kill(self) -> None:
        if not self.done:
            self.killed_stage = self.watch.stage()
        kill_group(self.proc)
        if not self.done:
            self.done, self.seconds = True, self.watch.elapsed()

    def record(self) -> dict | None:
        try:
            with open(self.summary) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None


def start(cmd: list[str], name: str, base: str, out: str) -> Run:
    log, local = os.path.join(base, f"{name}.log"), os.path.join(base, "local", name)
    os.makedirs(local, exist_ok=True)
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env(local), stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
    _LIVE[p.pid] = p
    return Run(name, log, cmd[cmd.index("--summary-json") + 1], Watch(log, local, out), p)


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    _LIVE.pop(p.pid, None)


def kill_all() -> None:
    for p in list(_LIVE.values()):
        kill_group(p)


def run_until(runs: list[Run], rules: dict[str, Trigger]) -> None:
    """Poll `runs` until all are over; kill a run once its rule (by name) says so. A run that ended
    by itself is still reaped with its whole group (no worker outlives it)."""
    try:
        while not all([r.poll() for r in runs]):  # a list: every run polled, every time
            for r in runs:
                rule = rules.get(r.name)
                if not r.done and rule is not None and rule(r.watch):
                    r.kill()
            time.sleep(POLL_S)
    finally:
        for r in runs:
            r.kill()


def run_once(cmd: list[str], name: str, base: str, out: str) -> Run:
    r = start(cmd, name, base, out)
    run_until([r], {})
    return r


def read(path: str) -> dict[int, list[tuple]]:
    from deltalake import DeltaTable

    if versions(path) == 0:
        return {}
    rows = DeltaTable(path).to_pyarrow_table(columns=["id", "embedding", "error", "input_state"]).to_pylist()
    out: dict[int, list[tuple]] = {}
    for r in rows:
        out.setdefault(r["id"], []).append((r["embedding"], r["error"], r["input_state"]))
    return out


def compare(want: dict[int, list[tuple]], got: dict[int, list[tuple]], before: set[int] | None = None
            ) -> dict[str, list[int]]:
    """Ids lost (all of `want`, or those of `before` when given), duplicated, and differing."""
    import numpy as np

    expected = set(want) if before is None else before
    return {
        "lost": sorted(expected - set(got)),
        "duplicated": sorted(i for i, v in got.items() if len(v) > 1),
        "differing": sorted(
            i for i in set(want) & set(got)
            if any(g[1] != want[i][0][1] or g[2] != want[i][0][2]
                   or not np.allclose(np.array(g[0]), np.array(want[i][0][0]), atol=1e-5) for g in got[i])
        ),
        "unexpected": sorted(set(got) - set(want)),
    }


def new_problems(want: dict[int, list[tuple]], before: dict[int, list[tuple]], after: dict[int, list[tuple]]
                 ) -> dict[str, list[int]]:
    """What an attempt broke: ids committed before it and gone after it, and ids duplicated,
    differing or unexpected after it that were not before."""
    old, new = compare(want, before, set(before)), compare(want, after, set(before))
    return {k: sorted(set(v) - set(old[k])) for k, v in new.items()}


def committed_units(out: str, after: int) -> dict[str, list[str]]:
    """Units committed in the output's versions from `after` on, by the run their commit names."""
    by_run: dict[str, list[str]] = {}
    log = os.path.join(out, "_delta_log")
    for v in range(after, versions(out)):
        run_id, units = "", []
        with open(os.path.join(log, f"{v:020d}.json")) as f:
            for line in f:
                action = json.loads(line)
                if "commitInfo" in action:
                    try:
                        run_id = json.loads(action["commitInfo"].get("userMetadata") or "{}").get("spark_infer_run", "")
                    except (ValueError, AttributeError):
                        run_id = ""
                elif "add" in action:
                    units.append(",".join(f"{k}={v}" for k, v in sorted(action["add"]["partitionValues"].items())))
        if run_id:
            by_run.setdefault(run_id, []).extend(units)
    return by_run


def claims_waits(log: str) -> list[float]:
    with open(log, errors="replace") as f:
        return [float(m.group(1)) for m in re.finditer(r"^event=claims_waited .*?waited_s=([\d.]+)", f.read(), re.M)]


def timing_of(clean: Run) -> Timing:
    w = clean.watch
    session = w.session_at or 5.0
    plan = w.plan_at or session + 1.0
    first = w.version_at[0] if w.version_at else plan + 5.0
    commits = w.version_at
    per_group = (commits[-1] - commits[0]) / (len(commits) - 1) if len(commits) > 1 else 10.0
    return Timing(session, plan, first, per_group)


def single_kills(ns: argparse.Namespace, rng: random.Random, t: Timing, cmd: Callable[[str, str], list[str]],
                 base: str, out: str, want: dict[int, list[tuple]]) -> list[dict]:
    attempts = []
    for k in range(ns.kills):
        aim = STAGES[k % len(STAGES)]
        rule, how = trigger_for(aim, rng, t)
        before_v, before = versions(out), read(out)
        r = start(cmd(out, f"k{k}"), f"k{k}", base, out)
        run_until([r], {r.name: rule})
        check = new_problems(want, before, read(out))
        a = {"aim": aim, "rule": how, "stage": r.killed_stage or "not killed", "exit_code": r.code,
             "seconds": round(r.seconds, 1), "commits_before": max(0, before_v - 1),
             "commits_after": max(0, versions(out) - 1), "log": r.log,
             **{k2: len(v) for k2, v in check.items()}}
        attempts.append(a)
        print(f"attempt {k + 1:2d}: aim {aim:<9} {how:<24} -> {a['stage'] if r.code is None else f'exit {r.code}'}"
              f" after {r.seconds:5.1f}s, commits {a['commits_before']} -> {a['commits_after']}"
              f"{'' if not any(check.values()) else f'  PROBLEM {check}'}", flush=True)
    return attempts


def overlap_kills(ns: argparse.Namespace, rng: random.Random, t: Timing, cmd: Callable[[str, str], list[str]],
                  base: str, want: dict[int, list[tuple]]) -> tuple[list[dict], list[str]]:
    """Overlap attempts; returns them and the outputs they used."""
    outputs = [os.path.join(base, "ov0")]
    attempts = []
    for k in range(ns.overlap_kills):
        out = outputs[-1]
        victim = rng.randrange(2)
        aim = rng.choice(STAGES)
        rule, how = trigger_for(aim, rng, t)
        also = rng.random() < ns.survivor_kill_share
        later = rng.uniform(1.0, 3 * t.per_group_s)
        before_v, before = versions(out), read(out)
        runs = [start(cmd(out, f"o{k}{ab}"), f"o{k}{ab}", base, out) for ab in "ab"]
        v, s = runs[victim], runs[1 - victim]
        rules: dict[str, Trigger] = {v.name: rule}
        if also:
            rules[s.name] = lambda w, v=v, later=later: v.done and w.elapsed() >= v.seconds + later
        run_until(runs, rules)
        check = new_problems(want, before, read(out))
        by_run = committed_units(out, before_v)
        ids = [r.watch.run_id for r in runs]
        sets = [set(by_run.get(i, [])) for i in ids]
        recs = [r.record() for r in runs]
        summary_sets = [set(rec.get("units_committed", [])) if rec else set() for rec in recs]
        waits = claims_waits(s.log)
        a = {
            "aim": aim, "rule": how, "victim": v.name, "victim_stage": v.killed_stage or "not killed",
            "victim_exit": v.code, "survivor": s.name, "survivor_killed_too": also,
            "survivor_stage": s.killed_stage, "survivor_exit": s.code, "survivor_hung": s.hung,
            "survivor_s": round(s.seconds, 1),
            "survivor_rows_uncommitted": recs[1 - victim].get("rows_uncommitted") if recs[1 - victim] else None,
            "units_committed_log": [len(x) for x in sets],
            "units_committed_summary": [len(x) if rec else None for x, rec in zip(summary_sets, recs, strict=True)],
            "disjoint": not (sets[0] & sets[1]) and not (summary_sets[0] & summary_sets[1]),
            "both_in": sorted((sets[0] & sets[1]) | (summary_sets[0] & summary_sets[1])),
            "failed_unkilled": [f"{r.name}: exit {r.code}" for r in runs if r.killed_stage is None and r.code != 0],
            "claims_waited_s": waits, "output": out, "logs": [r.log for r in runs],
            "commits_before": max(0, before_v - 1), "commits_after": max(0, versions(out) - 1),
            **{k2: len(x) for k2, x in check.items()},
        }
        attempts.append(a)
        both, failed = "both_in", "failed_unkilled"
        print(f"overlap {k + 1}: victim {v.name}: {a['victim_stage']} (aim {aim} {how}"
              f"{'' if v.killed_stage else f', exit {v.code}'}); {s.name} "
              f"{'killed at ' + str(s.killed_stage) if s.killed_stage else f'exit {s.code}'} after {s.seconds:.1f}s"
              f"{' HUNG' if s.hung else ''}; units by log {a['units_committed_log']}, "
              f"rows_uncommitted {a['survivor_rows_uncommitted']}, waits {waits}"
              f"{'' if a['disjoint'] and not any(check.values()) else f'  PROBLEM {check} both: {a[both]}'}"
              f"{f'  FAILED WITHOUT A KILL: {a[failed]}' if a['failed_unkilled'] else ''}",
              flush=True)
        if s.code == 0 and k + 1 < ns.overlap_kills:  # the survivor finished the output: start a fresh one
            outputs.append(os.path.join(base, f"ov{len(outputs)}"))
    return attempts, outputs


def finish(out: str, name: str, cmd: Callable[[str, str], list[str]], base: str,
           want: dict[int, list[tuple]]) -> dict:
    """Finish `out` with one run, compare it with the clean run, then rerun: that must commit nothing."""
    r = run_once(cmd(out, f"{name}_final"), f"{name}_final", base, out)
    final_v = versions(out)
    noop = run_once(cmd(out, f"{name}_noop"), f"{name}_noop", base, out)
    check = compare(want, read(out))
    return {"output": out, "final_exit": r.code, "noop_exit": noop.code,
            "noop_commits_nothing": noop.code == 0 and versions(out) == final_v,
            **{k: len(v) for k, v in check.items()}, "ids": {k: v[:20] for k, v in check.items() if v}}


def stage_table(attempts: list[dict]) -> list[dict]:
    rows = []
    for st in (*STAGES, "not killed"):
        xs = [a for a in attempts if a["stage"] == st]
        rows.append({"stage": st, "attempts": len(xs), "aimed_here": sum(a["aim"] == st for a in attempts),
                     "commits": sum(a["commits_after"] - a["commits_before"] for a in xs),
                     "lost": sum(a["lost"] for a in xs), "duplicated": sum(a["duplicated"] for a in xs),
                     "differing": sum(a["differing"] for a in xs)})
    return rows


def print_tables(stages: list[dict], overlaps: list[dict], finals: list[dict]) -> None:
    print("\n| stage (where the kill landed) | kills | aimed at it | commits by them | ids lost | ids duplicated "
          "| rows differing |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in stages:
        print(f"| {r['stage']} | {r['attempts']} | {r['aimed_here']} | {r['commits']} | {r['lost']} | "
              f"{r['duplicated']} | {r['differing']} |")
    print("\n| overlap | victim: stage | survivor: exit (or killed at) | s | rows_uncommitted | units committed "
          "(log a/b) | summary a/b | disjoint | claims waits s | lost/dup/diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, a in enumerate(overlaps, 1):
        surv = f"killed at {a['survivor_stage']}" if a["survivor_stage"] else f"exit {a['survivor_exit']}"
        vic = a["victim_stage"] if a["victim_stage"] != "not killed" else f"not killed, exit {a['victim_exit']}"
        print(f"| {i} | {a['victim']}: {vic} | {a['survivor']}: {surv}{' HUNG' if a['survivor_hung'] else ''}"
              f" | {a['survivor_s']} | {a['survivor_rows_uncommitted']} | {a['units_committed_log'][0]}/"
              f"{a['units_committed_log'][1]} | {a['units_committed_summary'][0]}/{a['units_committed_summary'][1]} | "
              f"{'yes' if a['disjoint'] else 'NO'} | {a['claims_waited_s']} | "
              f"{a['lost']}/{a['duplicated']}/{a['differing']} |")
    print("\n| output | final run exit | ids lost | ids duplicated | rows differing | no-op rerun commits nothing |")
    print("| --- | --- | --- | --- | --- | --- |")
    for f in finals:
        print(f"| {os.path.basename(f['output'])} | {f['final_exit']} | {f['lost']} | {f['duplicated']} | "
              f"{f['differing']} | {'yes' if f['noop_commits_nothing'] else 'NO'} |")


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    from deltalake import write_deltalake
    from jobutil import rows_for
    from tiny_models import make_tiny_bert

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=24, help="single-run kills, round the four stages")
    p.add_argument("--overlap-kills", type=int, default=6, help="attempts of two runs, one of them killed")
    p.add_argument("--survivor-kill-share", type=float, default=0.35,
                   help="share of overlap attempts whose survivor is killed too")
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--rows-per-unit", type=int, default=20)
    p.add_argument("--seed", type=int, default=20261129)
    p.add_argument("--json", help="write the result here")
    ns = p.parse_args(argv)
    rng = random.Random(ns.seed)
    t_all = time.monotonic()
    base = tempfile.mkdtemp(prefix="bench-kill-")
    print(f"folder: {base}", flush=True)
    model = make_tiny_bert(os.path.join(base, "model"))
    inp = os.path.join(base, "in")
    rows = []
    for k in range(ns.units):
        rows += [(i, f"unit{k:02d}", t) for i, _, t in rows_for("books", 1000 * k, ns.rows_per_unit)]
    ids, cats, texts = zip(*rows, strict=True)
    write_deltalake(inp, pa.table({"id": pa.array(ids, pa.int64()), "category": list(cats), "text": list(texts)}),
                    partition_by=["category"])

    def cmd(out: str, name: str) -> list[str]:
        return job_cmd(inp, out, model, os.path.join(base, f"{name}.json"))

    try:
        clean_out = os.path.join(base, "clean")
        clean = run_once(cmd(clean_out, "clean"), "clean", base, clean_out)
        assert clean.code == 0, open(clean.log).read()[-3000:]
        t = timing_of(clean)
        print(f"clean run: {clean.seconds:.1f}s, {versions(clean_out) - 1} commits; session up {t.session_s:.1f}s, "
              f"plan {t.plan_s:.1f}s, first commit {t.first_commit_s:.1f}s, {t.per_group_s:.1f}s a group", flush=True)
        want = read(clean_out)
        out = os.path.join(base, "out")
        singles = single_kills(ns, rng, t, cmd, base, out, want)
        finals = [finish(out, "out", cmd, base, want)] if ns.kills else []
        overlaps, ov_outputs = overlap_kills(ns, rng, t, cmd, base, want)
        finals += [finish(o, os.path.basename(o), cmd, base, want) for o in ov_outputs if ns.overlap_kills]
    finally:
        kill_all()
    stages = stage_table(singles)
    print_tables(stages, overlaps, finals)
    survivors_ok = all(a["survivor_exit"] == 0 for a in overlaps if not a["survivor_killed_too"])
    unkilled_failed = [f for a in overlaps for f in a["failed_unkilled"]]
    ok = (all(not (f["lost"] or f["duplicated"] or f["differing"] or f["unexpected"]) and f["noop_commits_nothing"]
              and f["final_exit"] == 0 for f in finals)
          and not any(a["lost"] or a["duplicated"] or a["differing"] for a in singles + overlaps)
          and survivors_ok and not unkilled_failed and all(a["disjoint"] for a in overlaps))
    wall = time.monotonic() - t_all
    print(f"\nkills: {sum(a['stage'] != 'not killed' for a in singles)} single-run, {len(overlaps)} overlap; "
          f"survivors that had to finish all exited 0: {'yes' if survivors_ok else 'NO'}; "
          f"runs not killed that failed: {unkilled_failed or 'none'}; "
          f"{'OK' if ok else 'PROBLEM'}; {wall / 60:.1f} min; folder {base}")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"units": ns.units, "rows": len(rows), "seed": ns.seed, "ok": ok, "wall_s": round(wall, 1),
                       "clean_run_s": round(clean.seconds, 1), "timing": t.__dict__, "stages": stages,
                       "single_attempts": singles, "overlap_attempts": overlaps, "finals": finals, "folder": base},
                      f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally: kill_all() still runs
    sys.exit(main())
