"""Row grain (`commit.incremental: row`): a rerun costs the rows that changed, on real Spark and Delta.

Each scenario changes a few rows of an input that was scored once, reruns the job, and checks the
three things a user checks: how many rows were scored (exactly the new and changed ones), the
output (every input id once, results equal to the model on the current text, deleted ids gone), and
that kept rows were not scored again (their run id and scoring time are the first run's).
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from jobutil import summary
from test_claims import job_args

from spark_infer.cli import run_score
from spark_infer.run import ExitCode
from spark_infer.runtime import RuntimeOptions, make_spec, score_stream

SCHEMA = "id long, category string, text string, price double"


def rows(n: int, start: int = 0, variant: str = "") -> list[tuple]:
    cats = ["books", "music", "garden"]
    return [(i, cats[i % 3], f"item {i} {variant} " + "word " * (i % 7), float(i)) for i in range(start, start + n)]


def write(spark, path, data, partitioned, mode="overwrite"):
    w = spark.createDataFrame(data, SCHEMA).write.format("delta").mode(mode)
    if partitioned:
        w = w.partitionBy("category")
    w.save(path)


def job(tmp_path, inp, out, model, *extra, name="s.json"):
    js = str(tmp_path / name)
    code = run_score(["--input", inp, "--output", out, "--model", model, "--summary-json", js,
                      "--buckets", "4", *extra])
    return code, (summary(js) if os.path.exists(js) else None)


def assert_exact(spark, inp, out, model, states=True):
    """Every input id once in the output, with the model's result for its current text (and, unless
    `states` is False, its row state)."""
    src = {r.id: r.text for r in spark.read.format("delta").load(inp).collect()}
    res = spark.read.format("delta").load(out).select("id", "embedding", "input_row_state").collect()
    ids = [r.id for r in res]
    assert len(ids) == len(set(ids)), "an id twice in the output"
    assert set(ids) == set(src)
    assert not states or all(r.input_row_state is not None for r in res)
    spec = make_spec("embed", model, device_kind="cpu")
    order = sorted(src)
    want, _ = next(score_stream(spec, RuntimeOptions(), [[src[i] for i in order]]))
    got = {r.id: np.array(r.embedding) for r in res}
    for i, v in zip(order, want.to_pylist(), strict=True):
        np.testing.assert_allclose(got[i], np.array(v), atol=1e-5)


def change(spark, inp):
    """+13 rows appended (3 of them in a category that is new: a new unit of a partitioned input, in
    the same commit group as changed ones), 5 rows' text updated, 5 rows deleted (Delta DML, as users
    change tables)."""
    from delta.tables import DeltaTable

    new = rows(10, start=1000, variant="new") + [(2000 + i, "toys", f"toy {i}", 1.0) for i in range(3)]
    write(spark, inp, new, partitioned=None, mode="append")
    t = DeltaTable.forPath(spark, inp)
    t.update("id IN (3, 17, 42, 77, 120)", {"text": "concat(text, ' revised')"})
    t.delete("id IN (5, 18, 43, 78, 121)")


@pytest.mark.parametrize("partitioned", [False, True], ids=["id_buckets", "partitions"])
def test_a_rerun_scores_exactly_the_new_and_changed_rows_and_drops_the_deleted(
        spark, tmp_path, tiny_bert, partitioned):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(150), partitioned)
    code, s = job(tmp_path, inp, out, tiny_bert)
    assert code == ExitCode.OK and s["rows_scored"] == 150
    first = {r.id: (r.run_id, r.scored_at) for r in spark.read.format("delta").load(out).collect()}

    change(spark, inp)
    # the dry run says it row by row, before anything is scored
    code, d = job(tmp_path, inp, out, tiny_bert, "--dry-run", name="d.json")
    assert code == ExitCode.OK
    assert (d["plan"]["rows_pending"], d["plan"]["rows_new"], d["plan"]["rows_changed"],
            d["plan"]["rows_deleted"], d["plan"]["rows_kept"]) == (18, 13, 5, 5, 140)

    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.OK, s
    assert s["rows_scored"] == 18 and s["counters"]["rows"] == 18
    assert (s["plan"]["rows_new"], s["plan"]["rows_changed"], s["plan"]["rows_deleted"]) == (13, 5, 5)
    assert_exact(spark, inp, out, tiny_bert)
    now = {r.id: (r.run_id, r.scored_at) for r in spark.read.format("delta").load(out).collect()}
    changed = {3, 17, 42, 77, 120} | set(range(1000, 1010)) | {2000, 2001, 2002}
    assert {i for i in now if now[i] != first.get(i)} == changed  # kept rows: the first run's results
    assert all(now[i][0] == s["run_id"] for i in changed)
    # the runs table counts the rows by what happened to them (delta-rs reads it as Spark does)
    from deltalake import DeltaTable as RsTable

    runs = {r["run_id"]: r for r in RsTable(out + "_runs").to_pyarrow_table().to_pylist()}
    r = runs[s["run_id"]]
    assert (r["rows_new"], r["rows_changed"], r["rows_deleted"], r["rows_kept"], r["rows"]) == (13, 5, 5, 140, 18)

    # done: the next run writes nothing, planned from the two Delta logs alone (no JVM), as after a
    # whole-unit commit: the kept rows carry the unit's new states
    # (its own process: this one holds an active session, which a run always uses)
    from jobutil import cli_cmd
    from jobutil import run as run_process

    js = str(tmp_path / "s3.json")
    r = run_process(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert, "--buckets", "4",
                            "--summary-json", js))
    s3 = summary(js)
    assert r.returncode == 0 and s3["rows_scored"] == 0 and s3["units_committed"] == [], r.stdout[-3000:]
    assert s3["session_kind"] == "none" and s3["spark_jobs"] == {"plan": 0}, s3["plan"]


def test_unit_grain_is_todays_behaviour(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(60), partitioned=True)
    assert job(tmp_path, inp, out, tiny_bert, "--incremental", "unit")[0] == ExitCode.OK
    change(spark, inp)
    code, s = job(tmp_path, inp, out, tiny_bert, "--incremental", "unit", name="s2.json")
    assert code == ExitCode.OK and s["rows_scored"] == 70  # four whole units: 60 + 13 new - 3 deleted
    assert_exact(spark, inp, out, tiny_bert)


def test_a_change_to_a_column_the_task_does_not_read_scores_nothing(spark, tmp_path, tiny_bert):
    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(60), partitioned=False)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    DeltaTable.forPath(spark, inp).update("id < 30", {"price": "price + 1"})
    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.OK and s["rows_scored"] == 0 and s["plan"]["rows_pending"] == 0
    assert_exact(spark, inp, out, tiny_bert)


def test_duplicate_ids_are_a_config_error_before_any_write(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(30), partitioned=False)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    before = spark.read.format("delta").load(out).count()
    # the same ids appended again (a replayed load): today both copies were scored and committed
    write(spark, inp, rows(3, start=10, variant="again"), partitioned=None, mode="append")
    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.CONFIG
    assert "10 (2 rows)" in s["error"] and "11 (2 rows)" in s["error"] and "'id'" in s["error"]
    assert spark.read.format("delta").load(out).count() == before


def test_a_model_change_rescores_at_row_grain_or_keeps_old_rows_with_new_only(spark, tmp_path, tiny_bert):
    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(60), partitioned=True)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    DeltaTable.forPath(spark, inp).update("id IN (1, 2)", {"text": "concat(text, ' v2')"})
    # new_only: the two changed rows are scored with the new model; the rest keep the old one
    code, s = job(tmp_path, inp, out, tiny_bert, "--option", "pooling=cls", "--on-model-change", "new_only",
                  name="s2.json")
    assert code == ExitCode.OK and s["rows_scored"] == 2, s
    fps = {r.id: r.model_fingerprint for r in spark.read.format("delta").load(out).collect()}
    assert {i for i, fp in fps.items() if fp == s["model_fingerprint"]} == {1, 2}
    # rescore: every row of another model, and nothing else (the two are already done)
    code, s = job(tmp_path, inp, out, tiny_bert, "--option", "pooling=cls", name="s3.json")
    assert code == ExitCode.OK and s["rows_scored"] == 58, s
    fps = {r.model_fingerprint for r in spark.read.format("delta").load(out).collect()}
    assert fps == {s["model_fingerprint"]}


def test_the_mass_delete_guard_counts_rows(spark, tmp_path, tiny_bert):
    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(100), partitioned=False)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    # every bucket keeps a few rows: no unit is gone, but 95% of the rows are
    DeltaTable.forPath(spark, inp).delete("id >= 5")
    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.CONFIG and "95 of the output's 100 rows" in s["error"]
    assert spark.read.format("delta").load(out).count() == 100
    code, s = job(tmp_path, inp, out, tiny_bert, "--allow-mass-delete", name="s3.json")
    assert code == ExitCode.OK and s["rows_scored"] == 0 and s["plan"]["rows_deleted"] == 95
    assert_exact(spark, inp, out, tiny_bert)


def test_error_rows_are_rescored_alone_under_rescore_errors(spark, tmp_path):
    from delta.tables import DeltaTable
    from test_exactly_once import custom

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    data = [(i, "toys", f"toy {i} BAD" if i < 2 else f"toy {i}", 0.0) for i in range(20)]
    spark.createDataFrame(data, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    s = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.5)
    assert s.exit_code == 0 and s.counters["error_rows"] == 2
    # the input is fixed for one of the two rows; another row changes too
    DeltaTable.forPath(spark, inp).update("id IN (0, 7)", {"text": "'fixed'"})
    s = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.5)
    assert s.exit_code == 0 and s.rows_scored == 2  # the fixed row and the changed one, not the other error row
    assert spark.read.format("delta").load(out).where("error is not null").count() == 1
    s = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.5, rescore_errors=True)
    assert s.exit_code == 0 and s.rows_scored == 1 and s.plan["rows_changed"] == 1


def test_an_output_written_before_row_states_upgrades_without_rescoring(spark, tmp_path, tiny_bert):
    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(60), partitioned=True)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    # the output as an older spark-infer left it: no input_row_state column (same files layout)
    old = spark.read.format("delta").load(out).drop("input_row_state")
    props = {r.key: r.value for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{out}`").collect()}
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").partitionBy("category").save(out)
    assert "input_row_state" not in spark.read.format("delta").load(out).columns
    assert props.get("spark_infer.id_col") == "id"
    DeltaTable.forPath(spark, inp).update("id IN (4, 9)", {"text": "concat(text, ' v2')"})
    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.OK and s["rows_scored"] == 2, s  # row states computed from the input it was scored from
    assert_exact(spark, inp, out, tiny_bert, states=False)


# -- kills and overlapping runs, as separate processes ------------------------------------------------------
CATS = ["books", "music", "garden", "toys"]


def _length_input(spark, path: str) -> None:
    data = [(100 * k + i, cat, f"{cat} item {i} " + "x" * i, 0.0) for k, cat in enumerate(CATS) for i in range(20)]
    spark.createDataFrame(data, SCHEMA).write.format("delta").partitionBy("category").save(path)


def _two_rows_changed_per_unit(spark, inp: str) -> None:
    from delta.tables import DeltaTable

    # two rows of each unit: one text longer, one deleted; and one new row per unit
    t = DeltaTable.forPath(spark, inp)
    t.update("id % 100 = 3", {"text": "concat(text, ' and more')"})
    t.delete("id % 100 = 7")
    new = [(100 * k + 50, cat, f"{cat} late arrival", 0.0) for k, cat in enumerate(CATS)]
    spark.createDataFrame(new, SCHEMA).write.format("delta").mode("append").save(inp)


def _assert_lengths(spark, inp: str, out: str) -> None:
    src = {r.id: len(r.text) for r in spark.read.format("delta").load(inp).collect()}
    res = spark.read.format("delta").load(out)
    assert res.count() == res.select("id").distinct().count() == len(src)
    assert {r.id: r.prediction for r in res.collect()} == src


def _scored_then_changed(spark, tmp_path, predictor: str, delay_s: float) -> tuple[str, str, list[str]]:
    """(input, output, the job's arguments): the job run once, then two rows of each unit changed and
    one added. The model's options (its delay too) are fingerprinted: every run of a test is this job."""
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _length_input(spark, inp)
    args = job_args(inp, out, predictor, delay_s)
    assert run_score(args) == ExitCode.OK
    _two_rows_changed_per_unit(spark, inp)
    return inp, out, args


@pytest.fixture(scope="module")
def length_predictor(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("predictor")
    (d / "predictor.json").write_text('{"name": "text length"}')
    return str(d)


@pytest.mark.slow
def test_sigkill_during_row_grain_groups_then_rerun_is_exact(spark, tmp_path, length_predictor):
    from jobutil import cli_cmd, delta_versions, kill_group, start, wait_for

    inp, out, args = _scored_then_changed(spark, tmp_path, length_predictor, 4.0)
    before = delta_versions(out)[-1]
    # four row-grain groups of one unit, each kept busy for 4 s by the model: the kill lands after the first commit
    proc = start(cli_cmd(*args), str(tmp_path / "killed.log"))
    try:
        assert wait_for(lambda: delta_versions(out)[-1] > before, timeout=240), \
            open(tmp_path / "killed.log").read()[-3000:]
        kill_group(proc, signal.SIGKILL)
    finally:
        kill_group(proc)
    commits = [v for v in delta_versions(out) if v > before]
    assert 1 <= len(commits) < len(CATS), "the kill must land mid-run"
    assert run_score([*args, "--summary-json", str(tmp_path / "s.json")]) == ExitCode.OK
    s = summary(str(tmp_path / "s.json"))
    # the committed units are done; each other unit scores its two rows (one changed, one new)
    assert s["plan"]["units_done"] == len(commits) and s["rows_scored"] == 2 * (len(CATS) - len(commits)), s["plan"]
    _assert_lengths(spark, inp, out)


@pytest.mark.slow
def test_two_runs_at_once_share_the_changed_units_and_score_each_changed_row_once(spark, tmp_path, length_predictor):
    from jobutil import cli_cmd, kill_group, start

    inp, out, args = _scored_then_changed(spark, tmp_path, length_predictor, 1.0)
    cmds = [cli_cmd(*args, "--summary-json", str(tmp_path / f"s{i}.json")) for i in range(2)]
    procs = [start(cmd, str(tmp_path / f"run{i}.log")) for i, cmd in enumerate(cmds)]
    try:
        codes = [p.wait(timeout=500) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    records = [summary(str(tmp_path / f"s{i}.json")) for i in range(2)]
    assert codes == [0, 0], [open(tmp_path / f"run{i}.log").read()[-3000:] for i in range(2)]
    done = [set(r["units_committed"]) for r in records]
    assert not done[0] & done[1] and done[0] | done[1] == {f"category={c}" for c in CATS}, done
    # every changed row scored once, by one of the two runs
    assert sum(r["counters"]["rows"] for r in records) == 2 * len(CATS), [r["counters"] for r in records]
    _assert_lengths(spark, inp, out)


# -- the change data feed: the same plan as hashing, at the cost of the changed rows ------------------------
PLAN_KEYS = ("units_pending", "units_changed", "units_done", "units_orphaned", "units_row_grain", "rows_pending",
             "rows_new", "rows_changed", "rows_deleted", "rows_kept", "rows_orphaned")


@pytest.mark.parametrize("partitioned", [False, True], ids=["id_buckets", "partitions"])
def test_the_change_feed_plan_equals_the_hashing_plan(spark, tmp_path, tiny_bert, partitioned):
    import shutil

    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    (spark.createDataFrame(rows(150), SCHEMA).write.format("delta")
     .option("delta.enableChangeDataFeed", "true").partitionBy(*(["category"] if partitioned else [])).save(inp))
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    change(spark, inp)
    # and what must not count as a change: a column the task does not read, a row set to its own text
    t = DeltaTable.forPath(spark, inp)
    t.update("id IN (10, 11)", {"price": "price * 2"})
    t.update("id = 12", {"text": "text"})
    hashed = str(tmp_path / "out_hashed")
    shutil.copytree(out, hashed)

    plans = {}
    for name, o, extra in (("feed", out, []), ("hash", hashed, ["--no-change-feed"])):
        code, d = job(tmp_path, inp, o, tiny_bert, "--dry-run", *extra, name=f"d_{name}.json")
        assert code == ExitCode.OK, d
        plans[name] = d["plan"]
    assert plans["feed"]["units_from_feed"] >= 3 and "units_from_feed" not in plans["hash"]
    assert {k: plans["feed"][k] for k in PLAN_KEYS} == {k: plans["hash"][k] for k in PLAN_KEYS}
    assert plans["feed"]["rows_pending"] == 18 and plans["feed"]["rows_deleted"] == 5

    done = {}
    for name, o, extra in (("feed", out, []), ("hash", hashed, ["--no-change-feed"])):
        code, s = job(tmp_path, inp, o, tiny_bert, *extra, name=f"s_{name}.json")
        assert code == ExitCode.OK, s
        assert s["rows_scored"] == 18 and s["counters"]["rows"] == 18
        assert_exact(spark, inp, o, tiny_bert)
        done[name] = s
    assert "change_feed" in done["feed"]["durations_s"] and "change_feed" not in done["hash"]["durations_s"]
    # then both are done, whichever way the next run plans
    for o in (out, hashed):
        code, s = job(tmp_path, inp, o, tiny_bert, name="s_noop.json")
        assert code == ExitCode.OK and s["rows_scored"] == 0 and s["units_committed"] == []


def test_a_feed_enabled_after_the_output_last_saw_the_input_falls_back_to_hashing(spark, tmp_path, tiny_bert):
    from delta.tables import DeltaTable

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write(spark, inp, rows(60), partitioned=True)
    assert job(tmp_path, inp, out, tiny_bert)[0] == ExitCode.OK
    t = DeltaTable.forPath(spark, inp)
    t.update("id = 4", {"text": "concat(text, ' before the feed')"})  # a change the feed never recorded
    spark.sql(f"ALTER TABLE delta.`{inp}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    t.update("id = 5", {"text": "concat(text, ' after')"})
    code, s = job(tmp_path, inp, out, tiny_bert, name="s2.json")
    assert code == ExitCode.OK and s["rows_scored"] == 2, s["plan"]
    assert "units_from_feed" not in s["plan"]
    assert_exact(spark, inp, out, tiny_bert)
