"""Deletion vectors on an input whose partition values escape differently in a path ('%', spaces,
non-ASCII): the log's row counts per unit must equal the rows Spark reads, so a unit's planned rows
match its scored rows. Real Spark, real Delta, in-process."""

from __future__ import annotations

import glob
import json
import os

import pytest
from jobutil import delta_versions, rows_for

from spark_infer import run_job
from spark_infer.delta_log import open_log
from spark_infer.inputs import InputTable
from spark_infer.units import UnitColumn

#: values Spark escapes in the directory name, then again in the log's path (or not at all: 'café')
HOSTILE = ["a%20b", "x y", "café", "100%", "plain"]
DELETED_FROM = ["a%20b", "x y", "café", "100%"]  # 'plain' keeps every row and has no vector
COLS = [UnitColumn("category", "string")]


def deletion_vectors_in_log(path: str) -> dict[str, int]:
    """Per partition value: the cardinality of the deletion vector on its latest add action."""
    out: dict[str, int] = {}
    for f in sorted(glob.glob(os.path.join(path, "_delta_log", "*.json"))):
        with open(f) as fh:
            for line in fh:
                add = json.loads(line).get("add")
                if add and add.get("deletionVector"):
                    out[add["partitionValues"]["category"]] = add["deletionVector"]["cardinality"]
    return out


@pytest.fixture(scope="module")
def dv_input(spark, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("dv") / "in")
    rows = []
    for k, cat in enumerate(HOSTILE):
        rows += rows_for(cat, 100 * k, 9)
    (spark.createDataFrame(rows, "id long, category string, text string").repartition(1)
     .write.format("delta").option("delta.enableDeletionVectors", "true").partitionBy("category").save(path))
    spark.sql(f"DELETE FROM delta.`{path}` WHERE id % 3 = 0 AND category <> 'plain'")
    # the delete marked rows with deletion vectors (no file was rewritten)
    assert deletion_vectors_in_log(path) == dict.fromkeys(DELETED_FROM, 3)
    return path


def spark_counts(spark, path: str) -> dict[tuple, int]:
    rows = spark.read.format("delta").load(path).groupBy("category").count().collect()
    return {(r["category"],): r["count"] for r in rows}


def test_log_row_counts_exclude_deletion_vectors_for_escaped_partition_values(spark, dv_input):
    want = spark_counts(spark, dv_input)
    assert want == {(c,): 6 if c in DELETED_FROM else 9 for c in HOSTILE}
    snap = open_log(dv_input)
    assert snap is not None and snap.has_deletion_vectors
    assert {k: u.rows for k, u in snap.files_by_unit(COLS).items()} == want
    assert snap.all_files().rows == sum(want.values())
    # the planner's path: the log answers (no LookupError fallback)
    inp = InputTable(dv_input)
    assert inp.read_log()
    by_unit = inp.files_by_unit(COLS)
    assert by_unit is not None and {k: u.rows for k, u in by_unit.items()} == want


@pytest.mark.slow
def test_scoring_an_input_with_deletion_vectors_then_a_rerun_commits_nothing(spark, dv_input, tiny_bert,
                                                                            tmp_path):
    out = str(tmp_path / "out")
    first = run_job({"input": dv_input, "output": out, "model": tiny_bert})
    assert first.exit_code == 0, first.error
    assert len(first.units_committed) == len(HOSTILE) and not first.units_failed
    assert first.rows_scored == sum(spark_counts(spark, dv_input).values())
    assert spark_counts(spark, out) == spark_counts(spark, dv_input)
    version = delta_versions(out)[-1]
    again = run_job({"input": dv_input, "output": out, "model": tiny_bert})
    assert again.exit_code == 0, again.error
    assert again.units_committed == [] and not again.units_failed
    assert delta_versions(out)[-1] == version


def test_a_deletion_vector_that_matches_no_live_file_falls_back_not_miscounts(dv_input):
    """A vector delta-rs names under a location no add action has: the log gives no count (the
    planner then counts with Spark) rather than a count that ignores the deleted rows."""
    import pyarrow as pa

    inp = InputTable(dv_input)
    assert inp.read_log()
    real = pa.table(inp.log.table.deletion_vectors())
    moved = real.set_column(0, real.column_names[0],
                            pa.array([u.replace("/category=", "/elsewhere/category=") for u in
                                      real.column(0).to_pylist()], real.schema.field(0).type))
    inp.log.table.deletion_vectors = lambda: moved
    with pytest.raises(LookupError):
        inp.log.files_by_unit(COLS)
    assert inp.files_by_unit(COLS) is None and inp.all_files() is None
