"""Runs that overlap on one output share its units instead of colliding.

Before a commit group is scored, the run claims its units in the output's claims table
(`spark_infer.sinks.ClaimsUnits`): a group whose units another live run holds is left to that run
(deferred), never scored twice. Claims are taken a few groups ahead in one table change, renewed by a
heartbeat, dropped as groups end and all released when the run ends; a killed run's claims lapse
after `commit.claim_ttl_s` (at once for a process of this host that is gone). When the free groups
are done, the run waits for the runs holding its deferred units (`on_claimed: wait`, the default)
and scores what they did not commit, or ends with exit 6 naming them (`on_claimed: exit`).

Claims make overlap cheap; they are not what makes it safe: every commit still names the output
version its run planned at, so two commits of one unit from two runs cannot both land even when a
claim lapsed under a run that was still working.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from spark_infer.log import event
from spark_infer.sinks._claims import Claim, acquire, this_host

if TYPE_CHECKING:
    from spark_infer.sinks._claims import ClaimsTable


class RunClaims:
    """This run's claims on the units of its commit groups (`groups`: each group's unit ids, in the
    order the run scores them). Thread-safe: groups are claimed from the scheduler's threads."""

    def __init__(self, table: ClaimsTable, run_id: str, job_name: str, groups: Sequence[Sequence[str]],
                 ttl_s: float, lookahead: int, stop: threading.Event) -> None:
        self.table, self.run_id = table, run_id
        self.me = Claim("", run_id, job_name, this_host(), os.getpid(), 0)
        self.groups = [list(g) for g in groups]
        self.ttl_ms = int(ttl_s * 1000)
        self.lookahead = max(1, lookahead)
        self.stop = stop
        self.granted: set[int] = set()
        self.deferred: set[int] = set()
        #: who held a deferred group's units when it was deferred (unit -> claim)
        self.holders: dict[str, Claim] = {}
        self._release: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="spark-infer-claims", daemon=True)
        self._heartbeat.start()

    def take(self, i: int) -> bool:
        """Claim group `i` (and the next few untried groups in the same table change); False when
        another live run holds any of its units (the group is deferred)."""
        with self._lock:
            if i not in self.granted and i not in self.deferred:
                batch = [j for j in range(i, len(self.groups)) if j not in self.granted and j not in self.deferred]
                batch = batch[:self.lookahead]
                self._change([self.groups[j] for j in batch], batch)
            return i in self.granted

    def done(self, i: int) -> None:
        """Group `i` is over (committed, failed or abandoned): its claims go with the next change."""
        with self._lock:
            self._release.update(self.groups[i])

    def _change(self, groups: list[list[str]], indices: list[int]) -> None:
        """One table change (lock held): release ended groups, renew the rest, claim `groups`."""
        release = set(self._release)
        after = self.table.change(acquire(self.me, groups, release, self.ttl_ms))
        self._release -= release
        mine = {c.unit for c in after if c.run_id == self.run_id}
        others = {c.unit: c for c in after if c.run_id != self.run_id}
        for j, g in zip(indices, groups, strict=True):
            if set(g) <= mine:
                self.granted.add(j)
            else:
                self.deferred.add(j)
                self.holders.update({u: others[u] for u in g if u in others})
        if indices and any(j in self.deferred for j in indices):
            held = [j for j in indices if j in self.deferred]
            first = self.holders.get(next(u for u in self.groups[held[0]] if u in self.holders), None)
            event("units_claimed_elsewhere", groups=len(held), by=first.run_id if first else "",
                  host=first.host if first else "")

    def _beat(self) -> None:
        """Renew this run's claims every third of their time to live."""
        while not self._closed.wait(max(1.0, self.ttl_ms / 3000)):
            if self.stop.is_set():
                return
            try:
                with self._lock:
                    self._change([], [])
            except Exception as exc:  # noqa: BLE001 - a missed renewal is retried; commits stay safe
                event("warning", what="claims_not_renewed", error=f"{type(exc).__name__}: {exc}"[:300])

    def close(self) -> None:
        """Release every claim of this run (the run is ending)."""
        self._closed.set()
        with self._lock:
            if not self.granted:
                return  # it never held a unit
            mine = {u for g in self.groups for u in g}
            try:
                self.table.change(acquire(self.me, [], mine, self.ttl_ms))
            except Exception as exc:  # noqa: BLE001 - they lapse after the ttl anyway
                event("warning", what="claims_not_released", error=f"{type(exc).__name__}: {exc}"[:300])

    def deferred_units(self) -> list[str]:
        return [u for j in sorted(self.deferred) for u in self.groups[j]]


def wait_for_holders(table: ClaimsTable, units: Sequence[str], run_id: str, stop: threading.Event,
                     poll_s: float) -> None:
    """Return once no other live run holds any of `units` (they committed them, released them, or
    their claims lapsed), or a stop was requested."""
    wanted = set(units)
    t0 = time.monotonic()
    while not stop.is_set():
        held = [c for c in table.live() if c.unit in wanted and c.run_id != run_id]
        if not held:
            event("claims_waited", units=len(wanted), waited_s=round(time.monotonic() - t0, 1))
            return
        stop.wait(poll_s)
