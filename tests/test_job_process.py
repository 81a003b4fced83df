"""The job as users run it: separate processes, SIGKILL mid-run, concurrent starts, plain spark-submit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
from chispa import assert_df_equality
from jobutil import ROOT, cli_cmd, delta_versions, env, kill_group, rows_for, run, start, summary, wait_for

pytestmark = pytest.mark.slow

COMPARE = ["id", "category", "error", "model", "model_fingerprint", "task", "input_version", "input_state"]


@pytest.fixture(scope="module")
def six_partitions(spark, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("proc") / "in")
    rows = []
    for k, cat in enumerate(["books", "music", "garden", "toys", "tools", "games"]):
        rows += rows_for(cat, 1000 * k, 15)
    spark.createDataFrame(rows, "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(path)
    return path, rows


def assert_same_output(spark, a: str, b: str) -> None:
    da, db = spark.read.format("delta").load(a), spark.read.format("delta").load(b)
    assert da.count() == db.count() == da.select("id").distinct().count()
    assert_df_equality(da.select(*COMPARE), db.select(*COMPARE), ignore_row_order=True)
    ea = {r.id: np.array(r.embedding) for r in da.select("id", "embedding").collect()}
    eb = {r.id: np.array(r.embedding) for r in db.select("id", "embedding").collect()}
    assert ea.keys() == eb.keys()
    for k in ea:
        np.testing.assert_allclose(ea[k], eb[k], atol=1e-5)


@pytest.fixture(scope="module")
def reference_output(spark, six_partitions, tiny_bert, tmp_path_factory):
    inp, rows = six_partitions
    out = str(tmp_path_factory.mktemp("ref") / "out")
    r = run(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert))
    assert r.returncode == 0, r.stdout[-3000:]
    return out


def test_sigkill_after_first_commit_then_rerun_is_exact(spark, six_partitions, tiny_bert, reference_output,
                                                        tmp_path):
    inp, rows = six_partitions
    out = str(tmp_path / "out")
    js = str(tmp_path / "rerun.json")
    proc = start(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert), str(tmp_path / "killed.log"))
    try:
        # version 0 creates the table; version 1 is the first unit's commit
        assert wait_for(lambda: 1 in delta_versions(out), timeout=240), open(tmp_path / "killed.log").read()[-3000:]
        kill_group(proc, signal.SIGKILL)
    finally:
        kill_group(proc)
    committed_before = [v for v in delta_versions(out) if v > 0]
    assert 1 <= len(committed_before) < 6, "the kill must land mid-run"

    r = run(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert, "--summary-json", js))
    assert r.returncode == 0, r.stdout[-3000:]
    s = summary(js)
    # only the uncommitted units were rescored
    assert len(s["units_committed"]) == 6 - len(committed_before)
    assert s["plan"]["units_done"] == len(committed_before)
    assert_same_output(spark, out, reference_output)


def test_two_runs_started_at_once_never_duplicate(spark, six_partitions, tiny_bert, reference_output, tmp_path):
    inp, rows = six_partitions
    out = str(tmp_path / "out")
    procs = [start(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert), str(tmp_path / f"run{i}.log"))
             for i in range(2)]
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    logs = [open(tmp_path / f"run{i}.log").read() for i in range(2)]
    # each run either finished or stopped with the documented concurrency exit code
    assert all(c in (0, 4) for c in codes), (codes, [lg[-2000:] for lg in logs])
    res = spark.read.format("delta").load(out)
    assert res.count() == res.select("id").distinct().count()  # never a duplicate
    r = run(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert))
    assert r.returncode == 0, r.stdout[-3000:]
    assert_same_output(spark, out, reference_output)


def test_plain_spark_submit_adds_delta_and_runs(spark, six_partitions, tiny_bert, tmp_path):
    inp, rows = six_partitions
    out = str(tmp_path / "out")
    js = str(tmp_path / "s.json")
    submit = shutil.which("spark-submit")
    assert submit, "spark-submit from the pyspark wheel must be on PATH"
    # the one job that resolves Delta's package through Ivy (every other start reuses the resolution)
    r = run([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", os.path.join(ROOT, "jobs", "score.py"),
             "--input", inp, "--output", out, "--model", tiny_bert, "--partition-by", "category",
             "--summary-json", js], timeout=400, env_vars={**env(), "SPARK_INFER_REUSE_RESOLVED_JARS": "0"})
    assert r.returncode == 0, r.stdout[-4000:]
    assert "event=relaunch reason=delta_missing" in r.stdout
    assert "--packages io.delta:delta-spark" in r.stdout and "resolving dependencies" in r.stdout
    s = summary(js)
    assert s["status"] == "succeeded" and len(s["units_committed"]) == 6
    assert spark.read.format("delta").load(out).count() == len(rows)


def test_cli_exit_code_for_bad_config_as_a_process(tmp_path, tiny_bert, six_partitions):
    inp, _ = six_partitions
    out = str(tmp_path / "out")
    r = subprocess.run(cli_cmd("--input", inp, "--output", out, "--model", tiny_bert, "--text-col", "nope"),
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "text_col" in r.stderr and "'nope'" in r.stderr
    assert not os.path.exists(out)
