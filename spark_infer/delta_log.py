"""Delta tables read from their transaction log on the driver (delta-rs), with no Spark job.

One snapshot read gives a table's version, schema, partitioning, properties and live files with
their partition values, row counts and column statistics. The planner uses it to learn which units
changed without reading rows, and the Delta sink to read what each output unit was scored from
(the lineage columns' min/max statistics). Anything delta-rs cannot open (a catalog table whose
storage the driver cannot reach, an unsupported table feature) returns None and the callers fall
back to Spark.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spark_infer.units import UnitColumn, UnitKey, canonical_from_arrow

log = logging.getLogger("spark_infer")

#: set to 0 to plan with Spark reads only (never read a log with delta-rs)
LOG_READS_ENV = "SPARK_INFER_READ_DELTA_LOG"


def log_reads_enabled() -> bool:
    return os.environ.get(LOG_READS_ENV, "1") not in ("0", "false", "False")


@dataclass
class UnitFiles:
    """The live files that can hold one unit's rows, summarised."""

    rows: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        """Changes whenever the unit's files change (an append, a rewrite, a delete, a compaction)."""
        digest = hashlib.sha256("\n".join(sorted(self.lines)).encode()).hexdigest()
        return "f1:" + digest[:21]


class LogSnapshot:
    """One version of a Delta table as its log describes it."""

    def __init__(self, table: Any, location: str) -> None:
        import pyarrow as pa

        self.table = table
        self.location = location
        self.version: int = table.version()
        meta = table.metadata()
        self.partition_columns: list[str] = list(meta.partition_columns)
        self.properties: dict[str, str] = dict(meta.configuration or {})
        self.schema_json: dict[str, Any] = json.loads(table.schema().to_json())
        self.actions = pa.table(table.get_add_actions(flatten=True))
        self._deleted: dict[str, int] | None = None

    def spark_schema(self) -> Any:
        from pyspark.sql.types import StructType

        return StructType.fromJson(self.schema_json)

    @property
    def has_deletion_vectors(self) -> bool:
        features = self.table.protocol().reader_features or []
        return "deletionVectors" in features

    def deleted_rows(self) -> dict[str, int]:
        """Rows hidden by deletion vectors, per live file (its log path as `get_add_actions` gives it;
        empty when the table has none).

        delta-rs 1.6 does not expose an add action's deletion-vector descriptor (nor its cardinality)
        in `get_add_actions`; `deletion_vectors()` gives each file's selection vector under a full
        URI that delta-rs encodes its own way (`caf%C3%A9` where the log says `café`). Both sides are
        therefore compared decoded, as full locations, in one dict lookup per file. A vector that
        names no live file (or two) raises LookupError, so the caller counts with Spark: never a
        wrong count."""
        if self._deleted is None:
            deleted: dict[str, int] = {}
            if self.has_deletion_vectors:
                import pyarrow as pa

                by_location: dict[str, str] = {}
                for p in self.actions.column("path").to_pylist():
                    if by_location.setdefault(self._location_of(p), p) != p:
                        raise LookupError(f"two live files at one location: {p}")
                dvs = pa.table(self.table.deletion_vectors())
                names = dvs.column_names
                for uri, mask in zip(dvs.column(names[0]).to_pylist(), dvs.column(names[1]).to_pylist(),
                                     strict=True):
                    path = by_location.get(_decoded(uri))
                    if path is None or path in deleted:
                        raise LookupError(f"deletion vector of {uri} matches no single live file")
                    deleted[path] = sum(1 for keep in mask if not keep)
            self._deleted = deleted
        return self._deleted

    def _location_of(self, path: str) -> str:
        """A live file's full location, decoded (its log path is a URI reference, relative to the
        table's root unless absolute)."""
        if "://" in path:
            return _decoded(path)
        return _decoded(self.table.table_uri.rstrip("/") + "/" + path)

    def _file_rows(self) -> list[tuple[str, int, int]]:
        """(path, size, rows) per live file; rows exclude those deleted by deletion vectors."""
        paths = self.actions.column("path").to_pylist()
        sizes = self.actions.column("size_bytes").to_pylist()
        records = self.actions.column("num_records").to_pylist() if "num_records" in self.actions.column_names \
            else [None] * len(paths)
        deleted = self.deleted_rows()
        out = []
        for p, s, n in zip(paths, sizes, records, strict=True):
            if n is None:
                raise LookupError(f"file {p} has no row count in the log")
            gone = deleted.get(p, 0)
            if gone > n:
                raise LookupError(f"file {p}: more rows deleted ({gone}) than it holds ({n})")
            out.append((p, int(s), int(n) - gone))
        return out

    def unit_keys(self, columns: Sequence[UnitColumn]) -> list[UnitKey]:
        """Each live file's unit key (its partition values, canonical)."""
        values = [canonical_from_arrow(c, self.actions.column(f"partition.{c.name}")) for c in columns]
        return list(zip(*values, strict=True)) if values else [() for _ in range(self.actions.num_rows)]

    def files_by_unit(self, columns: Sequence[UnitColumn]) -> dict[UnitKey, UnitFiles]:
        """Files per unit, when every unit column is a partition column."""
        files = self._file_rows()
        out: dict[UnitKey, UnitFiles] = {}
        for key, (path, size, rows) in zip(self.unit_keys(columns), files, strict=True):
            u = out.setdefault(key, UnitFiles())
            u.rows += rows
            u.lines.append(f"{path}|{size}|{rows}")
        return out

    def all_files(self) -> UnitFiles:
        """All live files as one set (units that are not partitions can be in any file)."""
        u = UnitFiles()
        for path, size, rows in self._file_rows():
            u.rows += rows
            u.lines.append(f"{path}|{size}|{rows}")
        return u

    def column_stats(self, columns: Sequence[UnitColumn], stats: Sequence[str], nulls: Sequence[str]
                     ) -> list[dict[str, Any]] | None:
        """Per file: unit key, rows, min/max of `stats` columns, null counts of `nulls` columns.

        None when a file lacks one of those statistics (the caller then reads rows instead)."""
        names = set(self.actions.column_names)
        need = [f"min.{c}" for c in stats] + [f"max.{c}" for c in stats] + [f"null_count.{c}" for c in nulls]
        if "num_records" not in names or any(n not in names for n in need):
            return None
        cols = {n: self.actions.column(n).to_pylist() for n in need}
        rows = self._file_rows()
        out = []
        for i, key in enumerate(self.unit_keys(columns)):
            rec: dict[str, Any] = {"key": key, "rows": rows[i][2]}
            for c in stats:
                lo, hi = cols[f"min.{c}"][i], cols[f"max.{c}"][i]
                if lo is None or hi is None:
                    return None
                rec[c] = lo if lo == hi else None
            for c in nulls:
                n = cols[f"null_count.{c}"][i]
                if n is None:
                    return None
                rec[f"nulls.{c}"] = int(n)
            out.append(rec)
        return out

    def transaction_version(self, app_id: str) -> int | None:
        return self.table.transaction_version(app_id)


