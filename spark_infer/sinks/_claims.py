"""The Delta output's claims table (`<output>_claims`): which live run is scoring which units.

Runs that overlap on one output (a scheduler's retry while the first attempt still runs, two
clusters given the same job, a backfill beside the nightly run) claim units here before scoring them,
so two runs never score the same unit and neither throws work away on a commit conflict. The table
lives beside the output (no service, no shared disk): it works across clusters and over Spark Connect.

Every change is a read-modify-write of the whole (small) table, made exclusive by Delta's own
optimistic concurrency: each write carries `txnAppId`/`txnVersion` = the sequence number read plus
one, so of two runs changing the table from the same state, Delta commits one and skips or rejects the
other, which reads again and retries. A claim expires `ttl_s` after the holder last renewed it (a
killed run blocks its units that long at most); a claim by a process of this host that is no longer
running is void at once (a rerun on the same machine after a kill does not wait).
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import delta.exceptions  # noqa: F401 - Delta's conflicts raised as its Python classes (classic sessions)

from spark_infer.delta_log import open_log
from spark_infer.tables import TableRef

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SCHEMA = "unit string, run_id string, job_name string, host string, pid long, expires_ms long, seq long, op string"
_COLUMNS = ("unit", "run_id", "job_name", "host", "pid", "expires_ms", "seq", "op")
#: Delta's idempotent-write application id of every change (its txnVersion is the sequence number)
APP_ID = "spark-infer-claims"
#: how often one change is tried again after losing to another run's change
ATTEMPTS = 30


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """Run `run_id` (process `pid` on `host`) holds `unit` (a `units.key_json`) until `expires_ms`."""

    unit: str
    run_id: str
    job_name: str
    host: str
    pid: int
    expires_ms: int

    def live(self, now_ms: int) -> bool:
        if now_ms >= self.expires_ms:
            return False
        # a process of this host that has ended holds nothing (a rerun after a kill need not wait)
        return not (self.host == this_host() and not pid_alive(self.pid))

    def describe(self, now_ms: int) -> str:
        return (f"run {self.run_id} (job {self.job_name}, host {self.host}, pid {self.pid}; its claim lapses in "
                f"{max(0, (self.expires_ms - now_ms) // 1000)} s unless renewed)")


class ClaimsTable:
    """A small Delta table (path or catalog name) of `Claim`s, changed only through `change`;
    `is_conflict` tells Delta's commit conflicts (another run's change came first) from failures."""

    def __init__(self, spark: SparkSession, ref: str, is_conflict: Callable[[BaseException], bool]) -> None:
        self.spark = spark
        self.table = TableRef(ref)
        self.is_conflict = is_conflict
        #: Delta commits this object made (each change that changed something is one)
        self.commits = 0
        #: where the table's log is read with delta-rs: a path at once, a catalog table's storage
        #: location once the catalog named it (None: not known yet; "": the driver cannot read it)
        self._log_at: str | None = self.table.location if self.table.is_path else None

    def _rows(self) -> list[dict] | None:
        """The table's rows: from its log and files with delta-rs where the driver reads them (a
        path, or a catalog table's location, asked of the catalog once), else through Spark; None
        when there is no table yet."""
        if self._log_at is None:  # a catalog name: where is it? ("no such table": none yet)
            try:
                self._log_at = self.table.location_in(self.spark)
            except Exception as exc:
                if not_found(exc):
                    return None
                raise
        snap = open_log(self._log_at) if self._log_at else None
        if snap is not None:
            cols = snap.table.to_pyarrow_table(columns=list(_COLUMNS)).to_pydict()
            return [dict(zip(_COLUMNS, r, strict=True)) for r in zip(*(cols[c] for c in _COLUMNS), strict=True)]
        if self.table.is_path and not self.table.exists(self.spark):
            return None
        self._log_at = self._log_at if self.table.is_path else ""  # not readable from here: Spark from now on
        try:
            return [r.asDict() for r in self.table.read(self.spark).select(*_COLUMNS).collect()]
        except Exception as exc:
            if not self.table.is_path and not_found(exc):  # dropped since
                self._log_at = None
                return None
            raise

    def _read(self) -> tuple[list[Claim], int, set[str]] | None:
        """Every claim, the table's sequence number and the changes that wrote its rows; None when
        there is no table yet."""
        rows = self._rows()
        if rows is None:
            return None
        claims, seq, ops = [], 0, set()
        for r in rows:
            seq = max(seq, int(r["seq"] or 0))
            ops.add(r["op"])
            if r["unit"]:  # the sequence row (no unit) keeps the number when no unit is held
                claims.append(Claim(r["unit"], r["run_id"], r["job_name"] or "", r["host"] or "", int(r["pid"] or 0),
                                    int(r["expires_ms"] or 0)))
        return claims, seq, ops

    def live(self) -> list[Claim]:
        """The claims in force now."""
        state = self._read()
        now = _now_ms()
        return [c for c in (state[0] if state else []) if c.live(now)]

    def change(self, fn: Callable[[list[Claim], int], list[Claim]]) -> list[Claim]:
        """Apply `fn(live claims, now_ms) -> new claims` to the table atomically (retried on a
        concurrent change: `fn` must be a pure function of what it is given); the claims after it."""
        for attempt in range(ATTEMPTS):
            state = self._read()
            now = _now_ms()
            claims, seq, _ = state if state is not None else ([], -1, set())
            live = [c for c in claims if c.live(now)]
            new = fn(live, now)
            if state is not None and sorted(new, key=_order) == sorted(claims, key=_order):
                return new  # nothing to change (and nothing lapsed to drop): no commit
            op = uuid.uuid4().hex
            try:
                self._write(new, seq + 1, op)
            except Exception as exc:
                if not self.is_conflict(exc):
                    raise
                time.sleep(random.uniform(0.05, 0.2) * (1 + attempt % 5))
                continue
            after = self._read()
            if after is not None and op in after[2]:
                self.commits += 1
                return [c for c in after[0] if c.live(_now_ms())]
            # Delta skipped the write (another run's change with the same sequence number came first),
            # or a later change already replaced ours: `fn` again, on what is there now
            time.sleep(random.uniform(0.02, 0.1))
        raise RuntimeError(f"could not change the claims table {self.table.location}: {ATTEMPTS} attempts lost "
                           "to other runs' changes")

    def _write(self, claims: Sequence[Claim], seq: int, op: str) -> None:
        rows = [(None, None, None, None, None, None, seq, op)]  # the sequence row
        rows += [(c.unit, c.run_id, c.job_name, c.host, c.pid, c.expires_ms, seq, op) for c in claims]
        w = (self.spark.createDataFrame(rows, SCHEMA).coalesce(1).write.format("delta").mode("overwrite")
             .option("txnAppId", APP_ID).option("txnVersion", str(seq))
             .option("userMetadata", f'{{"spark_infer_claims":"{op}"}}'))
        if seq == 0:  # the table's creation: readable by delta-rs and DuckDB too
            w = w.option("delta.enableDeletionVectors", "false")
        if self.table.is_path:
            w.save(self.table.location)
        else:
            w.saveAsTable(self.table.name)


#: error conditions of reading or describing a table that is not there
_NOT_FOUND = frozenset({"TABLE_OR_VIEW_NOT_FOUND", "DELTA_TABLE_NOT_FOUND", "DELTA_MISSING_DELTA_TABLE",
                        "SCHEMA_NOT_FOUND", "DELTA_PATH_DOES_NOT_EXIST", "PATH_NOT_FOUND"})


def not_found(exc: BaseException) -> bool:
    """Whether `exc` says the table (or its schema) does not exist, by its error condition."""
    from pyspark.errors import PySparkException

    if not isinstance(exc, PySparkException):
        return False
    try:
        condition = exc.getCondition() or ""
    except Exception:  # noqa: BLE001 - a classic exception asks the JVM, which may be gone
        return False
    return condition.split(".", 1)[0] in _NOT_FOUND


def _order(c: Claim) -> tuple[str, str, int]:
    return (c.unit, c.run_id, c.expires_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


def acquire(mine: Claim, groups: Sequence[Sequence[str]], release: Iterable[str], ttl_ms: int
            ) -> Callable[[list[Claim], int], list[Claim]]:
    """A change: drop `release` from the claims of run `mine.run_id`, renew the rest, and claim each
    group of `groups` whose units no other live run holds (a group is taken whole or not at all)."""
    gone = set(release)

    def fn(live: list[Claim], now: int) -> list[Claim]:
        others = [c for c in live if c.run_id != mine.run_id]
        held = {c.unit for c in others}
        expires = now + ttl_ms
        kept = {c.unit for c in live if c.run_id == mine.run_id and c.unit not in gone}
        for g in groups:
            if not held.intersection(g):
                kept.update(g)
        return others + [replace(mine, unit=u, expires_ms=expires) for u in sorted(kept)]

    return fn

