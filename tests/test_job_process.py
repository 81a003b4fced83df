"""The job as users run it: separate processes, SIGKILL mid-group, two runs at once, plain spark-submit,
and the exit codes a scheduler sees (1, 2, 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from chispa import assert_df_equality
from jobutil import (
    CATEGORIES,
    ROOT,
    ROWS_PER_UNIT,
    cli_cmd,
    delta_versions,
    env,
    kill_group,
    rows_for,
    run,
    start,
    summary,
    wait_for,
)

from spark_infer import run_job

pytestmark = pytest.mark.slow

COMPARE = ["id", "category", "error", "model", "model_fingerprint", "task", "input_version", "input_state"]
TOTAL = len(CATEGORIES) * ROWS_PER_UNIT


def assert_same_output(spark, a: str, b: str) -> None:
    da, db = spark.read.format("delta").load(a), spark.read.format("delta").load(b)
    assert da.count() == db.count() == da.select("id").distinct().count()
    assert_df_equality(da.select(*COMPARE), db.select(*COMPARE), ignore_row_order=True)
    ea = {r.id: np.array(r.embedding) for r in da.select("id", "embedding").collect()}
    eb = {r.id: np.array(r.embedding) for r in db.select("id", "embedding").collect()}
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_allclose(ea[k], eb[k], atol=1e-5)


def test_sigkill_in_the_middle_of_a_group_then_rerun_is_exact(spark, units_input, tiny_bert, reference_output,
                                                              tmp_path):
    out = str(tmp_path / "out")
    # 3 commit groups of 2 units, one in flight at a time: the kill lands while group 2 is scored
    groups = ["--group-units", "2", "--concurrent-units", "1"]
    proc = start(cli_cmd("--input", units_input, "--output", out, "--model", tiny_bert, *groups),
                 str(tmp_path / "killed.log"))
    try:
        # version 0 creates the table; version 1 is the first group's commit
        assert wait_for(lambda: 1 in delta_versions(out), timeout=240), open(tmp_path / "killed.log").read()[-3000:]
        kill_group(proc, signal.SIGKILL)
    finally:
        kill_group(proc)
    commits = [v for v in delta_versions(out) if v > 0]
    assert 1 <= len(commits) < 3, "the kill must land mid-run"
    # the rerun in this process (the shared session): the kill was the part that needs its own process
    s = run_job({"input": units_input, "output": out, "model": tiny_bert, "group_units": 2, "concurrent_units": 1},
                spark=spark)
    assert s.exit_code == 0, s.error
    # only the units of uncommitted groups were scored again; the killed group is rescored whole
    assert len(s.units_committed) == len(CATEGORIES) - 2 * len(commits)
    assert s.plan["units_done"] == 2 * len(commits)
    assert_same_output(spark, out, reference_output)


def _predictor_dir(tmp_path) -> str:
    d = tmp_path / "predictor"
    d.mkdir(exist_ok=True)
    (d / "predictor.json").write_text('{"name": "text length"}')
    return str(d)


def test_without_claims_two_runs_at_once_collide_but_never_duplicate(spark, tmp_path):
    """The commit protocol alone (claims off, or a claim that lapsed under a live run) is what makes
    overlap safe: of two commits of the same units planned at one version, one fails (exit 4).
    `test_claims.py` shows claims making it cheap (both runs exit 0, nothing scored twice)."""
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = []
    for k, cat in enumerate(CATEGORIES):
        rows += rows_for(cat, 100 * k, 4)
    spark.createDataFrame(rows, "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(inp)
    # a slow model keeps each run's first commit seconds after its plan, so both runs plan at the
    # same output version (checked below): their writes of the same groups collide
    job = ["--input", inp, "--output", out, "--task", "custom", "--model", _predictor_dir(tmp_path),
           "--option", "predictor=predictors:TextLength", "--option", 'columns=["text"]',
           "--option", 'predictor_options={"delay_s": 1.0}', "--group-units", "3", "--concurrent-units", "1",
           "--no-claims"]
    procs = [start(cli_cmd(*job, "--summary-json", str(tmp_path / f"s{i}.json")), str(tmp_path / f"run{i}.log"))
             for i in range(2)]
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    logs = [open(tmp_path / f"run{i}.log").read() for i in range(2)]
    records = [summary(str(tmp_path / f"s{i}.json")) for i in range(2)]
    # the runs overlapped: both planned against the same output version
    assert records[0]["output_version_before"] == records[1]["output_version_before"], records
    # each run finished or stopped with the concurrency exit code; at least one met the other
    assert set(codes) <= {0, 4} and 4 in codes, (codes, [lg[-2000:] for lg in logs])
    res = spark.read.format("delta").load(out)
    assert res.count() == res.select("id").distinct().count()  # never a duplicate
    s = run_job({"input": inp, "output": out, "task": "custom", "model": _predictor_dir(tmp_path), "group_units": 3,
                 "task_options": {"predictor": "predictors:TextLength", "columns": ["text"]}}, spark=spark)
    assert s.exit_code == 0, s.error  # the rerun finishes the rest
    got = {row.id: row.prediction for row in spark.read.format("delta").load(out).collect()}
    assert got == {i: len(text) for i, _, text in rows}


def test_plain_spark_submit_adds_delta_and_runs(spark, units_input, tiny_bert, tmp_path):
    out = str(tmp_path / "out")
    js = str(tmp_path / "s.json")
    submit = shutil.which("spark-submit")
    assert submit, "spark-submit from the pyspark wheel must be on PATH"
    # the one job that resolves Delta's package through Ivy (every other start reuses the resolution)
    r = run([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", os.path.join(ROOT, "jobs", "score.py"),
             "--input", units_input, "--output", out, "--model", tiny_bert, "--partition-by", "category",
             "--summary-json", js], timeout=400, env_vars={**env(), "SPARK_INFER_REUSE_RESOLVED_JARS": "0"})
    assert r.returncode == 0, r.stdout[-4000:]
    assert "event=relaunch reason=delta_missing" in r.stdout
    assert "--packages io.delta:delta-spark" in r.stdout and "resolving dependencies" in r.stdout
    s = summary(js)
    assert s["status"] == "succeeded" and len(s["units_committed"]) == len(CATEGORIES)
    assert spark.read.format("delta").load(out).count() == TOTAL


def test_exit_2_for_bad_config_before_any_jvm_starts(tmp_path, tiny_bert, units_input):
    out = str(tmp_path / "out")
    r = subprocess.run(cli_cmd("--input", units_input, "--output", out, "--model", tiny_bert, "--text-col", "nope"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 2
    assert "text_col" in r.stderr and "'nope'" in r.stderr
    assert "SparkContext" not in r.stderr and "spark-submit" not in r.stderr  # no JVM was started
    assert not os.path.exists(out)


def test_exit_3_when_one_unit_fails_in_spark_then_rerun_scores_only_it(spark, units_input, tmp_path):
    out, flag = str(tmp_path / "out"), tmp_path / "broken.flag"
    flag.write_text("x")
    job = ["--input", units_input, "--output", out, "--task", "custom", "--model", _predictor_dir(tmp_path),
           "--option", "predictor=predictors:BrokenWhileFlagged", "--option", 'columns=["text", "category"]',
           "--option", "predictor_options=" + json.dumps({"flag": str(flag), "category": "toys"}),
           "--group-units", "1"]
    job += ["--config", str(tmp_path / "one_task.yaml")]
    (tmp_path / "one_task.yaml").write_text("score_partitions: 1\n")  # a unit's 12 rows in one Spark task
    js = str(tmp_path / "s1.json")
    r = run(cli_cmd(*job, "--summary-json", js))
    assert r.returncode == 3, r.stdout[-3000:]
    s = summary(js)
    assert s["status"] == "partial" and list(s["units_failed"]) == ["category=toys"]
    assert "SystemicScoringError" in s["units_failed"]["category=toys"]
    assert sorted(s["units_committed"]) == sorted(f"category={c}" for c in CATEGORIES if c != "toys")
    runs = spark.read.format("delta").load(out + "_runs").collect()
    assert [(x.status, x.exit_code, x.units_failed) for x in runs] == [("partial", 3, 1)]
    assert spark.read.format("delta").load(out).where("category = 'toys'").count() == 0  # nothing committed

    flag.unlink()  # the model is back; the rerun in this process (the shared session)
    s2 = run_job({"input": units_input, "output": out, "task": "custom", "model": _predictor_dir(tmp_path),
                  "group_units": 1, "score_partitions": 1,
                  "task_options": {"predictor": "predictors:BrokenWhileFlagged", "columns": ["text", "category"],
                                   "predictor_options": {"flag": str(flag), "category": "toys"}}}, spark=spark)
    assert s2.exit_code == 0, s2.error
    assert s2.units_committed == ["category=toys"] and s2.plan["units_done"] == len(CATEGORIES) - 1
    res = spark.read.format("delta").load(out)
    assert res.count() == TOTAL == res.select("id").distinct().count()


def test_exit_1_for_an_infrastructure_failure_leaves_a_record(tmp_path, units_input, tiny_bert):
    js = str(tmp_path / "s.json")
    # a master Spark cannot start (a typo in a cluster's URL): the session never comes up
    r = run([sys.executable, "-m", "spark_infer", "score", "--master", "local[abc]", "--input", units_input,
             "--output", str(tmp_path / "out"), "--model", tiny_bert, "--summary-json", js])
    assert r.returncode == 1, r.stdout[-3000:]
    assert "Traceback" in r.stdout and "error:" in r.stdout
    s = summary(js)
    assert s["status"] == "failed" and s["exit_code"] == 1 and s["error"]
