"""Cost follows the work: metadata plans, commit groups, one scan per group, sane files, bounded logs."""

from __future__ import annotations

import glob
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable
from jobutil import delta_versions, rows_for

from spark_infer import run_job
from spark_infer.sinks.delta import DeltaOutput
from spark_infer.units import UnitColumn, predicate

SCHEMA = "id long, category string, text string"


def _counting_hashes(monkeypatch) -> list[list]:
    """The units each content hash of the planner was asked for (an observation: the real function runs)."""
    from spark_infer.job import planner

    asked: list[list] = []
    real = planner.content_states

    def counted(df, columns, hashed, keys=None):
        if keys is None or keys:
            asked.append(sorted(keys or [("*",)]))
        return real(df, columns, hashed, keys)

    monkeypatch.setattr(planner, "content_states", counted)
    return asked


def test_a_compaction_of_the_input_rescores_nothing_and_the_next_no_op_run_reads_no_input_rows(
        spark, tmp_path, tiny_bert, monkeypatch):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    cats = ["books", "toys", "garden", "music"]
    for k in range(2):  # two appends: two small files per partition
        rows = [r for j, c in enumerate(cats) for r in rows_for(c, 1000 * j + 100 * k, 2)]
        spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").partitionBy("category").save(inp)
    cfg = {"input": inp, "output": out, "model": tiny_bert}
    first = run_job(cfg)
    assert first.exit_code == 0 and len(first.units_committed) == 4
    spark.sql(f"OPTIMIZE delta.`{inp}`")  # every unit's files change, no row does
    files = DeltaTable(inp).get_add_actions(flatten=True).num_rows
    assert files == 4  # compacted: the units' files all changed
    version = delta_versions(out)[-1]
    hashed = _counting_hashes(monkeypatch)
    again = run_job(cfg)
    assert again.exit_code == 0 and again.units_committed == [] and again.plan["units_done"] == 4
    assert len(hashed) == 1 and len(hashed[0]) == 4 and again.spark_jobs["plan"] > 0  # hashed once ...
    assert delta_versions(out)[-1] == version  # ... found unchanged: no output row rewritten ...
    records = DeltaTable(out + "_unit_files")
    assert records.to_pyarrow_table().num_rows == 4  # ... and their new files recorded beside the output
    recorded = records.version()
    hashed.clear()
    third = run_job(cfg)
    assert third.exit_code == 0 and third.units_committed == [] and third.plan["units_done"] == 4
    assert hashed == [] and third.spark_jobs["plan"] == 0  # planned from the logs: no input row read
    assert delta_versions(out)[-1] == version and DeltaTable(out + "_unit_files").version() == recorded


@pytest.mark.slow
def test_a_recorded_compaction_never_hides_a_change(spark, tmp_path, tiny_bert, monkeypatch):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    for k in range(2):
        rows = rows_for("books", 100 * k, 3) + rows_for("toys", 1000 + 100 * k, 2)
        spark.createDataFrame(rows, SCHEMA).write.format("delta").mode("append").partitionBy("category").save(inp)
    cfg = {"input": inp, "output": out, "model": tiny_bert}
    assert run_job(cfg).exit_code == 0
    spark.sql(f"OPTIMIZE delta.`{inp}`")
    compacted = delta_versions(inp)[-1]
    dry = run_job({**cfg, "dry_run": True})
    assert dry.exit_code == 0 and dry.plan["units_done"] == 2
    assert not os.path.exists(out + "_unit_files")  # a dry run writes nothing
    assert run_job(cfg).units_committed == []
    assert DeltaTable(out + "_unit_files").to_pyarrow_table().num_rows == 2  # both compactions recorded
    # a real change after the compaction (same row count, other text): rescored; toys read from no row
    spark.createDataFrame(rows_for("books", 0, 6, variant="v2"), SCHEMA).write.format("delta") \
        .mode("overwrite").option("replaceWhere", "category = 'books'").save(inp)
    hashed = _counting_hashes(monkeypatch)
    changed = run_job(cfg)
    assert changed.units_committed == ["category=books"] and changed.plan["units_changed"] == 1
    assert [len(h) for h in hashed] == [1]
    # back to the compacted files: their record maps them to the content books no longer has as output
    spark.sql(f"RESTORE TABLE delta.`{inp}` TO VERSION AS OF {compacted}")
    back = run_job(cfg)
    assert back.units_committed == ["category=books"] and back.plan["units_changed"] == 1
    ids = {r.id for r in spark.read.format("delta").load(out).where("category = 'books'").collect()}
    assert ids == {0, 1, 2, 100, 101, 102}  # the restored rows' outputs


@pytest.mark.slow
def test_a_no_op_run_after_a_compaction_of_a_bucketed_input_reads_no_rows(spark, tmp_path, tiny_bert, monkeypatch):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    for k in range(2):
        spark.createDataFrame(rows_for("books", 100 * k, 6), SCHEMA).write.format("delta").mode("append").save(inp)
    cfg = {"input": inp, "output": out, "model": tiny_bert, "buckets": 3}
    first = run_job(cfg)
    assert first.exit_code == 0
    spark.sql(f"OPTIMIZE delta.`{inp}`")
    hashed = _counting_hashes(monkeypatch)
    again = run_job(cfg)  # the all-files state changed: every bucket hashed, found unchanged, recorded
    assert again.units_committed == [] and again.plan["units_done"] == first.plan["units_total"] and hashed
    hashed.clear()
    third = run_job(cfg)
    assert third.units_committed == [] and hashed == [] and third.spark_jobs["plan"] == 0


