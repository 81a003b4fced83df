"""Commit: write one unit's results to the output Delta table in one atomic commit.

`mode("overwrite")` + `replaceWhere` on the unit replaces exactly that unit's rows, and Delta's
idempotent-write options `txnAppId`/`txnVersion` record the write in the same commit: a second
writer of the same unit at the same plan version is skipped by Delta or fails with a concurrency
error, so concurrent or repeated runs never duplicate rows.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType

from spark_infer.runtime.spec import ConfigError
from spark_infer.tables import TableRef

#: table properties that keep the output readable by other Delta readers (delta-rs, DuckDB):
#: no deletion vectors, no column mapping, no v2 checkpoints.
READER_FRIENDLY_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}


def ensure_table(
    spark: SparkSession, out: TableRef, schema: StructType, partition_cols: list[str], cdf: bool = False
) -> None:
    """Create the output table (empty, with its final schema and properties) if it does not exist."""
    from delta.tables import DeltaTable

    builder = DeltaTable.createIfNotExists(spark)
    builder = builder.location(out.location) if out.is_path else builder.tableName(out.ref)
    builder = builder.addColumns(schema).partitionedBy(*partition_cols)
    props = dict(READER_FRIENDLY_PROPERTIES)
    if cdf:
        props["delta.enableChangeDataFeed"] = "true"
    for k, v in props.items():
        builder = builder.property(k, v)
    try:
        builder.execute()
    except Exception:
        # a concurrent run created it between our check and our commit: fine if it now exists
        if not out.exists(spark):
            raise


def check_compatible(
    existing: StructType, existing_partitions: list[str], expected: StructType, partition_cols: list[str],
    out: TableRef,
) -> None:
    """ConfigError when an existing output table cannot take this job's rows."""
    have = {f.name: f.dataType for f in existing.fields}
    want = {f.name: f.dataType for f in expected.fields}
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
    if list(existing_partitions) != list(partition_cols):
        problems.append(f"partitioned by {existing_partitions}, this job partitions by {partition_cols}")
    if problems:
        raise ConfigError(
            f"output={out.ref!r}: existing table does not match this job: " + "; ".join(problems)
            + " (choose another output or fix the job's task/columns)"
        )


def txn_app_id(out: TableRef, unit_label: str) -> str:
    """A stable Delta application id per (output table, unit)."""
    digest = hashlib.sha256(f"{out.location}\0{unit_label}".encode()).hexdigest()[:24]
    return f"spark-infer-{digest}"


def write_unit(df: DataFrame, out: TableRef, where: str, app_id: str, txn_version: int) -> None:
    """Replace the unit's rows with `df` in one Delta commit, recorded with (app_id, txn_version)."""
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", where)
        .option("txnAppId", app_id)
        .option("txnVersion", str(txn_version))
    )
    if out.is_path:
        writer.save(out.location)
    else:
        writer.saveAsTable(out.ref)
