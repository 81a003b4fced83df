"""Finding a Delta sink's own commits after each write: constant work per commit group.

The output's log is opened once with delta-rs and brought up to date incrementally; a write lands
after every version seen before it started, so only the commits since then are searched for its
marker (reopening the log per group read every file's entry, and searching back to the plan's version
read the whole run's history: quadratic over a run of many groups). Where delta-rs cannot read the
log, Spark SQL's `DESCRIBE HISTORY` answers.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from spark_infer.delta_log import open_log
from spark_infer.errors import ConcurrentRunError


def marker_of(user_metadata: str | None) -> dict[str, Any]:
    """The run marker a spark-infer commit carries in its userMetadata ({} for any other commit)."""
    try:
        value = json.loads(user_metadata or "")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class CommitLog:
    """The commits of one output, as its sink's writes need them (thread-safe: groups commit
    concurrently)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink  # the DeltaOutput: its location, session, SQL name
        self._table: Any = None
        self._lock = threading.Lock()
        #: the newest output version seen: a write started after it commits after it
        self.seen_version = -1

    def _log(self) -> Any:
        """The delta-rs table at its latest version, or None where delta-rs cannot read it (lock held)."""
        if self._table is None:
            snap = open_log(self.sink.location)
            if snap is None:
                return None
            self._table = snap.table
        else:
            self._table.update_incremental()
        self.seen_version = max(self.seen_version, int(self._table.version()))
        return self._table

    def _history(self) -> list[Any]:
        return self.sink.spark.sql(f"DESCRIBE HISTORY {self.sink.table.sql_name} LIMIT 200").collect()

    def find(self, marker: str, since: int) -> int | None:
        """The version of the commit carrying `marker` after version `since`, or None."""
        try:
            with self._lock:
                log = self._log()
                if log is not None:
                    history = log.history(max(1, int(log.version()) - since))
                    return next((int(h["version"]) for h in history if h.get("userMetadata") == marker), None)
            return next((int(r["version"]) for r in self._history() if r["userMetadata"] == marker), None)
        except Exception:  # noqa: BLE001 - cannot tell: the caller's error stands
            return None

    def since(self, version: int, run_id: str) -> tuple[int, bool]:
        """The newest version, and whether a commit after `version` is not one of run `run_id`'s
        (another run's, or a user's OPTIMIZE or DELETE)."""
        with self._lock:
            log = self._log()
            if log is not None:
                newest = int(log.version())
                if newest <= version:
                    return newest, False
                history = log.history(newest - version)
                return newest, any(int(h["version"]) > version and marker_of(h.get("userMetadata")).get(
                    "spark_infer_run") != run_id for h in history)
        rows = self._history()
        newest = max((int(r["version"]) for r in rows), default=version)
        return newest, any(int(r["version"]) > version and marker_of(r["userMetadata"]).get("spark_infer_run") != run_id
                           for r in rows)

    def verify(self, app_id: str, marker: str, since: int, plan_version: int, units_id: str, run_id: str) -> int:
        """The version our commit landed at; raises when Delta skipped the write."""
        landed = self.find(marker, since)
        if landed is not None:
            return landed
        with self._lock:
            log = self._log()
            # a transaction version of 0 is a commit too (a run that planned before the table existed)
            txn = log.transaction_version(app_id) if log is not None else None
            others = (txn is not None and txn >= plan_version + 1) if log is not None else None
        if others is None:
            # no log reader here: another run's commit of these very units since the plan (its marker
            # names the same app id); this run's own earlier groups are not "another run"
            others = any(int(r["version"]) > plan_version and marker_of(r["userMetadata"]).get("app") == app_id
                         and marker_of(r["userMetadata"]).get("spark_infer_run") != run_id for r in self._history())
        ref = self.sink.ref
        if others:
            raise ConcurrentRunError(f"another run committed units {units_id} of {ref} first; rerun to finish")
        raise RuntimeError(f"the write of units {units_id} to {ref} did not commit (no commit carries it)")
