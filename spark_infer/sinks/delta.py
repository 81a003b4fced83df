"""Delta Lake output: one verified, idempotent commit per unit or commit group.

`mode("overwrite")` + `replaceWhere` on the units replaces exactly their rows, and Delta's idempotent
write options `txnAppId`/`txnVersion` record the write in the same commit: a second writer of the
same units at the same plan version is skipped by Delta or fails with a concurrency error. Each
commit also carries `userMetadata` naming the run, and the sink checks after the write that the
commit is there, so a write Delta skipped is never counted as committed.

What each unit was scored from is read from the log: the lineage columns' min/max statistics
(`delta.dataSkippingStatsColumns` keeps statistics on exactly those columns), with no scan of rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteDeleteException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
    MetadataChangedException,
    ProtocolChangedException,
)
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from spark_infer.delta_log import is_delta_table, open_log
from spark_infer.errors import ConcurrentRunError, ConfigError
from spark_infer.log import event
from spark_infer.sessions import capabilities
from spark_infer.sinks._claims import ClaimsTable
from spark_infer.sinks._delta_commits import CommitLog
from spark_infer.sinks._unit_files import UnitFilesTable
from spark_infer.sinks.base import Committed, FilesRecord, register_sink
from spark_infer.tables import TableRef
from spark_infer.units import UnitColumn, UnitKey, canonical_exprs, key_from_row

#: lineage columns whose statistics tell what a unit was scored from
STATE_COLUMNS = ("input_state", "input_files", "model_fingerprint")
#: lineage columns a table written by an older version may lack; added when found missing
ADDABLE_COLUMNS = ("input_files", "input_row_state")

#: table properties that keep the output readable by other Delta readers (delta-rs, DuckDB):
#: no deletion vectors, no column mapping, no v2 checkpoints.
READER_FRIENDLY_PROPERTIES = {
    "delta.enableDeletionVectors": "false",
    "delta.appendOnly": "false",
}

#: Delta's optimistic-concurrency conflicts, as Delta's Python classes: importing `delta.exceptions`
#: installs the converter that raises them for classic sessions, `delta.connect` for Spark Connect
_CONFLICT_TYPES: tuple[type[BaseException], ...] = (
    ConcurrentAppendException, ConcurrentDeleteDeleteException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException, DeltaConcurrentModificationException,
    MetadataChangedException, ProtocolChangedException,
)
#: the same conflicts as error conditions (all SQLSTATE 2D521), for clients that carry the server's
#: condition but not Delta's Python class (a Connect client without delta.connect's mapping)
_CONFLICT_CONDITIONS = frozenset({
    "DELTA_CONCURRENT_APPEND", "DELTA_CONCURRENT_DELETE_DELETE", "DELTA_CONCURRENT_DELETE_READ",
    "DELTA_CONCURRENT_TRANSACTION", "DELTA_CONCURRENT_WRITE", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
})


def _raise_typed_conflicts_on_connect() -> None:
    """Have a Spark Connect client raise Delta's conflicts as the classes above (importing
    `delta.connect` registers them), only where a Connect session is used: it pulls in the whole
    Connect client."""
    try:
        import delta.connect.exceptions  # noqa: F401
    except ImportError:  # no Connect client support installed: the conditions still tell
        pass


def is_delta_conflict(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) is a Delta commit conflict, by Delta's
    Python class, else by its error condition, never by the text of a message; or the sink's own
    ConcurrentRunError (Delta skipped our write because another run's came first)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConcurrentRunError, *_CONFLICT_TYPES)):
            return True
        if isinstance(exc, PySparkException) and _condition(exc).split(".", 1)[0] in _CONFLICT_CONDITIONS:
            return True
        exc = exc.__cause__
    return False


def _condition(exc: PySparkException) -> str:
    try:
        return exc.getCondition() or ""
    except Exception:  # noqa: BLE001 - a classic exception asks the JVM, which may be gone
        return ""


def delta_table_there(table: TableRef, spark: SparkSession) -> bool:
    """Whether a Delta table is there: a path asked of delta-rs first (no Spark job). A local probe may
    only add knowledge: a client that cannot see the storage (Databricks Connect, serverless) finds no
    table where the server has one, so "no" is asked of Spark."""
    return bool(table.is_path and is_delta_table(table.location_in(spark))) or table.exists(spark)


RUNS_SCHEMA = (
    "run_id string, job_name string, status string, exit_code int, input string, output string, task string, "
    "model string, model_fingerprint string, config_hash string, input_version long, "
    "output_version_before long, output_version_after long, units_planned int, units_scored int, "
    "units_skipped int, units_failed int, units_deleted int, rows long, error_rows long, tokens long, "
    "durations_json string, error string, started_at string, ended_at string, session_kind string, "
    "staging string, device_kind string, precision string, workers_json string, rows_uncommitted long, "
    "units_done_elsewhere int, model_assumed string, backend string, rows_new long, rows_changed long, "
    "rows_deleted long, rows_kept long"
)


@register_sink
class DeltaOutput:
    """A Delta table (path or catalog name) as an `OutputTable`.

        out = DeltaOutput(spark, "/data/emb", change_data_feed=True)
        out.ensure(schema, unit_columns, layout); out.write_units(df, "`category` = 'books'", "books", 0, run_id)
    """

    format_name = "delta"

    def __init__(self, spark: SparkSession, ref: str, *, change_data_feed: bool = False,
                 runs_table: str | None = None, txn_retention: str = "interval 7 days",
                 stats_columns: Sequence[str] = ()) -> None:
        self.spark = spark
        self.table = TableRef(ref)
        self.ref = self.table.location
        self.change_data_feed = change_data_feed
        self.runs_table = runs_table or ref.rstrip("/") + "_runs"
        self.txn_retention = txn_retention
        self.stats_columns = list(stats_columns)
        self._location: str | None = None
        self._exists = False
        self._commits = CommitLog(self)
        if spark is not None and capabilities(spark).remote:  # None: log reads only (JobSession.log_sink)
            _raise_typed_conflicts_on_connect()

    # -- state ------------------------------------------------------------------------------------
    @property
    def location(self) -> str:
        if self._location is None:
            self._location = self.table.location_in(self.spark)
        return self._location

    def exists(self) -> bool:
        # once there, the output stays for this sink's run (planner, ensure, record): asked once
        self._exists = self._exists or delta_table_there(self.table, self.spark)
        return self._exists

    def _metadata(self) -> tuple[StructType, list[str], dict[str, str]]:
        """Schema, partition columns and properties: from the log where delta-rs reads it (no Spark
        job), else through Spark SQL."""
        snap = open_log(self.location)
        if snap is not None:
            return snap.spark_schema(), snap.partition_columns, snap.properties
        detail = self.table.detail(self.spark)
        return (self.table.read(self.spark).schema, list(detail["partitionColumns"]),
                dict(detail.get("properties") or {}))

    def version(self) -> int:
        snap = open_log(self.location)
        return snap.version if snap is not None else self.table.version(self.spark)

    def committed_units(self, unit_columns: Sequence[UnitColumn]) -> dict[UnitKey, Committed]:
        from_log = self._committed_from_log(unit_columns)
        return from_log if from_log is not None else self._committed_from_rows(unit_columns)

    def _committed_from_log(self, unit_columns: Sequence[UnitColumn]) -> dict[UnitKey, Committed] | None:
        snap = open_log(self.location)
        if snap is None or snap.has_deletion_vectors:
            return None
        per_file = snap.column_stats(unit_columns, STATE_COLUMNS, ("error",))
        if per_file is None:
            return None
        acc: dict[UnitKey, dict[str, Any]] = {}
        for f in per_file:
            u = acc.setdefault(f["key"], {"rows": 0, "errors": 0, **{c: set() for c in STATE_COLUMNS}})
            u["rows"] += f["rows"]
            u["errors"] += f["rows"] - f["nulls.error"]
            for c in STATE_COLUMNS:
                u[c].add(f[c])
        return {k: _committed(u["input_state"], u["model_fingerprint"], u["input_files"], u["rows"], u["errors"])
                for k, u in acc.items()}

    def _committed_from_rows(self, unit_columns: Sequence[UnitColumn]) -> dict[UnitKey, Committed]:
        df = self.table.read(self.spark)
        files = F.col("input_files") if "input_files" in df.columns else F.lit(None).cast("string")
        rows = (
            df.withColumn("input_files", files)
            .selectExpr("*", *canonical_exprs(unit_columns))
            .groupBy(*[f"__k{i}" for i in range(len(unit_columns))])
            .agg(
                *[F.min(c).alias(f"{c}_0") for c in STATE_COLUMNS], *[F.max(c).alias(f"{c}_1") for c in STATE_COLUMNS],
                *[F.count(c).alias(f"{c}_n") for c in STATE_COLUMNS],
                F.count(F.lit(1)).alias("__n"), F.count("error").alias("__errors"),
            )
            .collect()
        )
        out = {}
        for r in rows:
            n = int(r["__n"])
            vals = {c: {r[f"{c}_0"], r[f"{c}_1"]} | ({None} if r[f"{c}_n"] < n else set()) for c in STATE_COLUMNS}
            out[key_from_row(unit_columns, r)] = _committed(vals["input_state"], vals["model_fingerprint"],
                                                            vals["input_files"], n, int(r["__errors"]))
        return out

    def check_compatible(self, schema: StructType, unit_columns: Sequence[UnitColumn],
                         layout: Mapping[str, str]) -> None:
        existing, partitions, props = self._metadata()
        have = {f.name: f.dataType for f in existing.fields}
        want = {f.name: f.dataType for f in schema.fields}
        problems = []
        for name, dtype in want.items():
            if name not in have:
                if name not in ADDABLE_COLUMNS:
                    problems.append(f"column {name!r} ({dtype.simpleString()}) is missing")
            elif have[name] != dtype:
                problems.append(
                    f"column {name!r} is {have[name].simpleString()}, this job writes {dtype.simpleString()}"
                )
        extra = [n for n in have if n not in want]
        if extra:
            problems.append(f"unexpected columns {extra}")
        if list(partitions) != [c.name for c in unit_columns]:
            problems.append(f"partitioned by {partitions}, this job partitions by {[c.name for c in unit_columns]}")
        for key, value in layout.items():
            if key in props and props[key] != value:
                problems.append(f"it was written with {key.removeprefix('spark_infer.')}={props[key]}, "
                                f"this job has {value}")
        if problems:
            raise ConfigError(
                f"output={self.table.ref!r}: existing table does not match this job: " + "; ".join(problems)
                + " (choose another output, or set the job back to how the table was written)"
            )

    # -- writes -----------------------------------------------------------------------------------
    def _properties(self, layout: Mapping[str, str]) -> dict[str, str]:
        props = dict(READER_FRIENDLY_PROPERTIES)
        props["delta.setTransactionRetentionDuration"] = self.txn_retention
        if self.stats_columns:
            props["delta.dataSkippingStatsColumns"] = ",".join(self.stats_columns)
        if self.change_data_feed:
            props["delta.enableChangeDataFeed"] = "true"
        props.update(layout)
        return props

    def ensure(self, schema: StructType, unit_columns: Sequence[UnitColumn], layout: Mapping[str, str]) -> None:
        if self.exists():
            self._upgrade(schema, layout)
            return
        cols = ", ".join(f"`{f.name.replace('`', '``')}` {f.dataType.simpleString()}" for f in schema.fields)
        parts = ", ".join(c.ident for c in unit_columns)
        props = ", ".join(f"'{k}' = '{v}'" for k, v in self._properties(layout).items())
        sql = (f"CREATE TABLE IF NOT EXISTS {self.table.sql_name} ({cols}) USING delta "
               + (f"PARTITIONED BY ({parts}) " if parts else "") + f"TBLPROPERTIES ({props})")
        failure: Exception | None = None
        try:
            self.spark.sql(sql)
        except Exception as exc:  # noqa: BLE001 - raised below unless another run created it
            failure = exc
        # another run creating it now (ours failed, or skipped its folder before its commit): fine once there
        for _ in range(20):
            if self.exists():
                return
            time.sleep(0.5)
        raise failure or RuntimeError(f"the output {self.ref} was not created (no Delta commit appeared)")

    def _upgrade(self, schema: StructType, layout: Mapping[str, str]) -> None:
        """Add lineage columns and properties an older version of spark-infer did not write."""
        existing, _, props = self._metadata()
        have = set(existing.fieldNames())
        missing = [f for f in schema.fields if f.name not in have and f.name in ADDABLE_COLUMNS]
        if missing:
            cols = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in missing)
            self.spark.sql(f"ALTER TABLE {self.table.sql_name} ADD COLUMNS ({cols})")
            event("output_upgraded", output=self.ref, added_columns=",".join(f.name for f in missing))
        want = {k: v for k, v in self._properties(layout).items()
                if k.startswith("spark_infer.") or k == "delta.setTransactionRetentionDuration"}
        new = {k: v for k, v in want.items() if k not in props}
        if new:
            kv = ", ".join(f"'{k}' = '{v}'" for k, v in new.items())
            self.spark.sql(f"ALTER TABLE {self.table.sql_name} SET TBLPROPERTIES ({kv})")

    def app_id(self, units_id: str) -> str:
        """A stable Delta application id per (output table, units): keyed by where the table's files
        are (a catalog table's storage location, normalised), so runs that name one table by its
        catalog name and by its path share ids, and Delta lets only one of them write a plan's units."""
        digest = hashlib.sha256(f"{self.location}\0{units_id}".encode()).hexdigest()[:24]
        return f"spark-infer-{digest}"

    def write_units(self, df: DataFrame, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        app_id = self.app_id(units_id)
        # txnVersion = the version the run planned at + 1: two runs planned at the same version
        # collide on purpose, so only one of them ever writes these units
        marker = json.dumps({"spark_infer_run": run_id, "app": app_id}, separators=(",", ":"))
        # our commit lands after every version seen before the write starts: only the commits since
        # then are searched for it (constant per group, however many groups the run committed)
        since = max(plan_version, self._commits.seen_version)
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .option("replaceWhere", predicate)
            .option("txnAppId", app_id)
            .option("txnVersion", str(plan_version + 1))
            .option("userMetadata", marker)
        )
        try:
            if self.table.is_path:
                writer.save(self.table.location)
            else:
                writer.saveAsTable(self.table.name)
        except Exception:
            # a stop can interrupt the call after Delta committed: the commit counts if it is there
            landed = self._commits.find(marker, since)
            if landed is not None:
                return landed
            raise
        return self._commits.verify(app_id, marker, since, plan_version, units_id, run_id)

    def delete_units(self, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        empty = self.spark.createDataFrame([], self.table.read(self.spark).schema)
        return self.write_units(empty, predicate, "delete:" + units_id, plan_version, run_id)

    def is_conflict(self, exc: BaseException) -> bool:
        return is_delta_conflict(exc)

    def compact(self) -> None:
        self.spark.sql(f"OPTIMIZE {self.table.sql_name}")

    def append_run_record(self, record: dict[str, Any]) -> None:
        ref = TableRef(self.runs_table)
        df = self.spark.createDataFrame([record], RUNS_SCHEMA)
        w = df.write.format("delta").mode("append").option("mergeSchema", "true")
        if not delta_table_there(ref, self.spark):
            w = w.option("delta.enableDeletionVectors", "false")
        if ref.is_path:
            w.save(ref.location)
        else:
            w.saveAsTable(ref.name)

    def claims(self) -> ClaimsTable:  # `ClaimsUnits`: runs that overlap share the units
        """`<output>_claims`: which live run is scoring which units of this output."""
        return ClaimsTable(self.spark, self.table.ref.rstrip("/") + "_claims", is_delta_conflict)

    def rows_at(self, version: int) -> DataFrame:  # `RowsAtVersion`: row-grain plans
        return self.table.read(self.spark, version)

    def commits_since(self, version: int, run_id: str) -> tuple[int, bool]:
        return self._commits.since(version, run_id)

    # -- the unit-files table (`RecordsUnitFiles`: an accelerator of plans, beside the output) -------
    @property
    def unit_files_table(self) -> str:
        """`<output>_unit_files`: files states of the input found to hold what units were scored from."""
        return self.table.ref.rstrip("/") + "_unit_files"

    def files_records(self) -> list[FilesRecord] | None:
        return UnitFilesTable(self.spark, self.unit_files_table).read()

    def record_files(self, records: Sequence[FilesRecord], run_id: str) -> bool:
        return UnitFilesTable(self.spark, self.unit_files_table).write(records, run_id)


def _committed(states: set[str | None], fps: set[str | None], files: set[str | None], rows: int,
               errors: int) -> Committed:
    def one(values: set[str | None]) -> str | None:
        return next(iter(values)) if len(values) == 1 else None

    return Committed(state=one(states), fingerprint=one(fps), rows=rows, files=one(files), error_rows=errors)
