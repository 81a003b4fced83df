"""Delta Lake output: one commit per unit (or group), idempotent and conflict-checked.

`mode("overwrite")` + `replaceWhere` on the units replaces exactly their rows, and Delta's idempotent
write options `txnAppId`/`txnVersion` record the write in the same commit: a second writer of the
same units at the same plan version is skipped by Delta or fails with a concurrency error, so
concurrent or repeated runs never duplicate rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from spark_infer.errors import ConfigError
from spark_infer.sinks.base import Committed, register_sink
from spark_infer.tables import TableRef

#: table properties that keep the output readable by other Delta readers (delta-rs, DuckDB):
#: no deletion vectors, no column mapping, no v2 checkpoints.
READER_FRIENDLY_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}

#: exception names (Python or JVM side) of Delta's optimistic-concurrency conflicts
_CONFLICTS = (
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentTransaction",
    "ConcurrentWriteException", "ConcurrentDeleteDeleteException", "ProtocolChangedException",
    "MetadataChangedException", "DELTA_CONCURRENT",
)

RUNS_SCHEMA = (
    "run_id string, job_name string, status string, exit_code int, input string, output string, task string, "
    "model string, model_fingerprint string, config_hash string, input_version long, "
    "output_version_before long, output_version_after long, units_planned int, units_scored int, "
    "units_skipped int, units_failed int, rows long, error_rows long, tokens long, durations_json string, "
    "error string, started_at string, ended_at string"
)


@register_sink
class DeltaOutput:
    """A Delta table (path or catalog name) as an `OutputTable`.

        out = DeltaOutput(spark, "/data/emb", change_data_feed=True)
        out.ensure(schema, ["category"]); out.write_units(df, "category = 'books'", "category=books", 0)
    """

    format_name = "delta"

    def __init__(self, spark: SparkSession, ref: str, *, change_data_feed: bool = False,
                 runs_table: str | None = None) -> None:
        self.spark = spark
        self.table = TableRef(ref)
        self.ref = self.table.location
        self.change_data_feed = change_data_feed
        self.runs_table = runs_table or ref.rstrip("/") + "_runs"

    # -- state ------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.table.exists(self.spark)

    def version(self) -> int:
        return self.table.version(self.spark)

    def committed_units(self, unit_columns: Sequence[str]) -> dict[tuple[Any, ...], Committed]:
        rows = (
            self.table.read(self.spark)
            .groupBy(*unit_columns)
            .agg(
                F.min("input_state").alias("s0"), F.max("input_state").alias("s1"),
                F.min("model_fingerprint").alias("f0"), F.max("model_fingerprint").alias("f1"),
                F.count(F.lit(1)).alias("n"),
            )
            .collect()
        )
        return {
            tuple(r[c] for c in unit_columns): Committed(
                state=r["s0"] if r["s0"] == r["s1"] else None,
                fingerprint=r["f0"] if r["f0"] == r["f1"] else None,
                rows=int(r["n"]),
            )
            for r in rows
        }

    def check_compatible(self, schema: StructType, partition_columns: Sequence[str]) -> None:
        existing = self.table.read(self.spark).schema
        have = {f.name: f.dataType for f in existing.fields}
        want = {f.name: f.dataType for f in schema.fields}
        problems = []
        for name, dtype in want.items():
            if name not in have:
                problems.append(f"column {name!r} ({dtype.simpleString()}) is missing")
            elif have[name] != dtype:
                problems.append(
                    f"column {name!r} is {have[name].simpleString()}, this job writes {dtype.simpleString()}"
                )
        extra = [n for n in have if n not in want]
        if extra:
            problems.append(f"unexpected columns {extra}")
        existing_partitions = self.table.partition_columns(self.spark)
        if list(existing_partitions) != list(partition_columns):
            problems.append(f"partitioned by {existing_partitions}, this job partitions by {list(partition_columns)}")
        if problems:
            raise ConfigError(
                f"output={self.table.ref!r}: existing table does not match this job: " + "; ".join(problems)
                + " (choose another output or fix the job's task/columns)"
            )

    # -- writes -----------------------------------------------------------------------------------
    def ensure(self, schema: StructType, partition_columns: Sequence[str]) -> None:
        from delta.tables import DeltaTable

        builder = DeltaTable.createIfNotExists(self.spark)
        t = self.table
        builder = builder.location(t.location) if t.is_path else builder.tableName(t.ref)
        builder = builder.addColumns(schema).partitionedBy(*partition_columns)
        props = dict(READER_FRIENDLY_PROPERTIES)
        if self.change_data_feed:
            props["delta.enableChangeDataFeed"] = "true"
        for k, v in props.items():
            builder = builder.property(k, v)
        try:
            builder.execute()
        except Exception:
            # a concurrent run created it between our check and our commit: fine if it now exists
            if not self.exists():
                raise

    def app_id(self, units_id: str) -> str:
        """A stable Delta application id per (output table, units)."""
        digest = hashlib.sha256(f"{self.table.location}\0{units_id}".encode()).hexdigest()[:24]
        return f"spark-infer-{digest}"

    def write_units(self, df: DataFrame, predicate: str, units_id: str, plan_version: int) -> None:
        # txnVersion = the version the run planned at + 1: two runs planned at the same version
        # collide on purpose, so only one of them ever writes these units
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", predicate)
            .option("txnAppId", self.app_id(units_id))
            .option("txnVersion", str(plan_version + 1))
        )
        if self.table.is_path:
            writer.save(self.table.location)
        else:
            writer.saveAsTable(self.table.ref)

    def is_conflict(self, exc: BaseException) -> bool:
        text = f"{type(exc).__name__} {exc}"
        return any(w in text for w in _CONFLICTS)

    def append_run_record(self, record: dict[str, Any]) -> None:
        ref = TableRef(self.runs_table)
        df = self.spark.createDataFrame([record], RUNS_SCHEMA)
        w = df.write.format("delta").mode("append").option("delta.enableDeletionVectors", "false")
        if ref.is_path:
            w.save(ref.location)
        else:
            w.saveAsTable(ref.ref)
