"""Delta table references: a path or a catalog name, read at a pinned version."""

from __future__ import annotations

import datetime as dt
import decimal
import os
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class TableRef:
    """A Delta table given as a filesystem/object-store path or a catalog table name."""

    ref: str

    @property
    def is_path(self) -> bool:
        r = self.ref
        return "://" in r or r.startswith(("/", ".", "~")) or os.sep in r or os.path.exists(r)

    @property
    def location(self) -> str:
        return os.path.abspath(os.path.expanduser(self.ref)) if self.is_path and "://" not in self.ref else self.ref

    def __str__(self) -> str:
        return self.location

    def delta_table(self, spark: SparkSession):
        from delta.tables import DeltaTable

        if self.is_path:
            return DeltaTable.forPath(spark, self.location)
        return DeltaTable.forName(spark, self.ref)

    def exists(self, spark: SparkSession) -> bool:
        from delta.tables import DeltaTable

        if self.is_path:
            return DeltaTable.isDeltaTable(spark, self.location)
        return spark.catalog.tableExists(self.ref)

    def version(self, spark: SparkSession) -> int:
        return int(self.delta_table(spark).history(1).select("version").first()[0])

    def partition_columns(self, spark: SparkSession) -> list[str]:
        return list(self.delta_table(spark).detail().select("partitionColumns").first()[0])

    def read(self, spark: SparkSession, version: int | None = None) -> DataFrame:
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location) if self.is_path else reader.table(self.ref)


def sql_literal(value: Any) -> str:
    """A Spark SQL literal for a partition value (strings escaped, dates typed)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return repr(value) if not isinstance(value, decimal.Decimal) else f"{value}BD"
    if isinstance(value, dt.datetime):
        return f"TIMESTAMP'{value.isoformat(sep=' ')}'"
    if isinstance(value, dt.date):
        return f"DATE'{value.isoformat()}'"
    s = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{s}'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def predicate(columns: tuple[str, ...], values: tuple[Any, ...]) -> str:
    """`a = 1 AND b IS NULL` for one unit."""
    parts = []
    for c, v in zip(columns, values, strict=True):
        parts.append(f"{quote_ident(c)} IS NULL" if v is None else f"{quote_ident(c)} = {sql_literal(v)}")
    return " AND ".join(parts)
