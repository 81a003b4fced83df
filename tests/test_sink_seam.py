"""The output seam is real: a throw-away in-memory sink, written here against the `OutputTable`
protocol only, runs the real planner and commit loop (real Spark, real model) with no Delta output."""

from __future__ import annotations

from typing import Any

import pytest
from jobutil import rows_for

from spark_infer import run_job
from spark_infer.errors import ConfigError
from spark_infer.sinks import Committed, OutputTable
from spark_infer.units import canonical_exprs, key_from_row

SCHEMA = "id long, category string, text string"


class MemorySink:
    """Keeps the output's rows in a list; a commit replaces the rows its predicate matches."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.ref = "memory://test"
        self.rows: list[dict[str, Any]] = []
        self.schema = None
        self.partitions: list[str] = []
        self.commits: list[tuple[str, str, int]] = []
        self.records: list[dict[str, Any]] = []
        self._version = -1

    def exists(self) -> bool:
        return self.schema is not None

    def version(self) -> int:
        return self._version

    def committed_units(self, unit_columns) -> dict[tuple[Any, ...], Committed]:
        if not self.rows:
            return {}
        # unit keys in their canonical form (spark_infer.units), computed the way the job does
        keyed = self.spark.createDataFrame(self.rows, self.schema).selectExpr("*", *canonical_exprs(unit_columns))
        units: dict[tuple[Any, ...], list[Any]] = {}
        for r in keyed.collect():
            units.setdefault(key_from_row(unit_columns, r), []).append(r)
        out = {}
        for key, rows in units.items():
            states = {r["input_state"] for r in rows}
            fps = {r["model_fingerprint"] for r in rows}
            out[key] = Committed(state=states.pop() if len(states) == 1 else None,
                                 fingerprint=fps.pop() if len(fps) == 1 else None, rows=len(rows),
                                 error_rows=sum(r["error"] is not None for r in rows))
        return out

    def check_compatible(self, schema, unit_columns, layout) -> None:
        if [f.name for f in schema.fields] != [f.name for f in self.schema.fields]:
            raise ConfigError("memory sink: schema differs")

    def ensure(self, schema, unit_columns, layout) -> None:
        if self.schema is None:
            self.schema, self.partitions, self._version = schema, [c.name for c in unit_columns], 0

    def write_units(self, df, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        new = [r.asDict(recursive=True) for r in df.collect()]
        if self.rows:
            kept = self.spark.createDataFrame(self.rows, self.schema).where(f"NOT coalesce(({predicate}), false)")
            self.rows = [r.asDict(recursive=True) for r in kept.collect()]
        self.rows += new
        self._version += 1
        self.commits.append((units_id, predicate, plan_version))
        return self._version

    def delete_units(self, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        return self.write_units(self.spark.createDataFrame([], self.schema), predicate, units_id, plan_version, run_id)

    def is_conflict(self, exc: BaseException) -> bool:
        return False

    def compact(self) -> None:
        pass

    def append_run_record(self, record: dict[str, Any]) -> None:
        self.records.append(record)


@pytest.fixture
def partitioned_input(spark, tmp_path):
    path = str(tmp_path / "in")
    rows = rows_for("books", 0, 9) + rows_for("toys", 100, 7)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(path)
    return path, rows


def test_memory_sink_runs_the_planner_and_the_commit_loop(spark, partitioned_input, tiny_bert, tmp_path):
    inp, rows = partitioned_input
    sink = MemorySink(spark)
    assert isinstance(sink, OutputTable)
    cfg = {"input": inp, "output": str(tmp_path / "unused"), "model": tiny_bert, "record_runs": True}

    first = run_job(cfg, spark=spark, sink=sink)
    assert first.exit_code == 0, first.error
    assert sorted(first.units_committed) == ["category=books", "category=toys"]
    assert sorted(r["id"] for r in sink.rows) == sorted(r[0] for r in rows)
    assert all(len(r["embedding"]) == 32 and r["error"] is None for r in sink.rows)
    assert {r["model_fingerprint"] for r in sink.rows} == {first.model_fingerprint}
    assert len(sink.commits) == 1 and sink.records[-1]["run_id"] == first.run_id  # one commit group
    assert not (tmp_path / "unused").exists()  # nothing went to Delta

    again = run_job(cfg, spark=spark, sink=sink)
    assert again.exit_code == 0 and again.units_committed == [] and again.plan["units_done"] == 2
    assert len(sink.commits) == 1  # a finished job rerun commits nothing

    spark.createDataFrame(rows_for("garden", 200, 4), SCHEMA).write.format("delta").mode("append").save(inp)
    third = run_job(cfg, spark=spark, sink=sink)
    assert third.units_committed == ["category=garden"]
    assert len(sink.rows) == len(rows) + 4 and len(sink.commits) == 2
