"""Commit groups in flight: up to `concurrent_groups` at once (hiding Spark's per-job latency, planning
and commit, behind another group's scoring), each still its own atomic commit. One group's failure
never loses the others; a stop starts no new group and abandons those in flight; a concurrent writer
ends the run (exit 4) once the groups in flight have settled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import (
    ThreadPoolExecutor,
    TimeoutError,  # noqa: A004 - same as builtin since 3.11
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from spark_infer.errors import ConcurrentRunError, describe
from spark_infer.log import event
from spark_infer.report import Progress
from spark_infer.runtime import PLACEMENT_PREFIX, WORKER_RECORD, worker_records

if TYPE_CHECKING:
    from spark_infer.inputs import InputUnit
    from spark_infer.job.claims import RunClaims
    from spark_infer.job.session import JobSession
    from spark_infer.plan import Plan
    from spark_infer.report import RunSummary


@dataclass
class GroupResult:
    """What one group did: units committed (in plan order), units failed with why, worker counters."""

    committed: list[InputUnit] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: what ended a group after its rows were scored (a failed check, a conflict, a stop): its
    #: counters still count, its rows count as scored but not committed
    error: BaseException | None = None


class GroupScheduler:
    """Runs `work(units)` for every group and keeps the run's summary as groups land."""

    def __init__(self, plan: Plan, summary: RunSummary, session: JobSession, stop: threading.Event,
                 concurrent: int, progress_interval_s: float) -> None:
        self.plan, self.summary, self.session, self.stop = plan, summary, session, stop
        self.concurrent, self.progress_interval_s = max(1, concurrent), progress_interval_s
        self._lock = threading.Lock()
        self._conflicts: list[BaseException] = []
        self._counters: dict[str, int] = {}

    def run(self, groups: Sequence[Sequence[InputUnit]], work: Callable[[Sequence[InputUnit]], GroupResult],
            metrics: Any, claims: RunClaims | None = None) -> None:
        """Every group through `work`; raises ConcurrentRunError when another run wrote our units.

        With `claims`, a group is scored only once this run holds its units; a group another live run
        holds is skipped (`claims.deferred`)."""
        caps = self.session.caps
        tasks_now = caps.watch_tasks() if metrics is None else None
        rows_now = (lambda: (metrics.value or {}).get("rows", 0)) if metrics is not None else None
        p = self.plan
        with (
            Progress(len(p.pending), p.pending_rows, interval_s=self.progress_interval_s, rows_now=rows_now,
                     tasks_now=tasks_now) as progress,
            ThreadPoolExecutor(max_workers=self.concurrent, thread_name_prefix="group") as pool,
        ):
            # a later round (after waiting for another run's claims) goes on counting from the earlier ones
            progress.units_done, progress.rows_done = len(self.summary.units_committed), self.summary.rows_scored
            futures = [pool.submit(self._one, i, g, work, progress, claims) for i, g in enumerate(groups)]
            try:
                for f in futures:
                    # a bounded wait keeps the main thread responsive to SIGTERM
                    while not f.done():
                        try:
                            f.result(timeout=0.5)
                        except TimeoutError:
                            continue
            finally:
                caps.stop_watching()
                add_counters(self.summary, self._counters)  # failed and stopped runs count their work too
        if self._conflicts:
            raise ConcurrentRunError(
                f"another run wrote to {self.session.sink.ref} concurrently; committed units are kept, rerun to "
                "finish") from self._conflicts[0]

    def _one(self, i: int, group: Sequence[InputUnit], work: Callable[[Sequence[InputUnit]], GroupResult],
             progress: Progress, claims: RunClaims | None) -> None:
        t0 = time.monotonic()
        labels = [self.plan.label(u.key) for u in group]
        try:
            with self.session.stage("score_commit"):
                if self._conflicts or self.stop.is_set():
                    return  # a concurrent writer or a stop request: start no new work
                if claims is not None and not claims.take(i):
                    return  # another live run is scoring these units
                try:
                    result = work(group)
                finally:
                    if claims is not None:
                        claims.done(i)
        except Exception as exc:  # noqa: BLE001 - one group's failure must not lose the others
            self._failed(exc, labels)
            return
        with self._lock:
            for k, v in result.counters.items():
                self._counters[k] = self._counters.get(k, 0) + v
            committed_rows = sum(self.plan.score_rows(u) for u in result.committed)
            self.summary.rows_uncommitted += max(0, result.counters.get("rows", 0) - committed_rows)
        if result.error is not None:
            self._failed(result.error, labels)
            return
        with self._lock:
            for lab, why in result.failed.items():
                self.summary.units_failed[lab] = why
                event("unit_failed", unit=lab, error=why[:300])
            for u in result.committed:
                self.summary.units_committed.append(self.plan.label(u.key))
                self.summary.rows_scored += self.plan.score_rows(u)
            if result.committed:
                progress.group_done([self.plan.label(u.key) for u in result.committed],
                                    sum(self.plan.score_rows(u) for u in result.committed), time.monotonic() - t0)

    def _failed(self, exc: BaseException, labels: list[str]) -> None:
        if self.session.sink.is_conflict(exc):
            self._conflicts.append(exc)
            return
        with self._lock:
            if self.stop.is_set():
                self.summary.units_abandoned += labels
                event("group_abandoned", units=len(labels), first=labels[0], reason="stop_requested")
                return
            msg = describe(exc)
            for lab in labels:
                self.summary.units_failed[lab] = msg
        event("group_failed", units=len(labels), first=labels[0], error=msg[:300])


def add_counters(summary: RunSummary, counters: dict[str, int]) -> None:
    """Worker counters into the summary: row/token/error counts, where each task ran, each worker's
    device and precision, and the peak GPU memory of each (worker process, device)."""
    summary.counters = {k: v for k, v in counters.items() if not k.startswith(PLACEMENT_PREFIX)}
    own = (f"{PLACEMENT_PREFIX}gpu_mem|", f"{PLACEMENT_PREFIX}{WORKER_RECORD}|")
    summary.placement = sorted(k[len(PLACEMENT_PREFIX):] for k in counters
                               if k.startswith(PLACEMENT_PREFIX) and not k.startswith(own))
    summary.workers = worker_records(counters)
    for k, v in counters.items():
        if k.startswith(f"{PLACEMENT_PREFIX}gpu_mem|"):
            _, _, pid, device, _ = k.split("|")
            key = f"{pid}|{device}"
            summary.gpu_memory_peak[key] = max(summary.gpu_memory_peak.get(key, 0), v)
