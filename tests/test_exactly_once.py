"""Exactly once on real tables: hostile unit keys, changed settings, error rows, orphaned units, skipped
writes, a model other than the fingerprinted one. Real Spark, real Delta; in-process where the case
allows, a job process where the driver's own time zone matters."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from jobutil import cli_cmd, delta_versions, env, rows_for, run, summary

from spark_infer import run_job
from spark_infer.errors import ConcurrentRunError, ModelMismatchError
from spark_infer.inputs import content_states
from spark_infer.runtime import RuntimeOptions, score_stream
from spark_infer.runtime.spec import make_spec
from spark_infer.sinks.delta import DeltaOutput
from spark_infer.units import UnitColumn, group_predicate, predicate

SCHEMA = "id long, category string, text string"


def job(inp, out, model, **kw):
    return run_job({"input": inp, "output": out, "model": model, **kw})


def ids(spark, path) -> list[int]:
    return sorted(r.id for r in spark.read.format("delta").load(path).select("id").collect())


# -- 1. fewer id buckets on a later run ------------------------------------------------------------------
def test_a_changed_bucket_count_is_a_config_error_not_duplicates(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    write_deltalake(inp, pa.table({"id": pa.array(range(40), pa.int64()),
                                   "text": [f"row number {i}" for i in range(40)]}))
    first = job(inp, out, tiny_bert, buckets=8)
    assert first.exit_code == 0 and len(first.units_committed) == 8
    version = delta_versions(out)[-1]
    second = job(inp, out, tiny_bert, buckets=4)
    assert second.exit_code == 2 and "buckets=8" in second.error and "4" in second.error, second.error
    assert delta_versions(out)[-1] == version  # nothing written
    assert ids(spark, out) == list(range(40))


# -- 2 + 4. hostile unit values: every type a unit can have ---------------------------------------------
FB1 = dt.datetime(2024, 11, 3, 5, 30, tzinfo=dt.UTC)  # 01:30 EDT in New York
FB2 = dt.datetime(2024, 11, 3, 6, 30, tzinfo=dt.UTC)  # 01:30 EST, one hour later
D = dt.date


def hostile_rows() -> pa.Table:
    """Units over nine unit columns of every unit type. Rows 0/1 ('x,b=y','z' vs 'x','y,b=z') and 3/4
    (null vs 'None') would share a label-based identity and must stay apart; rows 4/10 differ only by
    two instants of New York's fall-back hour; rows 2/3 ('' vs null) and 8/9 (0.0 vs -0.0) are one
    unit each, as Spark groups them and Delta stores them."""
    rows = [
        # s, s2, i, l, b, d, ts, dec, f
        ("x,b=y", "z", 1, 2**40, True, D(2024, 2, 29), FB1, "1.50", math.nan),
        ("x", "y,b=z", 1, 2**40, True, D(2024, 2, 29), FB1, "1.50", math.nan),
        ("", "q", 3, 0, None, D(1970, 1, 1), None, "0.00", 1.5),
        (None, "q", 3, 0, None, D(1970, 1, 1), None, "0.00", 1.5),
        ("None", "q", 3, 0, None, D(1970, 1, 1), FB1, "0.00", -math.inf),
        ("über/ß=%", "q", 5, 6, False, D(1999, 12, 31), FB2, "3.14", 1.25e-05),
        ("a'b\\c", "q", None, 7, True, D(2038, 1, 19), dt.datetime(2001, 9, 9, 1, 46, 40, 123456, tzinfo=dt.UTC),
         "0.10", 2.5),
        ("line\nbreak", "q", 6, None, False, None, FB1, "-0.01", None),
        ("x", "q", 7, 9, True, D(2020, 2, 2), FB2, "2.00", 0.0),
        ("x", "q", 7, 9, True, D(2020, 2, 2), FB2, "2.00", -0.0),
        ("None", "q", 3, 0, None, D(1970, 1, 1), FB2, "0.00", -math.inf),
    ]
    return [(i, f"hostile key row {i}", *r[:7], decimal.Decimal(r[7]), r[8]) for i, r in enumerate(rows)]


HOSTILE_SCHEMA = ("id long, text string, s string, s2 string, i int, l long, b boolean, d date, ts timestamp, "
                  "dec decimal(10,2), f double")


UNITS = 9  # 11 rows; '' = null and 0.0 = -0.0 merge two pairs

UNIT_COLUMNS = ["s", "s2", "i", "l", "b", "d", "ts", "dec", "f"]


@pytest.fixture(scope="module")
def hostile_input(spark, tmp_path_factory) -> tuple[str, list]:
    path = str(tmp_path_factory.mktemp("hostile") / "in")
    rows = hostile_rows()
    # (delta-rs 1.6 cannot write a partition value like -0.01: it writes "0.-1")
    spark.createDataFrame(rows, HOSTILE_SCHEMA).write.format("delta").partitionBy(*UNIT_COLUMNS).save(path)
    return path, rows


@pytest.mark.slow
def test_hostile_unit_values_round_trip_under_a_non_utc_driver(spark, hostile_input, tiny_bert, tmp_path):
    inp, rows = hostile_input
    out = str(tmp_path / "out")
    # the driver's clock in New York, the session too: the job pins UTC for its unit predicates
    e = {**env(), "TZ": "America/New_York"}
    args = ["--input", inp, "--output", out, "--model", tiny_bert, "--conf", "spark.sql.session.timeZone=America/New_York"]
    r = run(cli_cmd(*args, "--summary-json", str(tmp_path / "s1.json")), env_vars=e)
    assert r.returncode == 0, r.stdout[-4000:]
    s = summary(str(tmp_path / "s1.json"))
    n = len(rows)
    assert s["rows_scored"] == n and len(s["units_committed"]) == s["plan"]["units_total"] == UNITS
    assert ids(spark, out) == list(range(n))  # every row once
    res = spark.read.format("delta").load(out)
    assert res.where("error is not null").count() == 0
    assert res.select(*UNIT_COLUMNS).distinct().count() == UNITS  # the fall-back hour's instants stayed apart

    version = delta_versions(out)[-1]
    # the no-op rerun in this process, its session in New York too (restored after)
    old_tz = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        s2 = job(inp, out, tiny_bert)
    finally:
        spark.conf.set("spark.sql.session.timeZone", old_tz)
    assert s2.exit_code == 0, s2.error
    assert s2.units_committed == [] and s2.plan["units_done"] == UNITS
    assert s2.spark_jobs["plan"] == 0  # learned from the logs: not one row read
    assert delta_versions(out)[-1] == version


def test_unit_keys_from_rows_equal_unit_keys_from_the_log(spark, hostile_input, tiny_bert, tmp_path, monkeypatch):
    """The same plan when no log can be read (catalog tables elsewhere): keys collected through Spark."""
    inp, rows = hostile_input
    out = str(tmp_path / "out")
    assert job(inp, out, tiny_bert).exit_code == 0
    monkeypatch.setenv("SPARK_INFER_READ_DELTA_LOG", "0")
    again = job(inp, out, tiny_bert)
    assert again.exit_code == 0, again.error
    assert again.units_committed == [] and again.plan["units_done"] == UNITS
    assert again.spark_jobs["plan"] > 0  # this time rows were read


def test_a_type_that_cannot_be_a_unit_is_a_config_error(spark, tmp_path, tiny_bert):
    inp = str(tmp_path / "in")
    spark.createDataFrame([(1, "a", [1, 2])], "id long, text string, tags array<int>").write.format("delta").save(inp)
    s = job(inp, str(tmp_path / "out"), tiny_bert, partition_by=["tags"])
    assert s.exit_code == 2 and "'tags'" in s.error and "array<int>" in s.error, s.error
    assert not os.path.exists(tmp_path / "out")


def test_predicates_are_typed_literals():
    s = UnitColumn("s", "string")
    assert predicate([s], ("it's",)) == "`s` = CAST(X'69742773' AS STRING)"
    assert predicate([s], (None,)) == "(`s` IS NULL OR `s` = '')"
    assert predicate([UnitColumn("f", "float")], ("NaN",)) == "isnan(`f`)"
    assert predicate([UnitColumn("t", "timestamp")], (1730611800000000,)) == "`t` = timestamp_micros(1730611800000000)"
    assert group_predicate([UnitColumn("c", "int")], [(1,), (None,), (3,)]) == "(`c` IN (1, 3)) OR (`c` IS NULL)"


# -- 3. a write Delta skipped is never counted as committed --------------------------------------------
def test_a_skipped_write_is_a_conflict_not_a_commit(spark, tmp_path):
    out = DeltaOutput(spark, str(tmp_path / "out"))
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    schema = StructType([StructField("id", LongType()), StructField("category", StringType())])
    cols = [UnitColumn("category", "string")]
    out.ensure(schema, cols, {})
    df = spark.createDataFrame([(1, "books")], schema)
    pred = predicate(cols, ("books",))
    v = out.write_units(df, pred, "books", plan_version=0, run_id="run-a")
    assert v == 1
    # another run planned at the same version writes the same unit: Delta skips it, we say so
    with pytest.raises(ConcurrentRunError):
        out.write_units(df, pred, "books", plan_version=0, run_id="run-b")
    assert delta_versions(str(tmp_path / "out"))[-1] == 1


# -- 5. input state: values moving between columns ---------------------------------------------------
def test_content_state_tells_which_column_holds_a_value(spark):
    cols = [UnitColumn("u", "int")]
    a = spark.createDataFrame([(1, 3.0, None, "a", None)], "u int, f1 double, f2 double, id string, text string")
    b = spark.createDataFrame([(1, None, 3.0, None, "a")], "u int, f1 double, f2 double, id string, text string")
    assert content_states(a, cols, ["f1", "f2"]) != content_states(b, cols, ["f1", "f2"])
    assert content_states(a, cols, ["id", "text"]) != content_states(b, cols, ["id", "text"])
    assert content_states(a, cols, ["f1", "f2"]) == content_states(a.union(a).limit(1), cols, ["f1", "f2"])


# -- 6. orphaned units ---------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["delete", "keep"])
def test_orphaned_units_are_deleted_or_kept(spark, tmp_path, tiny_bert, policy):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 5) + rows_for("toys", 100, 4) + rows_for("garden", 200, 3)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    assert job(inp, out, tiny_bert).exit_code == 0
    spark.sql(f"DELETE FROM delta.`{inp}` WHERE category = 'toys'")
    s = job(inp, out, tiny_bert, on_orphan=policy)
    assert s.exit_code == 0 and s.plan["units_orphaned"] == 1 and s.units_committed == []
    left = {r.category for r in spark.read.format("delta").load(out).select("category").distinct().collect()}
    if policy == "delete":
        assert s.units_deleted == ["category=toys"] and left == {"books", "garden"}
        assert ids(spark, out) == [r[0] for r in rows if r[1] != "toys"]
        runs = spark.read.format("delta").load(out + "_runs").orderBy("started_at").collect()
        assert runs[-1].units_deleted == 1
    else:
        assert s.units_deleted == [] and left == {"books", "garden", "toys"}


def output_version_and_ids(spark, out):
    return delta_versions(out)[-1], ids(spark, out)


def test_an_input_with_no_units_never_empties_the_output_without_the_flag(spark, tmp_path, tiny_bert, capsys):
    """Issue 19: every row of a 3-partition input deleted upstream (truncated, mis-pointed, mid-rewrite):
    a default run refuses (exit 2) and deletes nothing; the dry run shows the rows that would go; the
    explicit flag deletes them."""
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 20) + rows_for("toys", 100, 20) + rows_for("garden", 200, 20)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    assert job(inp, out, tiny_bert).exit_code == 0
    spark.sql(f"DELETE FROM delta.`{inp}`")
    before = output_version_and_ids(spark, out)
    assert len(before[1]) == 60

    s = job(inp, out, tiny_bert)  # the measured case: a default run
    assert s.exit_code == 2 and s.units_deleted == [] and "60 output rows" in s.error, s.error
    assert output_version_and_ids(spark, out) == before

    dry = job(inp, out, tiny_bert, dry_run=True, max_orphan_share=1.0)  # even with no share limit
    printed = capsys.readouterr().out
    assert dry.exit_code == 0 and dry.plan["units_orphaned"] == 3 and dry.plan["rows_orphaned"] == 60
    assert "rows_orphaned=60" in printed and "orphaned delete (gone)" in printed
    assert "refusing to delete" in printed and "60 output rows" in printed and "--allow-mass-delete" in printed

    s = job(inp, out, tiny_bert, max_orphan_share=1.0)
    assert s.exit_code == 2 and s.status == "config_error" and s.units_deleted == [], s.error
    assert "60 output rows" in s.error and "no units at all" in s.error and "--allow-mass-delete" in s.error
    assert output_version_and_ids(spark, out) == before  # nothing written

    s = job(inp, out, tiny_bert, allow_mass_delete=True)
    assert s.exit_code == 0, s.error
    assert sorted(s.units_deleted) == ["category=books", "category=garden", "category=toys"]
    assert ids(spark, out) == []


def test_deleting_more_than_max_orphan_share_of_the_output_needs_the_flag(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = (rows_for("books", 0, 5) + rows_for("toys", 100, 4) + rows_for("garden", 200, 3)
            + rows_for("music", 300, 2))
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    assert job(inp, out, tiny_bert).exit_code == 0
    # 1 of 4 output units gone (25%, under the default 0.5): deleted by default, its rows in the plan
    spark.sql(f"DELETE FROM delta.`{inp}` WHERE category = 'toys'")
    s = job(inp, out, tiny_bert)
    assert s.exit_code == 0 and s.units_deleted == ["category=toys"], s.error
    assert s.plan["rows_orphaned"] == 4
    # 2 of the 3 left (67%): refused by default, nothing written
    spark.sql(f"DELETE FROM delta.`{inp}` WHERE category IN ('garden', 'music')")
    before = output_version_and_ids(spark, out)
    s = job(inp, out, tiny_bert)
    assert s.exit_code == 2 and s.units_deleted == [], s.error
    assert "5 output rows" in s.error and "max_orphan_share=0.5" in s.error and "--allow-mass-delete" in s.error
    assert output_version_and_ids(spark, out) == before
    # a threshold above that share deletes them
    s = job(inp, out, tiny_bert, max_orphan_share=0.7)
    assert s.exit_code == 0 and sorted(s.units_deleted) == ["category=garden", "category=music"], s.error
    assert ids(spark, out) == list(range(5))


# -- 7. a broken model, error rows and max_error_rate -------------------------------------------------
def predictor_dir(tmp_path) -> str:
    d = tmp_path / "predictor"
    d.mkdir(exist_ok=True)
    (d / "predictor.json").write_text('{"version": 1}')
    return str(d)


def custom(inp, out, tmp_path, predictor, **kw):
    opts = {"predictor": f"predictors:{predictor}", "columns": ["text"], **kw.pop("task_options", {})}
    return run_job({"input": inp, "output": out, "task": "custom", "model": predictor_dir(tmp_path),
                    "task_options": opts, **kw})


@pytest.fixture
def small_input(spark, tmp_path):
    inp = str(tmp_path / "in")
    rows = rows_for("books", 0, 10) + [(50 + i, "toys", f"toy {i} BAD" if i < 5 else f"toy {i}") for i in range(10)]
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    return inp, rows


def test_a_broken_model_fails_the_task_and_commits_nothing(spark, small_input, tmp_path):
    inp, rows = small_input
    out = str(tmp_path / "out")
    s = custom(inp, out, tmp_path, "Broken")
    assert s.exit_code == 3 and sorted(s.units_failed) == ["category=books", "category=toys"]
    assert all("SystemicScoringError" in m for m in s.units_failed.values()), s.units_failed
    assert not os.path.exists(os.path.join(out, "category=books"))  # no rows of nulls marked done


def test_max_error_rate_fails_a_unit_and_rescore_errors_rescores_it(spark, small_input, tmp_path):
    inp, rows = small_input
    out = str(tmp_path / "out")
    s = custom(inp, out, tmp_path, "FailsOnMarker", group_units=1)
    # toys: 5 of 10 rows fail (50% > 10%): not committed; books committed
    assert s.exit_code == 3 and list(s.units_failed) == ["category=toys"] and "max_error_rate" in s.units_failed[
        "category=toys"]
    assert s.units_committed == ["category=books"]
    # the failed unit's rows were scored, not committed: the record counts them, with the workers' counters
    assert s.rows_uncommitted == 10 and s.counters["rows"] == s.rows_scored + s.rows_uncommitted == 20
    s = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.6)
    assert s.exit_code == 0 and s.units_committed == ["category=toys"] and s.counters["error_rows"] == 5
    errors = spark.read.format("delta").load(out).where("error is not null").count()
    assert errors == 5
    again = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.6)
    assert again.units_committed == []  # error rows are kept unless asked
    redo = custom(inp, out, tmp_path, "FailsOnMarker", max_error_rate=0.6, rescore_errors=True)
    assert redo.plan["units_with_errors"] == 1 and redo.units_committed == ["category=toys"]


# -- 8. a worker holding another copy of the model ---------------------------------------------------------
def test_a_worker_with_a_different_model_copy_fails(tmp_path):
    from tiny_models import make_tiny_bert

    model = make_tiny_bert(str(tmp_path / "m"))
    spec = make_spec("embed", model)
    # the folder changes under the driver's fingerprint (another node's copy, a half-synced folder)
    cfg = json.loads(open(os.path.join(model, "config.json")).read())
    cfg["hidden_dropout_prob"] = 0.5
    with open(os.path.join(model, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ModelMismatchError, match="config.json differs"):
        next(score_stream(spec, RuntimeOptions(), [["a text"]]))
    os.remove(os.path.join(model, "tokenizer.json"))  # a half-synced copy
    with pytest.raises(ModelMismatchError, match="tokenizer.json: missing here"):
        next(score_stream(spec, RuntimeOptions(), [["a text"]]))


# -- 13. precision is in the fingerprint ---------------------------------------------------------------------
def test_resolved_precision_and_device_kind_are_fingerprinted(tiny_bert):
    cpu = make_spec("embed", tiny_bert, device_kind="cpu")
    gpu = make_spec("embed", tiny_bert, device_kind="cuda")
    assert (cpu.dtype, gpu.dtype) == ("float32", "bfloat16")
    assert cpu.fingerprint != gpu.fingerprint
    assert make_spec("embed", tiny_bert, device_kind="cuda", dtype="float32").fingerprint != gpu.fingerprint
    from spark_infer.runtime import pinned_device

    assert pinned_device(cpu, "cuda:0") == "cpu"  # auto found a GPU the job did not plan for
    with pytest.raises(ModelMismatchError, match="cuda"):
        pinned_device(gpu, "cpu")  # a GPU job's worker without a GPU fails rather than writing CPU rows


# -- 10. --conf values are strings ---------------------------------------------------------------------------
def test_conf_values_are_taken_as_given():
    from spark_infer.cli import overrides_from, score_parser

    ns = score_parser().parse_args(["--conf", "a=1e3", "--conf", "b=123e4567", "--conf", "c=null",
                                    "--conf", "d=true", "--option", "normalize=false"])
    o = overrides_from(ns)
    assert o["spark_conf"] == {"a": "1e3", "b": "123e4567", "c": "null", "d": "true"}
    assert o["task_options"] == {"normalize": False}


def test_config_errors_name_the_field_without_a_session(tmp_path):
    s = run_job({"input": str(tmp_path / "missing"), "output": str(tmp_path / "out")})
    assert s.exit_code == 2 and "not an existing Delta table" in s.error


def test_unreadable_secret_input_is_redacted_everywhere(spark, tmp_path, capsys):
    from spark_infer.cli import run_score

    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    inp = f"s3a://AKIAEXAMPLEKEY123:{secret}@bucket/path?X-Amz-Signature=deadbeef"
    env_before = dict(os.environ)
    # no credential lookups leave this machine: a dead local endpoint answers at once
    os.environ.update({"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                       "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true"})
    try:
        code = run_score(["--input", inp, "--output", str(tmp_path / "out"), "--summary-json",
                          str(tmp_path / "s.json"), "--dry-run"])
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    captured = capsys.readouterr()
    assert code == 2
    for text in (captured.out, captured.err, open(tmp_path / "s.json").read()):
        assert secret not in text and "deadbeef" not in text and "AKIAEXAMPLEKEY123" not in text
    assert "event=run_start" in captured.err and "s3a://***@bucket/path" in captured.err