def _decoded(uri: str) -> str:
    """A file location with its percent-escapes decoded and one spelling of a local root."""
    from urllib.parse import unquote

    u = unquote(uri)
    if u.startswith("file:"):  # file:/x, file:///x
        return "file:///" + u[len("file:"):].lstrip("/")
    return u


def rs_uri(location: str) -> str:
    """A table location as delta-rs takes it (Hadoop's `file:/x` and `s3a://` spellings)."""
    uri = location.removeprefix("file:") if location.startswith("file:/") else location
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    return uri


def open_log(location: str, version: int | None = None) -> LogSnapshot | None:
    """The table's log at `version` (latest when None), or None where delta-rs cannot read it."""
    if not log_reads_enabled():
        return None
    try:
        from deltalake import DeltaTable

        return LogSnapshot(DeltaTable(rs_uri(location), version=version), location)
    except Exception as exc:  # noqa: BLE001 - any failure means: plan with Spark instead
        log.debug("delta log of %s not readable with delta-rs: %s", location, exc)
        return None


def is_delta_table(location: str) -> bool | None:
    """True/False when delta-rs can tell, None when it cannot reach the location."""
    if not log_reads_enabled():
        return None
    try:
        from deltalake import DeltaTable

        return bool(DeltaTable.is_deltatable(location))
    except Exception:  # noqa: BLE001
        return None
