"""Delta table references: a path or a catalog name, asked through Spark SQL (classic or Connect).

Only SQL and the DataFrame reader are used (`DESCRIBE DETAIL`, `DESCRIBE HISTORY`, `versionAsOf`),
never the `DeltaTable` Python API, so the same code runs on Spark Connect sessions, whose servers
have Delta but whose clients have no JVM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession


def quote_name(name: str) -> str:
    """`catalog`.`schema`.`table` for a dotted name (parts already in backquotes are kept)."""
    if "`" in name:
        return name
    return ".".join("`" + part + "`" for part in name.split("."))


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
        """The absolute path or URI (for a catalog name: the name itself)."""
        return os.path.abspath(os.path.expanduser(self.ref)) if self.is_path and "://" not in self.ref else self.ref

    def __str__(self) -> str:
        return self.location

    @property
    def sql_name(self) -> str:
        """How SQL names the table: delta.`/path` or `schema`.`table`."""
        if self.is_path:
            return "delta.`" + self.location.replace("`", "``") + "`"
        return quote_name(self.ref)

    def detail(self, spark: SparkSession) -> dict[str, Any]:
        """`DESCRIBE DETAIL`: format, location, partitionColumns, properties, numFiles, ..."""
        return spark.sql(f"DESCRIBE DETAIL {self.sql_name}").first().asDict(recursive=True)

    def exists(self, spark: SparkSession) -> bool:
        """True when a Delta table is there (any error describing it means: no)."""
        if not self.is_path and not spark.catalog.tableExists(self.ref):
            return False
        try:
            return str(self.detail(spark).get("format", "")).lower() == "delta"
        except Exception:  # noqa: BLE001 - not a Delta table / no such path
            return False

    def location_in(self, spark: SparkSession) -> str:
        """Where the table's files are (a catalog table's storage location)."""
        return self.location if self.is_path else str(self.detail(spark)["location"])

    def version(self, spark: SparkSession) -> int:
        return int(spark.sql(f"DESCRIBE HISTORY {self.sql_name} LIMIT 1").first()["version"])

    def partition_columns(self, spark: SparkSession) -> list[str]:
        return list(self.detail(spark)["partitionColumns"])

    def read(self, spark: SparkSession, version: int | None = None) -> DataFrame:
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.location) if self.is_path else reader.table(self.ref)
