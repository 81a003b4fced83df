"""A run with nothing to do starts no JVM: planned from the two Delta logs, its record appended with
delta-rs (issue 19, item 9). Every no-op here runs as a CLI process in which no JVM can start (JAVA_HOME
an empty folder, nothing on PATH): it can only succeed without one. Where something is pending, or
the logs alone cannot tell, the same process fails trying to start Spark, and a normal one scores."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from jobutil import cli_cmd, delta_versions, env, rows_for, run

from spark_infer import run_job

OPTIONS = {"predictor": "predictors:TextLength", "columns": ["text"]}


def _model(tmp_path) -> str:
    d = tmp_path / "model"
    d.mkdir()
    (d / "predictor.json").write_text('{"name": "text length"}')
    return str(d)


def _write(path: str, cats: list[str], start: int = 0, mode: str = "append") -> None:
    rows = [r for j, c in enumerate(cats) for r in rows_for(c, start + 1000 * j, 3)]
    ids, cs, texts = zip(*rows, strict=True)
    write_deltalake(path, pa.table({"id": pa.array(ids, pa.int64()), "category": list(cs), "text": list(texts)}),
                    partition_by=["category"], mode=mode)


def _no_jvm_env(tmp_path) -> dict[str, str]:
    """An environment in which pyspark cannot start a JVM: JAVA_HOME an empty folder, and nothing on
    PATH (not even the `bash` of Spark's launch scripts; the job is started by its full path)."""
    e = env()
    empty = tmp_path / "no-java"
    empty.mkdir(exist_ok=True)
    e["JAVA_HOME"] = e["PATH"] = str(empty)
    e.pop("SPARK_HOME", None)
    return e


def _cli(inp: str, out: str, model: str, js: str, *extra: str, env_vars: dict[str, str] | None = None):
    cmd = cli_cmd("--input", inp, "--output", out, "--task", "custom", "--model", model,
                  "--option", "predictor=predictors:TextLength", "--option", 'columns=["text"]',
                  "--summary-json", js, "--progress-interval", "0", *extra)
    return run(cmd, timeout=300, env_vars=env_vars)


def _summary(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _runs(spark, runs: str) -> tuple[list[str], list[str]]:
    """The runs table's (run_id, session_kind) rows as delta-rs and as Spark read them."""
    by_rs = DeltaTable(runs).to_pyarrow_table(columns=["run_id", "session_kind"]).to_pylist()
    by_spark = spark.read.format("delta").load(runs).select("run_id", "session_kind").collect()
    return (sorted(f"{r['run_id']}|{r['session_kind']}" for r in by_rs),
            sorted(f"{r['run_id']}|{r['session_kind']}" for r in by_spark))


@pytest.mark.slow
def test_a_no_op_cli_run_starts_no_jvm_and_records_with_delta_rs(spark, tmp_path):
    inp, out, model = str(tmp_path / "in"), str(tmp_path / "out"), _model(tmp_path)
    runs = out + "_runs"
    _write(inp, ["books", "toys", "garden"])
    first = run_job({"input": inp, "output": out, "task": "custom", "model": model, "task_options": OPTIONS},
                    spark=spark)
    assert first.exit_code == 0 and len(first.units_committed) == 3
    version = delta_versions(out)[-1]

    js = str(tmp_path / "noop.json")
    r = _cli(inp, out, model, js, env_vars=_no_jvm_env(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:]
    s = _summary(js)
    assert s["status"] == "succeeded" and s["units_committed"] == [] and s["plan"]["units_done"] == 3
    assert s["session_kind"] == "none" and s["spark_jobs"] == {"plan": 0} and "session_start" not in s["durations_s"]
    assert s["output_version_before"] == s["output_version_after"] == version
    assert delta_versions(out)[-1] == version  # nothing written to the output
    # the row went to the runs table Spark created, and both readers see both rows
    want = sorted([f"{first.run_id}|classic", f"{s['run_id']}|none"])
    assert _runs(spark, runs) == (want, want)
    # ... and Spark appends after delta-rs's commit
    again = run_job({"input": inp, "output": out, "task": "custom", "model": model, "task_options": OPTIONS},
                    spark=spark)
    assert again.exit_code == 0 and again.session_kind == "classic"  # a session was given: used as before
    want = sorted([*want, f"{again.run_id}|classic"])
    assert _runs(spark, runs) == (want, want)


def test_a_runs_table_delta_rs_creates_is_one_spark_appends_to(spark, tmp_path):
    inp, out, model = str(tmp_path / "in"), str(tmp_path / "out"), _model(tmp_path)
    _write(inp, ["books", "toys"])
    cfg = {"input": inp, "output": out, "task": "custom", "model": model, "task_options": OPTIONS}
    assert run_job({**cfg, "record_runs": False}, spark=spark).exit_code == 0
    runs = str(tmp_path / "records")  # given with --runs-table (a path): no table there yet
    js = str(tmp_path / "noop.json")
    r = _cli(inp, out, model, js, "--runs-table", runs, env_vars=_no_jvm_env(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:]
    s = _summary(js)
    assert s["session_kind"] == "none"
    assert DeltaTable(runs).metadata().configuration.get("delta.enableDeletionVectors") == "false"
    later = run_job({**cfg, "runs_table": runs}, spark=spark)
    assert later.exit_code == 0
    want = sorted([f"{s['run_id']}|none", f"{later.run_id}|classic"])
    assert _runs(spark, runs) == (want, want)
    types = {f.name: f.dataType.simpleString() for f in spark.read.format("delta").load(runs).schema.fields}
    assert types["exit_code"] == "int" and types["input_version"] == "bigint" and types["run_id"] == "string"


@pytest.mark.slow
def test_where_the_logs_cannot_tell_the_run_needs_spark(spark, tmp_path):
    """Pending units, a compaction not yet recorded, a catalog runs table: the session is needed (the
    no-JVM process fails trying to start it, nothing is written); after the compaction is recorded by
    one run, the next no-op plans from the logs alone again (no input row read, no JVM); a pending unit
    in a normal environment opens the session and is scored."""
    inp, out, model = str(tmp_path / "in"), str(tmp_path / "out"), _model(tmp_path)
    for k in range(2):  # two appends: two files per partition
        _write(inp, ["books", "toys"], start=100 * k)
    cfg = {"input": inp, "output": out, "task": "custom", "model": model, "task_options": OPTIONS}
    assert run_job(cfg, spark=spark).exit_code == 0
    no_jvm, js = _no_jvm_env(tmp_path), str(tmp_path / "s.json")
    version = delta_versions(out)[-1]

    r = _cli(inp, out, model, js, "--runs-table", "spark_infer_runs_by_name", env_vars=no_jvm)
    assert r.returncode != 0  # the record's row needs the catalog: Spark

    spark.sql(f"OPTIMIZE delta.`{inp}`")  # every unit's files change, no row does: hashing needs Spark
    r = _cli(inp, out, model, js, env_vars=no_jvm)
    assert r.returncode != 0 and delta_versions(out)[-1] == version
    recording = run_job(cfg, spark=spark)  # hashes the two units, records their new files
    assert recording.exit_code == 0 and recording.units_committed == [] and recording.spark_jobs["plan"] > 0
    assert DeltaTable(out + "_unit_files").to_pyarrow_table().num_rows == 2
    r = _cli(inp, out, model, js, env_vars=no_jvm)
    assert r.returncode == 0, r.stdout[-3000:]
    s = _summary(js)
    assert s["session_kind"] == "none" and s["spark_jobs"] == {"plan": 0} and s["plan"]["units_done"] == 2
    assert delta_versions(out)[-1] == version

    _write(inp, ["music"], start=5000)  # something pending
    r = _cli(inp, out, model, js, env_vars=no_jvm)
    assert r.returncode != 0 and delta_versions(out)[-1] == version

    # a pending unit in a normal environment: the planner opens the session and the unit is scored
    r = _cli(inp, out, model, js)
    assert r.returncode == 0, r.stdout[-3000:]
    s = _summary(js)
    assert s["session_kind"] == "classic" and s["units_committed"] == ["category=music"]
    assert s["durations_s"]["session_start"] > 0
    got = {r["category"]: r["n"] for r in
           spark.read.format("delta").load(out).groupBy("category").count().withColumnRenamed("count", "n").collect()}
    assert got == {"books": 6, "toys": 6, "music": 3}


def test_atomic_ddl_names_read_without_spark_agree_with_sparks_parser(spark):
    from pyspark.sql.types import DataType

    from spark_infer.ddl import ATOMIC_DDL, parse_ddl

    for name in ATOMIC_DDL:
        for text in (name, name.upper(), f" {name} "):
            assert parse_ddl(text).json() == DataType.fromDDL(name).json(), text
