"""Where a group's scored rows wait between scoring and their commit: the model runs once per row, so
the rows must not be recomputed by the check or the commit.

    staging = staging_for(cfg, caps, spark, run_id)
    rows, release = staging.keep(scored, "g3")     # rows: a DataFrame over the kept rows
    ...; release()                                 # after the commit, or on failure

- `PersistStaging`: `persist(DISK_ONLY)` on the executors (classic and Connect sessions). Lost with an
  executor: Spark then recomputes, which scores those rows a second time.
- `TableStaging`: a staging Delta table per group, dropped after its commit. Durable (a retried task
  never rescores a committed group's rows), and what serverless compute needs: it has no `persist`.
  The table is a managed table beside a catalog-named output (same catalog and schema, so the same
  permissions and storage), or in the session's current schema for an output given by path. Its
  columns are named positionally (`c0`, `c1`, ...): any name the input allows (spaces, commas,
  column mapping) survives the round trip.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from spark_infer.log import event
from spark_infer.tables import TableRef, quote_name, split_name

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_infer.config import JobConfig
    from spark_infer.sessions import SessionCapabilities

#: staging tables are named `<prefix><UTC yyyymmddHHMM>_<run id>_<n>_<group>`: the prefix says what they
#: are to anyone listing tables, the time when one left by a killed run may be dropped
STAGING_PREFIX = "spark_infer_staging_"
#: a staging table older than this was left by a run that died (a group's rows wait minutes, not days)
STAGING_EXPIRY = dt.timedelta(hours=48)


class Staging(Protocol):
    kind: str

    def keep(self, scored: DataFrame, name: str) -> tuple[DataFrame, Callable[[], None]]:
        """`scored` computed once and kept; returns the rows to read and how to let them go."""


class PersistStaging:
    kind = "persist"

    def keep(self, scored: DataFrame, name: str) -> tuple[DataFrame, Callable[[], None]]:
        from pyspark import StorageLevel

        kept = scored.persist(StorageLevel.DISK_ONLY)

        def release() -> None:
            try:
                kept.unpersist()
            except Exception:  # noqa: BLE001 - a stop may interrupt it; the cache goes with the session
                pass

        return kept, release


class TableStaging:
    kind = "table"

    def __init__(self, spark: SparkSession, output: str, run_id: str, schema: str | None = None) -> None:
        self.spark = spark
        self.run_id = run_id
        ref = TableRef(output)
        # `schema` if given; else beside a catalog-named output (its catalog and schema, so its
        # permissions and storage); else the session's current schema
        if schema:
            self.namespace = quote_name(schema)
        else:
            parts = split_name(ref.ref)[:-1] if not ref.is_path else []
            self.namespace = ".".join("`" + p.replace("`", "``") + "`" for p in parts)
        self._counter = itertools.count()
        self._lock = threading.Lock()
        self._swept = False

    def table_name(self, name: str) -> str:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M")
        table = f"`{STAGING_PREFIX}{stamp}_{self.run_id}_{next(self._counter)}_{_safe(name)}`"
        return f"{self.namespace}.{table}" if self.namespace else table

    def drop_expired(self, now: dt.datetime | None = None) -> list[str]:
        """Drop staging tables that runs killed before their cleanup left (older than STAGING_EXPIRY)."""
        now = now or dt.datetime.now(dt.UTC)
        where = f" IN {self.namespace}" if self.namespace else ""
        dropped = []
        for row in self.spark.sql(f"SHOW TABLES{where} LIKE '{STAGING_PREFIX}*'").collect():
            name = row["tableName"]
            stamp = name[len(STAGING_PREFIX):].split("_", 1)[0]
            try:
                created = dt.datetime.strptime(stamp, "%Y%m%d%H%M").replace(tzinfo=dt.UTC)
            except ValueError:
                continue  # not a name this module made
            if now - created > STAGING_EXPIRY and not row["isTemporary"]:
                table = f"{self.namespace}.`{name}`" if self.namespace else f"`{name}`"
                self.spark.sql(f"DROP TABLE IF EXISTS {table}")
                dropped.append(name)
        if dropped:
            event("staging_tables_dropped", tables=len(dropped), first=dropped[0], reason="expired")
        return dropped

    def keep(self, scored: DataFrame, name: str) -> tuple[DataFrame, Callable[[], None]]:
        with self._lock:
            if not self._swept:
                self._swept = True
                try:
                    self.drop_expired()
                except Exception as exc:  # noqa: BLE001 - housekeeping never fails a run
                    event("staging_sweep_failed", error=type(exc).__name__)
        table = self.table_name(name)
        names = scored.columns
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                try:
                    self.spark.sql(f"DROP TABLE IF EXISTS {table}")
                except Exception as exc:  # noqa: BLE001 - a stop may interrupt it: say what is left
                    event("staging_table_left", table=table, error=type(exc).__name__)

        try:
            (scored.toDF(*[f"c{i}" for i in range(len(names))]).write.format("delta")
             .option("delta.enableDeletionVectors", "false")
             .saveAsTable(table))
        except BaseException:
            release()  # a half-written staging table (a stop, a failed task) is dropped too
            raise
        return self.spark.read.table(table).toDF(*names), release


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)[:40]


def staging_for(cfg: JobConfig, caps: SessionCapabilities, spark: SparkSession, run_id: str) -> Staging:
    """The staging the config asks for; `auto` persists where the session can, else a staging table."""
    choice = cfg.commit.staging
    if choice == "persist" and not caps.can_persist:
        from spark_infer.errors import ConfigError

        raise ConfigError(f"config field 'staging': persist is not available on a {caps.kind} session "
                          "(use staging: table, or auto)")
    if choice == "table" or (choice == "auto" and not caps.can_persist):
        return TableStaging(spark, cfg.output.table, run_id, cfg.commit.staging_schema)
    return PersistStaging()
