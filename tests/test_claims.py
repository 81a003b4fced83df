"""Runs that overlap on one output: claims in `<output>_claims` share the units, never score one twice.

The claims table is changed by real Delta commits (the shared session, Spark Connect clients, job
processes): the "other run" of each test is either a real second run or a real claim written by
this process under another run's name, never a mock of the job.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from jobutil import ROOT, cli_cmd, delta_versions, env, kill_group, rows_for, start, summary

from spark_infer import run_job
from spark_infer.sinks._claims import Claim, ClaimsTable, acquire, this_host
from spark_infer.sinks.delta import is_delta_conflict
from spark_infer.units import UnitColumn, key_json

CATEGORY = [UnitColumn("category", "string")]
UNITS = ["books", "music", "garden", "toys", "tools", "games", "films", "maps"]


def unit_id(category: str) -> str:
    return key_json(CATEGORY, (category,))


def claims_of(spark, out: str) -> ClaimsTable:
    return ClaimsTable(spark, out + "_claims", is_delta_conflict)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("predictor")
    (d / "predictor.json").write_text('{"name": "text length"}')
    return str(d)


def units_input(path: str, units: list[str]) -> tuple[str, list[tuple]]:
    """One partition per unit, 3 rows each, written with delta-rs (no Spark job): runs only read it."""
    rows = [r for k, cat in enumerate(units) for r in rows_for(cat, 100 * k, 3)]
    ids, cats, texts = zip(*rows, strict=True)
    write_deltalake(path, pa.table({"id": pa.array(ids, pa.int64()), "category": list(cats), "text": list(texts)}),
                    partition_by=["category"])
    return path, rows


@pytest.fixture(scope="module")
def eight_units(tmp_path_factory):
    """Shared by the overlap tests: each writes its own output, none writes the input."""
    return units_input(str(tmp_path_factory.mktemp("eight") / "in"), UNITS)


@pytest.fixture(scope="module")
def four_units(tmp_path_factory):
    return units_input(str(tmp_path_factory.mktemp("four") / "in"), UNITS[:4])


def job_args(inp: str, out: str, predictor: str, delay_s: float = 0.0) -> list[str]:
    return ["--input", inp, "--output", out, "--task", "custom", "--model", predictor,
            "--option", "predictor=predictors:TextLength", "--option", 'columns=["text"]',
            "--option", f'predictor_options={{"delay_s": {delay_s}}}', "--group-units", "1",
            "--concurrent-units", "1", "--progress-interval", "0"]


def job_config(inp: str, out: str, predictor: str, **kw) -> dict:
    return {"input": inp, "output": out, "task": "custom", "model": predictor, "group_units": 1,
            "concurrent_groups": 1, "task_options": {"predictor": "predictors:TextLength", "columns": ["text"]}, **kw}


# -- the table --------------------------------------------------------------------------------------------
def test_runs_changing_the_claims_table_at_once_never_share_a_unit(spark, tmp_path):
    table = claims_of(spark, str(tmp_path / "out"))
    groups = [[unit_id(c)] for c in UNITS[:4]]
    got: dict[str, set[str]] = {}

    def claim(run: str) -> None:
        mine = Claim("", run, "job", f"host-{run}", 1, 0)
        after = claims_of(spark, str(tmp_path / "out")).change(acquire(mine, groups, [], 60_000))
        got[run] = {c.unit for c in after if c.run_id == run}

    threads = [threading.Thread(target=claim, args=(f"run{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [u for units in got.values() for u in units]
    assert sorted(held) == sorted(g[0] for g in groups)  # each unit to exactly one run
    assert {c.unit: c.run_id for c in table.live()} == {u: r for r, units in got.items() for u in units}

    # a holder releases: the unit is free for the next run, which takes only what nobody holds
    winner = next(r for r, units in got.items() if units)
    first = sorted(got[winner])[0]
    table.change(acquire(Claim("", winner, "job", f"host-{winner}", 1, 0), [], [first], 60_000))
    late = Claim("", "late", "job", "host-late", 1, 0)
    after = table.change(acquire(late, [[first], [sorted(got[winner])[-1]]], [], 60_000))
    assert {c.unit for c in after if c.run_id == "late"} == {first}


def test_a_claim_lapses_after_its_ttl_and_at_once_when_its_process_on_this_host_is_gone(spark, tmp_path):
    table = claims_of(spark, str(tmp_path / "out"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def four_runs_claim(live: list[Claim], now: int) -> list[Claim]:  # one table change for the four
        return [Claim(unit_id("books"), "gone", "job", this_host(), dead.pid, now + 600_000),
                Claim(unit_id("music"), "alive", "job", this_host(), os.getpid(), now + 600_000),
                Claim(unit_id("toys"), "far", "job", "another-host", 1, now + 600_000),
                Claim(unit_id("maps"), "lapsed", "job", "another-host", 1, now - 1)]  # its ttl ran out unrenewed

    table.change(four_runs_claim)
    # a dead local process holds nothing, a claim past its ttl holds nothing (a real run waiting for
    # a claim to lapse: test_a_run_waits_for_a_claim_that_lapses_then_scores_the_unit)
    assert {c.run_id for c in table.live()} == {"alive", "far"}
    assert {c.run_id for c in table._read()[0]} == {"gone", "alive", "far", "lapsed"}  # all four were written


# -- one run meeting another's claims -----------------------------------------------------------------------
@pytest.mark.slow
def test_units_a_live_run_holds_are_left_to_it_and_exit_6_names_it(spark, four_units, predictor, tmp_path):
    inp, rows = four_units
    out = str(tmp_path / "out")
    other = Claim("", "nightly-run-7", "nightly", "another-host", 4242, 0)
    claims_of(spark, out).change(acquire(other, [[unit_id("music")], [unit_id("toys")]], [], 600_000))
    s = run_job(job_config(inp, out, predictor, on_claimed="exit"), spark=spark)
    assert s.exit_code == 6 and s.status == "claimed_elsewhere", s.error
    assert "nightly-run-7" in s.error and "another-host" in s.error
    assert sorted(s.units_committed) == ["category=books", "category=garden"]
    assert s.rows_uncommitted == 0 and s.counters["rows"] == 2 * 3  # the held units were never scored
    held = {c.unit: c.run_id for c in claims_of(spark, out).live()}
    assert held == {unit_id("music"): "nightly-run-7", unit_id("toys"): "nightly-run-7"}  # ours are released


@pytest.mark.slow
def test_a_run_waits_for_a_claim_that_lapses_then_scores_the_unit(spark, four_units, predictor, tmp_path):
    inp, rows = four_units
    out = str(tmp_path / "out")
    other = Claim("", "dead-elsewhere", "nightly", "another-host", 4242, 0)  # killed on another host: never renewed
    lapses = claims_of(spark, out).change(acquire(other, [[unit_id("books")]], [], 10_000))[0].expires_ms / 1000
    s = run_job(job_config(inp, out, predictor, claim_ttl_s=30), spark=spark)
    assert s.exit_code == 0, s.error
    # the first unit of the plan was left while held, and scored last, once the claim had lapsed
    assert len(s.units_committed) == 4 and s.units_committed[-1] == "category=books", s.units_committed
    books = spark.read.format("delta").load(out).where("category = 'books'").selectExpr("min(scored_at) t").first().t
    assert books.timestamp() >= lapses
    got = {r.id: r.prediction for r in spark.read.format("delta").load(out).collect()}
    assert got == {i: len(text) for i, _, text in rows}
    assert claims_of(spark, out).live() == []


# -- two real runs at once ----------------------------------------------------------------------------------
def _two_runs_at_once(spark, cmds: list[list[str]], tmp_path, rows) -> list[dict]:
    procs = [start(cmd, str(tmp_path / f"run{i}.log")) for i, cmd in enumerate(cmds)]
    try:
        codes = [p.wait(timeout=500) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    logs = [open(tmp_path / f"run{i}.log").read()[-3000:] for i in range(len(cmds))]
    records = [summary(str(tmp_path / f"s{i}.json")) for i in range(len(cmds))]
    # the whole record and log tail of a failed run (a tuple in the message was cut by pytest's repr)
    assert codes == [0, 0], "\n\n".join(f"run {i}: exit {c}, error {r.get('error')!r}, units_failed "
                                         f"{r.get('units_failed')}\n{log}"
                                         for i, (c, r, log) in enumerate(zip(codes, records, logs, strict=True)))
    done = [set(r["units_committed"]) for r in records]
    # the runs shared the units: each committed some, none committed by both, every unit by one
    assert done[0] and done[1] and not done[0] & done[1], done
    assert done[0] | done[1] == {f"category={c}" for c in UNITS}
    # no unit was scored twice: the workers of both runs scored each row once
    assert sum(r["counters"]["rows"] for r in records) == len(rows), [r["counters"] for r in records]
    assert [r["rows_uncommitted"] for r in records] == [0, 0]
    return records


def _then_every_id_once_and_a_third_run_commits_nothing(spark, out, rows, third: list[str]) -> None:
    res = spark.read.format("delta").load(out)
    assert res.count() == res.select("id").distinct().count() == len(rows)
    assert {r.id: r.prediction for r in res.collect()} == {i: len(text) for i, _, text in rows}
    version = delta_versions(out)[-1]
    r = subprocess.run(third, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert delta_versions(out)[-1] == version


@pytest.mark.slow
def test_two_runs_started_together_share_the_units_and_a_third_commits_nothing(spark, eight_units, predictor,
                                                                               tmp_path):
    inp, rows = eight_units
    out = str(tmp_path / "out")
    job = job_args(inp, out, predictor, delay_s=0.5)
    _two_runs_at_once(spark, [cli_cmd(*job, "--summary-json", str(tmp_path / f"s{i}.json")) for i in range(2)],
                      tmp_path, rows)
    _then_every_id_once_and_a_third_run_commits_nothing(spark, out, rows, cli_cmd(*job))


@pytest.mark.slow
def test_two_connect_runs_started_together_share_the_units(spark, connect_url, eight_units, predictor, tmp_path):
    inp, rows = eight_units
    out = str(tmp_path / "out")
    job = job_args(inp, out, predictor, delay_s=0.5)
    remote = [sys.executable, "-m", "spark_infer", "score", "--remote", connect_url]
    _two_runs_at_once(spark, [[*remote, *job, "--summary-json", str(tmp_path / f"s{i}.json")] for i in range(2)],
                      tmp_path, rows)
    _then_every_id_once_and_a_third_run_commits_nothing(spark, out, rows, [*remote, *job])


# -- commits make overlap safe, claims or not ---------------------------------------------------------------
def test_a_run_commits_at_the_version_it_planned_so_a_unit_another_run_committed_since_is_not_rewritten(
        spark, four_units, predictor, tmp_path):
    from spark_infer.errors import ConcurrentRunError
    from spark_infer.job import ScoringJob
    from spark_infer.run import build_config

    inp, rows = four_units
    out = str(tmp_path / "out")
    cfg = job_config(inp, out, predictor, claims=False, group_units=4)
    late = ScoringJob(build_config(base=cfg), spark)
    late.resolve_model()
    late.make_plan()  # plans all 4 units at this output version (no table yet)
    first = run_job(cfg, spark=spark)  # another run commits them meanwhile
    assert first.exit_code == 0 and len(first.units_committed) == 4
    version = delta_versions(out)[-1]
    # the late run's commit names the version it planned at: Delta skips it (the other run's came
    # first), never a second commit of the same units
    with pytest.raises(ConcurrentRunError):
        late.score_and_commit()
    assert delta_versions(out)[-1] == version