def test_small_units_share_one_commit_and_each_keeps_its_own_state(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    cats = [f"c{k:02d}" for k in range(12)]
    rows = [r for k, c in enumerate(cats) for r in rows_for(c, 100 * k, 3)]
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    s = run_job({"input": inp, "output": out, "model": tiny_bert, "group_units": 5})
    assert s.exit_code == 0 and len(s.units_committed) == 12 and s.plan["groups"] == 3
    assert delta_versions(out) == [0, 1, 2, 3]  # create + one commit per group
    states = {r.category: r.input_state for r in spark.read.format("delta").load(out)
              .select("category", "input_state").distinct().collect()}
    assert len(states) == 12 and len(set(states.values())) == 12  # per unit, not per group
    # one unit of a committed group changes: only it is scored again
    spark.createDataFrame(rows_for("c03", 300, 3, variant="v2"), SCHEMA).write.format("delta") \
        .mode("overwrite").option("replaceWhere", "category = 'c03'").save(inp)
    s2 = run_job({"input": inp, "output": out, "model": tiny_bert, "group_units": 5})
    assert s2.units_committed == ["category=c03"] and s2.plan["units_done"] == 11


@pytest.mark.slow
def test_buckets_of_a_group_are_scored_from_one_scan(spark, tmp_path, tiny_bert):
    inp = str(tmp_path / "in")
    spark.createDataFrame(rows_for("books", 0, 64), SCHEMA).write.format("delta").save(inp)
    jobs = {}
    for n in (2, 16):
        s = run_job({"input": inp, "output": str(tmp_path / f"out{n}"), "model": tiny_bert, "buckets": n})
        filled = spark.read.format("delta").load(inp).selectExpr(f"pmod(xxhash64(id), {n})").distinct().count()
        assert s.exit_code == 0 and s.plan["units_total"] == filled and s.plan["groups"] == 1
        jobs[n] = s.spark_jobs["score_commit"]
    assert jobs[16] == jobs[2], jobs  # many more buckets, the same Spark jobs: one scan per group


@pytest.mark.slow
def test_output_files_are_sized_by_rows_and_optimize_compacts(spark, tmp_path, tiny_bert):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    spark.createDataFrame(rows_for("books", 0, 40) + rows_for("toys", 100, 6), SCHEMA).write.format("delta") \
        .partitionBy("category").save(inp)
    s = run_job({"input": inp, "output": out, "model": tiny_bert, "rows_per_file": 15, "score_partitions": 2})
    assert s.exit_code == 0
    books = glob.glob(os.path.join(out, "category=books", "*.parquet"))
    toys = glob.glob(os.path.join(out, "category=toys", "*.parquet"))
    assert len(toys) == 1  # a small unit is one file, however many tasks scored it
    assert len(books) == 3 and max(pq.ParquetFile(f).metadata.num_rows for f in books) <= 15
    # optimize: true compacts after a run that wrote
    spark.createDataFrame(rows_for("garden", 200, 5), SCHEMA).write.format("delta").mode("append").save(inp)
    s = run_job({"input": inp, "output": out, "model": tiny_bert, "optimize": True})
    assert s.exit_code == 0 and "optimize" in s.durations_s
    ops = [r.operation for r in spark.sql(f"DESCRIBE HISTORY delta.`{out}` LIMIT 1").collect()]
    assert ops == ["OPTIMIZE"]


@pytest.mark.slow
def test_transaction_ids_expire_and_the_log_is_checkpointed(spark, tmp_path):
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    path = str(tmp_path / "out")
    out = DeltaOutput(spark, path, txn_retention="interval 8 seconds")
    schema = StructType([StructField("id", LongType()), StructField("category", StringType())])
    cols = [UnitColumn("category", "string")]
    out.ensure(schema, cols, {})
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.checkpointInterval' = '2')")

    def write(cat: str, version: int) -> None:
        out.write_units(spark.createDataFrame([(version, cat)], schema), predicate(cols, (cat,)), cat, version, "r")

    for k in range(5):  # five groups, each with its own transaction id (the last commit is a checkpoint)
        write(f"c{k}", k)
    time.sleep(9)  # past the retention: the next checkpoint drops those ids (8 s: the last two stay live
    # however slow the machine is between their commits and the checks below)
    write("last", 20)
    write("last2", 21)
    checkpoints = glob.glob(os.path.join(path, "_delta_log", "*.checkpoint.parquet"))
    assert checkpoints, "a table written by many commits is checkpointed"
    latest = max(checkpoints)
    txns = [t["appId"] for t in pq.read_table(latest, columns=["txn"]).column("txn").to_pylist() if t]
    assert sorted(txns) == sorted([out.app_id("last"), out.app_id("last2")]), txns  # not carried forever
    table = DeltaTable(path)
    assert table.transaction_version(out.app_id("c0")) is None  # expired
    assert table.transaction_version(out.app_id("last2")) == 22
    assert pa.table(table.get_add_actions(flatten=True)).num_rows == 7  # no data lost
