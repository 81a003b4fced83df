"""The input side: a Delta table pinned at one version, its units, and what each unit holds.

Units are learned as cheaply as the input allows:

1. **From the log** (delta-rs, no Spark job): when every unit column is a partition column, each
   unit's live files, row count and a *files state* (changes whenever its files change). A unit
   whose files state equals what its output rows were scored from is unchanged: no row is read.
2. **From rows** (one Spark aggregation over just the units that need it): the *content state*,
   count + an order-independent sum of a row hash that marks nulls and column positions. It decides
   whether a unit whose files changed really changed (a compaction rewrites files, not rows), and
   it is what output rows record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import MapType, StructType

from spark_infer.delta_log import LogSnapshot, UnitFiles, open_log
from spark_infer.errors import ConfigError
from spark_infer.tables import TableRef
from spark_infer.units import UnitColumn, UnitKey, canonical_exprs, group_predicate, key_from_row

#: version tag of the content state's formula (a new formula rescores each unit once)
STATE_VERSION = "s2"


def content_state(rows: int, hash_sum: Any) -> str:
    """The content state of a unit from its row count and summed row hashes (≤ 32 chars, so Delta's
    column statistics hold it whole)."""
    digest = hashlib.sha256(f"{STATE_VERSION}|{rows}|{hash_sum}".encode()).hexdigest()
    return f"{STATE_VERSION}:{digest[:21]}"


def row_hash(df: DataFrame, columns: Sequence[str]) -> Column:
    """A 64-bit hash of one row's `columns` that tells (a=3, b=null) from (a=null, b=3).

    Spark's xxhash64 skips nulls, so each value is preceded by its own null marker; maps (which
    xxhash64 refuses) are hashed through their JSON text.
    """
    parts: list[Column] = []
    for c in columns:
        col = F.col(c)
        if isinstance(df.schema[c].dataType, MapType):
            col = F.to_json(col)
        parts += [F.isnull(F.col(c)), col]
    return F.xxhash64(*parts)


@dataclass(frozen=True)
class InputUnit:
    """One unit of the input at the pinned version.

    `state` is its content state, or None when it was not read (a new unit: its state is computed
    while it is scored); `files` its files state, or None when the log could not say.
    """

    key: UnitKey
    rows: int
    state: str | None
    files: str | None


class InputTable:
    """A Delta input table (path or catalog name), read at one pinned version."""

    def __init__(self, ref: str) -> None:
        self.table = TableRef(ref)
        self.ref = ref
        self.log: LogSnapshot | None = None
        self.version: int | None = None
        self.schema: StructType | None = None
        self.partition_columns: list[str] = []
        #: table properties at the pinned version (e.g. delta.enableChangeDataFeed)
        self.properties: dict[str, str] = {}

    def read_log(self) -> bool:
        """Pin the latest version from the log, without Spark (path tables delta-rs can read)."""
        if not self.table.is_path:
            return False
        self.log = open_log(self.table.location)
        if self.log is None:
            return False
        self.version, self.schema = self.log.version, self.log.spark_schema()
        self.partition_columns = self.log.partition_columns
        self.properties = dict(self.log.properties)
        return True

    def read_spark(self, spark: SparkSession) -> None:
        """Pin the latest version through Spark (catalog tables, logs delta-rs cannot read)."""
        if self.version is not None:
            if self.log is None and not self.table.is_path:
                # the catalog told us the location: the log may be readable from here after all
                self.log = open_log(self.table.location_in(spark), self.version)
            return
        detail = self.table.delta_detail(spark)
        if detail is None:
            raise ConfigError(f"input={self.ref!r}: not an existing Delta table")
        self.version = self.table.version(spark)
        self.partition_columns = list(detail["partitionColumns"])
        self.properties = {str(k): str(v) for k, v in (detail.get("properties") or {}).items()}
        if not self.table.is_path:
            self.log = open_log(detail["location"], self.version)
        self.schema = self.read(spark).schema

    def read(self, spark: SparkSession) -> DataFrame:
        return self.table.read(spark, self.version)

    # -- units ------------------------------------------------------------------------------------
    def files_by_unit(self, columns: Sequence[UnitColumn], spark: SparkSession | None = None
                      ) -> dict[UnitKey, UnitFiles] | None:
        """Per unit: its files, when every unit column is a partition column: from the log, else
        (a client that cannot read the storage) from the files' metadata through `spark`."""
        if not all(c.name in self.partition_columns for c in columns):
            return None
        if self.log is None:
            return self._files_via_spark(spark, columns) if spark is not None else None
        try:
            return self.log.files_by_unit(columns)
        except LookupError:
            return None

    def all_files(self, spark: SparkSession | None = None) -> UnitFiles | None:
        if self.log is None:
            return self._files_via_spark(spark, []).get((), UnitFiles()) if spark is not None else None
        try:
            return self.log.all_files()
        except LookupError:
            return None

    def _files_via_spark(self, spark: SparkSession, columns: Sequence[UnitColumn]) -> dict[UnitKey, UnitFiles]:
        """Files per unit from the scan's file metadata (`_metadata`: path and size; rows counted from
        the Parquet footers, no data column is read), for a client whose storage only the server
        reads. Its files states differ from the log's (`s` lines, full paths): a unit planned one way
        and then the other is content-hashed once, never mistaken."""
        keys = [f"__k{i}" for i in range(len(columns))]
        rows = (self.read(spark)
                .selectExpr("_metadata.file_path AS __p", "_metadata.file_size AS __s", *canonical_exprs(columns))
                .groupBy("__p", "__s", *keys).count().collect())
        out: dict[UnitKey, UnitFiles] = {}
        for r in rows:
            u = out.setdefault(key_from_row(columns, r), UnitFiles())
            u.rows += int(r["count"])
            u.lines.append(f"s|{r['__p']}|{r['__s']}|{r['count']}")
        return out


def content_states(df: DataFrame, columns: Sequence[UnitColumn], hashed: Sequence[str],
                   keys: Sequence[UnitKey] | None = None) -> dict[UnitKey, tuple[int, str]]:
    """(rows, content state) per unit, from one aggregation over the units `keys` (all when None)."""
    if keys is not None:
        if not keys:
            return {}
        df = df.where(group_predicate(columns, keys))
    h = row_hash(df, hashed)
    rows = (
        df.selectExpr("*", *canonical_exprs(columns))
        .groupBy(*[f"__k{i}" for i in range(len(columns))])
        .agg(F.count(F.lit(1)).alias("__n"), F.sum(h.cast("decimal(38,0)")).alias("__h"))
        .collect()
    )
    return {key_from_row(columns, r): (int(r["__n"]), content_state(int(r["__n"]), r["__h"])) for r in rows}
