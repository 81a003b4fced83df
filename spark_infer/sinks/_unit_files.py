"""The Delta output's unit-files table (`<output>_unit_files`): which input files states hold the
content a unit's output rows were scored from.

A unit whose input files changed (a compaction, `OPTIMIZE`, a rewrite of the same rows) is hashed by
the planner; when its content state is the one its output rows record, the run records the new files
state here, in one small commit that rewrites no output row, so the next run finds the unit unchanged
from the logs alone. One row per unit (a write replaces the units' earlier rows); an accelerator only:
missing, unreadable or half-written, the plan is what it would be without it (the units are hashed).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

from pyspark.sql import SparkSession

from spark_infer.delta_log import is_delta_table, open_log
from spark_infer.log import event
from spark_infer.sinks.base import FilesRecord
from spark_infer.tables import TableRef

log = logging.getLogger("spark_infer")

SCHEMA = ("unit string, files string, rows long, state string, hashed string, run_id string, "
          "recorded_at timestamp")
_COLUMNS = ("unit", "files", "rows", "state", "hashed")


class UnitFilesTable:
    """A small Delta table (path or catalog name) of `FilesRecord`s."""

    def __init__(self, spark: SparkSession, ref: str) -> None:
        self.spark = spark
        self.table = TableRef(ref)

    def read(self) -> list[FilesRecord] | None:
        """The records: from the log and files with delta-rs (no Spark job) where it reads them, else
        through Spark; None when there is no such table or it cannot be read."""
        try:
            snap = open_log(self.table.location) if self.table.is_path else None
            if snap is not None:
                cols = snap.table.to_pyarrow_table(columns=list(_COLUMNS)).to_pydict()
                rows = list(zip(*(cols[c] for c in _COLUMNS), strict=True))
            elif self.table.exists(self.spark):
                rows = [tuple(r) for r in self.table.read(self.spark).select(*_COLUMNS).collect()]
            else:
                return None
            return [FilesRecord(u, f, int(n), s, h) for u, f, n, s, h in rows
                    if None not in (u, f, n, s, h)]
        except Exception as exc:  # noqa: BLE001 - an accelerator: plan as if there were none
            log.debug("unit files table %s not readable: %s", self.table.location, exc)
            return None

    def write(self, records: Sequence[FilesRecord], run_id: str) -> bool:
        """Replace the records of the units of `records` with them, in one commit. A failure (a
        concurrent run's write, a storage error) is logged and returns False: the next run hashes the
        units again."""
        if not records:
            return True
        by_unit = {r.unit: r for r in records}  # one row per unit
        now = dt.datetime.now(dt.UTC)
        try:
            df = self.spark.createDataFrame(
                [(r.unit, r.files, r.rows, r.state, r.hashed, run_id, now) for r in by_unit.values()], SCHEMA)
            units = ", ".join(f"CAST(X'{u.encode('utf-8').hex().upper()}' AS STRING)" for u in sorted(by_unit))
            w = df.write.format("delta")
            if (self.table.is_path and is_delta_table(self.table.location)) or self.table.exists(self.spark):
                w = w.mode("overwrite").option("replaceWhere", f"unit IN ({units})")
            else:
                w = w.mode("append").option("delta.enableDeletionVectors", "false")
            if self.table.is_path:
                w.save(self.table.location)
            else:
                w.saveAsTable(self.table.name)
        except Exception as exc:  # noqa: BLE001 - an accelerator never fails the run
            event("unit_files_not_recorded", log_level=logging.WARNING, table=self.table.location,
                  units=len(by_unit), error=f"{type(exc).__name__}: {exc}"[:300])
            return False
        event("unit_files_recorded", table=self.table.location, units=len(by_unit))
        return True
