"""Serverless compute: the incremental job through a Spark Connect client that refuses `persist`/`cache`
and any conf outside the platform's allow-list, as Databricks serverless does (tests/serverless_client.py
plays the platform; the server is the tests' own Connect server)."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from chispa import assert_df_equality
from jobutil import ROOT, delta_versions, kill_group, rows_for, run, start, summary, wait_for
from jobutil import env as job_env

SCHEMA = "id long, category string, text string"
CLIENT = os.path.join(ROOT, "tests", "serverless_client.py")


def serverless_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, CLIENT, "--remote", url, "--progress-interval", "0", *args]


def staging_tables(spark) -> list[str]:
    return [t.name for t in spark.catalog.listTables("default") if t.name.startswith("spark_infer_staging_")]


@pytest.fixture
def tables(spark, tmp_path):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 10) + rows_for("music", 100, 8) + rows_for("toys", 200, 6)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    return inp, out, rows


def test_the_client_refuses_what_serverless_refuses(connect_url):
    code = ("import sys; sys.path.insert(0, 'tests'); from serverless_client import install_serverless_refusals as i; i();"
            "from pyspark.sql import SparkSession; s = SparkSession.builder.remote(sys.argv[1]).getOrCreate()\n"
            "for call in (lambda: s.range(3).persist(), lambda: s.range(3).cache(),"
            " lambda: s.conf.set('spark.sql.execution.arrow.maxRecordsPerBatch', '10')):\n"
            "    try:\n        call(); print('ALLOWED')\n    except Exception as e:\n        print(e.getCondition())\n"
            "s.conf.set('spark.sql.session.timeZone', 'UTC'); print('tz ok')")
    r = run([sys.executable, "-c", code, connect_url])
    assert r.stdout.split() == ["NOT_SUPPORTED_WITH_SERVERLESS", "NOT_SUPPORTED_WITH_SERVERLESS",
                                "CONFIG_NOT_AVAILABLE", "tz", "ok"], r.stdout[-3000:]


@pytest.mark.slow
def test_incremental_job_on_serverless(spark, connect_url, tables, tiny_bert, tmp_path):
    inp, out, rows = tables
    job = ["--input", inp, "--output", out, "--model", tiny_bert, "--group-units", "2"]

    def score(name: str, *extra: str, env_vars: dict | None = None) -> dict:
        js = str(tmp_path / f"{name}.json")
        r = run(serverless_cmd(connect_url, *job, "--summary-json", js, *extra), env_vars=env_vars)
        assert r.returncode == 0, r.stdout[-4000:]
        return summary(js)

    s1 = score("first")  # detected from the environment
    assert s1["session_kind"] == "serverless" and s1["staging"] == "table"
    assert {"spark.sql.execution.arrow.maxRecordsPerBatch", "spark.sql.files.maxRecordsPerFile"} <= set(
        s1["confs_not_set"])
    assert s1["status"] == "succeeded" and len(s1["units_committed"]) == 3 and s1["rows_scored"] == len(rows)
    assert s1["counters"]["rows"] == len(rows)
    assert staging_tables(spark) == []

    # the same output as a classic session's (persisted staging)
    from spark_infer import run_job

    classic = str(tmp_path / "classic")
    assert run_job({"input": inp, "output": classic, "model": tiny_bert}, spark=spark).exit_code == 0
    cols = ["id", "category", "embedding", "error", "model_fingerprint", "input_state", "input_files"]
    assert_df_equality(spark.read.format("delta").load(out).select(*cols),
                       spark.read.format("delta").load(classic).select(*cols), ignore_row_order=True)

    version = delta_versions(out)[-1]
    s2 = score("noop", "--session-kind", "serverless", env_vars={**job_env(), "SERVERLESS_CLIENT_ENV": "0"})
    assert s2["session_kind"] == "serverless" and s2["units_committed"] == [] and s2["plan"]["units_done"] == 3
    assert delta_versions(out)[-1] == version

    spark.createDataFrame(rows_for("garden", 300, 5), SCHEMA).write.format("delta").mode("append").save(inp)
    s3 = score("new")
    assert s3["units_committed"] == ["category=garden"] and s3["plan"]["units_done"] == 3
    assert staging_tables(spark) == []
    runs = spark.read.format("delta").load(out + "_runs").orderBy("started_at").collect()
    assert [(r.run_id, r.session_kind, r.staging, r.device_kind) for r in runs] == [
        (s["run_id"], "serverless", "table", "cpu") for s in (s1, s2, s3)]

    # row grain through a staging table: two changed rows scored, one deleted row dropped
    from delta.tables import DeltaTable

    t = DeltaTable.forPath(spark, inp)
    t.update("id IN (1, 101)", {"text": "concat(text, ' revised')"})
    t.delete("id = 2")
    s4 = score("rows")
    assert s4["staging"] == "table" and s4["rows_scored"] == 2 and s4["plan"]["rows_deleted"] == 1, s4["plan"]
    assert staging_tables(spark) == []
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) + 5 - 1 == res.select("id").distinct().count()
    assert {r.id for r in res.where(f"run_id = '{s4['run_id']}'").collect()} == {1, 101}


@pytest.mark.slow
def test_sigterm_on_serverless_and_the_rerun_completes(spark, connect_url, tables, tiny_bert, tmp_path):
    inp, out, rows = tables
    js, log = str(tmp_path / "term.json"), str(tmp_path / "term.log")
    job = ["--input", inp, "--output", out, "--model", tiny_bert, "--group-units", "1", "--concurrent-units", "1"]
    proc = start(serverless_cmd(connect_url, *job, "--summary-json", js), log)
    try:
        assert wait_for(lambda: 1 in delta_versions(out), timeout=240), open(log).read()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    assert code == 5, open(log).read()[-3000:]
    s = summary(js)
    assert s["status"] == "interrupted" and 1 <= len(s["units_committed"]) < 3
    r = run(serverless_cmd(connect_url, *job, "--summary-json", str(tmp_path / "rerun.json")))
    assert r.returncode == 0, r.stdout[-3000:]
    assert summary(str(tmp_path / "rerun.json"))["units_committed"]
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) == res.select("id").distinct().count()
    assert staging_tables(spark) == []  # the interrupted group's staging table was dropped too


def test_a_model_over_the_udf_memory_cap_is_refused_at_plan_time(connect_url, tables, tiny_bert, tmp_path):
    inp, out, _ = tables
    r = run(serverless_cmd(connect_url, "--input", inp, "--output", out, "--model", tiny_bert,
                           "--udf-memory-limit", "300m", "--dry-run"))
    assert r.returncode == 2, r.stdout[-3000:]
    assert "needs about" in r.stdout and "over the 300 MiB that udf_memory_limit allows" in r.stdout
    assert not os.path.exists(out)


def test_persist_staging_cannot_be_forced_on_serverless(connect_url, tables, tiny_bert):
    inp, out, _ = tables
    r = run(serverless_cmd(connect_url, "--input", inp, "--output", out, "--model", tiny_bert, "--staging", "persist"))
    assert r.returncode == 2 and "persist is not available on a serverless session" in r.stdout, r.stdout[-3000:]
    assert not os.path.exists(out)


@pytest.mark.slow
def test_table_staging_on_a_classic_session(spark, tables, tiny_bert, tmp_path):
    import datetime as dt

    from spark_infer import run_job

    inp, out, rows = tables
    # one staging table a killed run left 3 days ago, one of a run that may still be going
    dead = "spark_infer_staging_" + (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).strftime("%Y%m%d%H%M") + "_dead_0_x"
    live = "spark_infer_staging_" + dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M") + "_live_0_x"
    for name in (dead, live):
        spark.range(1).write.format("delta").saveAsTable(name)
    try:
        s = run_job({"input": inp, "output": out, "model": tiny_bert, "staging": "table", "group_units": 2},
                    spark=spark)
        assert s.exit_code == 0 and s.staging == "table" and len(s.units_committed) == 3
        assert spark.read.format("delta").load(out).count() == len(rows)
        assert staging_tables(spark) == [live]  # its own dropped after each commit; the expired one too
    finally:
        spark.sql(f"DROP TABLE IF EXISTS {live}")
        spark.sql(f"DROP TABLE IF EXISTS {dead}")
