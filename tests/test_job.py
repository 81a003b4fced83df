"""The scoring job on real Spark + real Delta (in-process; subprocess cases are in test_job_process.py)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from chispa import assert_df_equality
from jobutil import rows_for, summary

from spark_infer.cli import run_score
from spark_infer.run import ExitCode
from spark_infer.runtime import RuntimeOptions, make_spec, score_stream

SCHEMA = "id long, category string, text string"


def write_input(spark, path, rows, mode="overwrite", partitioned=True, where=None):
    w = spark.createDataFrame(rows, SCHEMA).write.format("delta").mode(mode)
    if partitioned:
        w = w.partitionBy("category")
    if where:
        w = w.option("replaceWhere", where)
    w.save(path)


def job(tmp_path, inp, out, *extra, name="s.json"):
    js = str(tmp_path / name)
    code = run_score(["--input", inp, "--output", out, "--summary-json", js, *extra])
    return code, (summary(js) if os.path.exists(js) else None)


def out_version(spark, out):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, out).history(1).select("version").first()[0]


@pytest.fixture
def tables(spark, tmp_path):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 30) + rows_for("music", 100, 20) + rows_for("garden", 200, 25)
    write_input(spark, inp, rows)
    return inp, out, rows


def test_first_run_scores_everything_rerun_commits_nothing_only_new_or_rewritten_units_are_scored_and_a_changed_model_rescores_everything_unless_new_only(  # noqa: E501
        spark, tmp_path, tables, tiny_bert):
    """One first run serves what every later run here is checked against (its input, output and run ids)."""
    inp, out, rows = tables
    code, s = job(tmp_path, inp, out, "--model", tiny_bert)
    assert code == ExitCode.OK, s
    assert s["status"] == "succeeded"
    assert sorted(s["units_committed"]) == ["category=books", "category=garden", "category=music"]
    assert s["rows_scored"] == len(rows) == s["counters"]["rows"]
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows)
    assert res.select("id").distinct().count() == len(rows)
    # outputs equal the runtime called directly on the same texts
    spec = make_spec("embed", tiny_bert, device_kind="cpu")  # the job scores on this CPU-only machine
    direct, _ = next(score_stream(spec, RuntimeOptions(), [[r[2] for r in rows]]))
    want = {r[0]: np.array(v) for r, v in zip(rows, direct.to_pylist(), strict=True)}
    got = {r.id: np.array(r.embedding) for r in res.select("id", "embedding").collect()}
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5)
    lineage = res.select("model", "model_fingerprint", "task", "run_id", "input_version").distinct().collect()
    assert len(lineage) == 1
    assert lineage[0].model_fingerprint == spec.fingerprint and lineage[0].task == "embed"
    assert lineage[0].run_id == s["run_id"] and lineage[0].input_version == 0
    assert res.where("error is not null").count() == 0
    assert spark.read.format("delta").load(out).inputFiles()  # partitioned like the input
    assert sorted(os.listdir(out)) == ["_delta_log", "category=books", "category=garden", "category=music"]
    before = {r.id: r.run_id for r in spark.read.format("delta").load(out).collect()}

    # a finished job rerun commits nothing
    v = out_version(spark, out)
    code, s2 = job(tmp_path, inp, out, "--model", tiny_bert, name="s2.json")
    assert code == ExitCode.OK
    assert s2["units_committed"] == [] and s2["plan"]["units_done"] == 3 and s2["rows_scored"] == 0
    assert out_version(spark, out) == v

    # a task option that changes outputs changes the fingerprint: with new_only nothing is rescored
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--option", "pooling=cls", "--on-model-change",
                  "new_only", name="s_new_only.json")
    assert code == ExitCode.OK and s["units_committed"] == [] and s["plan"]["units_kept_old_model"] == 3
    assert out_version(spark, out) == v

    # a new partition only is scored
    new = rows_for("toys", 300, 12)
    write_input(spark, inp, new, mode="append")
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, name="s3.json")
    assert code == ExitCode.OK
    assert s["units_committed"] == ["category=toys"]
    assert s["rows_scored"] == 12 and s["counters"]["rows"] == 12
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) + 12
    unchanged = {r.id: r.run_id for r in res.where("category != 'toys'").collect()}
    assert unchanged == before

    # rewrite one partition with different text (and one row fewer): only it is rescored
    rewritten = rows_for("music", 100, 19, variant="remastered")
    write_input(spark, inp, rewritten, where="category = 'music'")
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, name="s4.json")
    assert code == ExitCode.OK
    assert s["units_committed"] == ["category=music"] and s["plan"]["units_changed"] == 1
    res = spark.read.format("delta").load(out)
    music = res.where("category = 'music'")
    assert music.count() == 19 and music.select("run_id").distinct().first()[0] == s["run_id"]
    assert res.count() == len(rows) + 12 - 1
    assert res.select("id").distinct().count() == res.count()

    # the changed model without new_only rescores every unit (all 4 by now)
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--option", "pooling=cls", name="s5.json")
    assert code == ExitCode.OK and s["plan"]["units_model_changed"] == 4 and len(s["units_committed"]) == 4
    fps = spark.read.format("delta").load(out).select("model_fingerprint").distinct().collect()
    assert [r[0] for r in fps] == [s["model_fingerprint"]]


def test_unpartitioned_input_is_split_into_id_buckets(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 40)
    write_input(spark, inp, rows, partitioned=False)
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--buckets", "4")
    assert code == ExitCode.OK
    assert s["plan"]["units_total"] == 4 and len(s["units_committed"]) == 4
    res = spark.read.format("delta").load(out)
    assert res.count() == 40 and "bucket" in res.columns
    # rerun with one more row: only its bucket changes
    write_input(spark, inp, [(999, "books", "a brand new row")], mode="append", partitioned=False)
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--buckets", "4", name="s2.json")
    assert code == ExitCode.OK and len(s["units_committed"]) == 1 and s["plan"]["units_done"] == 3
    assert spark.read.format("delta").load(out).count() == 41


def test_dry_run_prints_plan_and_writes_nothing(spark, tmp_path, tables, tiny_bert, capsys):
    inp, out, rows = tables
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--dry-run")
    assert code == ExitCode.OK and s["status"] == "dry_run"
    printed = capsys.readouterr().out
    assert "pending  new" in printed and "category=music" in printed and "rows=20" in printed
    assert not os.path.exists(out)


def _assert_config_error(tmp_path, capsys, args, *needles, out=None):
    code = run_score(args)
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG, err
    for n in needles:
        assert n in err, err
    if out is not None:
        assert not os.path.exists(out)


def test_bad_configuration_is_named_and_writes_nothing(spark, tmp_path, tables, tiny_bert, capsys):
    inp, out, _ = tables
    base = ["--input", inp, "--output", out, "--model", tiny_bert]
    _assert_config_error(tmp_path, capsys, ["--input", inp, "--model", tiny_bert], "'output'", "required", out=out)
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"input: {inp}\noutput: {out}\nbatchsize: 3\n")
    _assert_config_error(tmp_path, capsys, ["--config", str(cfg)], "'batchsize'", "did you mean 'batch_size'",
                         out=out)
    _assert_config_error(tmp_path, capsys, [*base, "--task", "summarise"], "task", "summarise", out=out)
    _assert_config_error(tmp_path, capsys, [*base, "--text-col", "body"], "text_col", "'body'", out=out)
    _assert_config_error(tmp_path, capsys, ["--input", inp, "--output", out, "--model", str(tmp_path / "nope")],
                         "model=", "nope", out=out)
    _assert_config_error(tmp_path, capsys, [*base, "--option", "pooling=median"], "pooling", out=out)
    _assert_config_error(tmp_path, capsys, [*base, "--gpus-per-task", "1.5"], "gpus_per_task", "one GPU per task",
                         out=out)
    _assert_config_error(tmp_path, capsys, ["--input", str(tmp_path / "missing"), "--output", out,
                                            "--model", tiny_bert], "input=", "not an existing Delta table", out=out)
    toml = tmp_path / "job.toml"
    toml.write_text(f'input = "{inp}"\noutput = "{out}"\nbatch_size = "many"\n')
    _assert_config_error(tmp_path, capsys, ["--config", str(toml)], "'batch_size'", "many", out=out)

    # an existing output written by another job (classify schema) conflicts with an embed job
    spark.createDataFrame([(1, "books", "x")], SCHEMA).write.format("delta").partitionBy("category").save(out)
    v = out_version(spark, out)
    code = run_score(base)
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG and "existing table does not match" in err and "embedding" in err
    assert out_version(spark, out) == v


def test_delta_rs_written_input_and_delta_rs_readable_output(spark, tmp_path, tiny_bert):
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 15) + rows_for("toys", 50, 10)
    tbl = pa.table({"id": pa.array([r[0] for r in rows], pa.int64()),
                    "category": [r[1] for r in rows], "text": [r[2] for r in rows]})
    write_deltalake(inp, tbl, partition_by=["category"])
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--change-data-feed")
    assert code == ExitCode.OK and len(s["units_committed"]) == 2
    via_rs = DeltaTable(out).to_pyarrow_table().to_pandas().sort_values("id").reset_index(drop=True)
    via_spark = spark.read.format("delta").load(out).toPandas().sort_values("id").reset_index(drop=True)
    assert list(via_rs["id"]) == list(via_spark["id"]) == sorted(r[0] for r in rows)
    for a, b in zip(via_rs["embedding"], via_spark["embedding"], strict=True):
        np.testing.assert_array_equal(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))
    assert list(via_rs["input_state"]) == list(via_spark["input_state"])
    props = spark.sql(f"SHOW TBLPROPERTIES delta.`{out}`").collect()
    props = {r.key: r.value for r in props}
    assert props.get("delta.enableChangeDataFeed") == "true"
    assert props.get("delta.enableDeletionVectors") == "false"
    # chispa on the non-float columns: Spark and delta-rs agree row for row
    cols = ["id", "category", "error", "model_fingerprint", "input_state", "run_id"]
    from_spark = spark.read.format("delta").load(out).select(*cols)
    from_rs = spark.createDataFrame(via_rs[cols].astype(object).where(via_rs[cols].notna(), None).values.tolist(),
                                    from_spark.schema)
    assert_df_equality(from_rs, from_spark, ignore_row_order=True, ignore_nullable=True)


def test_config_file_and_flags_override(spark, tmp_path, tables, tiny_bert):
    inp, out, rows = tables
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({"input": inp, "output": "/nonexistent/ignored", "model": tiny_bert,
                               "batch_size": 8, "job_name": "from-file"}))
    js = str(tmp_path / "s.json")
    code = run_score(["--config", str(cfg), "--output", out, "--summary-json", js])
    assert code == ExitCode.OK
    s = summary(js)
    assert s["output"] == out and s["job_name"] == "from-file"
    assert spark.read.format("delta").load(out).count() == len(rows)


def test_catalog_table_names_for_input_and_output(spark, tmp_path, tiny_bert):
    rows = rows_for("books", 0, 10) + rows_for("toys", 50, 8)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").saveAsTable("cat_in")
    try:
        code, s = job(tmp_path, "cat_in", "cat_out", "--model", tiny_bert)
        assert code == ExitCode.OK and len(s["units_committed"]) == 2
        assert spark.table("cat_out").count() == len(rows)
        assert spark.table("cat_out_runs").count() == 1
        code, s = job(tmp_path, "cat_in", "cat_out", "--model", tiny_bert, name="s2.json")
        assert code == ExitCode.OK and s["units_committed"] == []
        assert spark.table("cat_out").count() == len(rows)
    finally:
        for t in ("cat_in", "cat_out", "cat_out_runs"):
            spark.sql(f"DROP TABLE IF EXISTS {t}")


def test_run_job_python_api(spark, tmp_path, tables, tiny_bert):
    from spark_infer import run_job

    inp, out, rows = tables
    s = run_job({"input": inp, "output": out, "model": tiny_bert}, spark=spark, batch_size=16)
    assert s.status == "succeeded" and s.exit_code == 0 and len(s.units_committed) == 3
    assert spark.read.format("delta").load(out).count() == len(rows)
    # a plain model folder (no modules.json): the documented default was assumed, and the record says so
    assert s.model_assumed == ["no modules.json: mean pooling + L2 normalisation assumed (the embed task's default)"]
    (run,) = spark.read.format("delta").load(out + "_runs").collect()
    assert run["model_assumed"] == s.model_assumed[0]
    bad = run_job({"input": inp, "output": out, "model": tiny_bert, "text_col": "nope"})
    assert bad.status == "config_error" and bad.exit_code == 2 and "text_col" in bad.error
    worse = run_job({"inptu": inp})
    assert worse.exit_code == 2 and "did you mean 'input'" in worse.error


@pytest.fixture
def plan_calls(monkeypatch):
    """How many times the Planner planned (each call reads both logs and may run Spark jobs)."""
    from spark_infer.job import planner

    calls = []
    real = planner.Planner.plan

    def counted(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(planner.Planner, "plan", counted)
    return calls


def _printed_counts(printed: str) -> dict[str, int]:
    line = [ln for ln in printed.splitlines() if ln.startswith("plan: units_total=")]
    assert len(line) == 1, printed
    return {k: int(v) for k, v in (f.split("=") for f in line[0].removeprefix("plan: ").split())}


def test_every_run_plans_once_and_runs_the_plan_it_printed(spark, tmp_path, tables, tiny_bert, capsys,
                                                           plan_calls):
    """Issue 19: the command line, `run_job` and a dry run plan once; what is printed is what runs."""
    from spark_infer import run_job

    inp, out, rows = tables
    code, s = job(tmp_path, inp, out, "--model", tiny_bert, "--dry-run", name="dry.json")
    assert code == ExitCode.OK and len(plan_calls) == 1
    dry = _printed_counts(capsys.readouterr().out)
    assert dry == s["plan"] and dry["units_new"] == 3

    code, s = job(tmp_path, inp, out, "--model", tiny_bert)  # the CLI's execute path, printing its plan
    assert code == ExitCode.OK and len(plan_calls) == 2, s
    printed = capsys.readouterr().out
    ran = {k: v for k, v in s["plan"].items() if k != "groups"}
    assert _printed_counts(printed) == ran == dry
    pending = sorted(ln.split()[2] for ln in printed.splitlines() if ln.startswith("  pending"))
    assert pending == sorted(s["units_committed"]) and s["rows_scored"] == ran["rows_pending"] == len(rows)

    write_input(spark, inp, rows_for("toys", 300, 7), mode="append")
    r = run_job({"input": inp, "output": out, "model": tiny_bert}, spark=spark)
    assert r.exit_code == 0 and len(plan_calls) == 3, r.error
    assert r.units_committed == ["category=toys"] and r.plan["units_new"] == 1 and r.plan["units_done"] == 3
