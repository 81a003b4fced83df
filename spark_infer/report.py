"""Report: the plan as text, progress lines while running, and the run summary at the end."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from spark_infer.log import event, kv, render, render_message
from spark_infer.redact import redact, redact_value

if TYPE_CHECKING:
    from spark_infer.plan import Plan



@dataclass
class RunSummary:
    """What a run did: returned by `run_job`, written as JSON and as a row beside the output.

        summary = run_job({"input": "/data/in", "output": "/data/out"})
        summary.exit_code, summary.status, summary.units_committed, summary.counters["error_rows"]
    """

    run_id: str
    job_name: str
    status: str = "running"
    exit_code: int | None = None
    input: str = ""
    output: str = ""
    task: str = ""
    model: str = ""
    model_fingerprint: str = ""
    #: what the task assumed about the model at plan time (e.g. a folder without modules.json)
    model_assumed: list[str] = field(default_factory=list)
    #: where the run scores and in which precision ("cuda", "float16"): both are in the fingerprint
    device_kind: str = ""
    precision: str = ""
    #: what the transformer ran on (torch, onnx, openvino; spark_infer.backends): fp32 on any backend is
    #: fingerprinted alike, so this is where a reader tells such runs apart
    backend: str = ""
    config_hash: str = ""
    input_version: int | None = None
    output_version_before: int | None = None
    output_version_after: int | None = None
    plan: dict[str, int] = field(default_factory=dict)
    units_committed: list[str] = field(default_factory=list)
    units_failed: dict[str, str] = field(default_factory=dict)
    units_abandoned: list[str] = field(default_factory=list)
    units_deleted: list[str] = field(default_factory=list)
    rows_scored: int = 0
    #: rows the workers scored that no commit holds (a failed check, a conflict, a stop)
    rows_uncommitted: int = 0
    #: units this run left to an overlapping run that held them, which that run committed
    units_done_elsewhere: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    #: "load|pid|device" and "task|attempt|pid|gpu addresses|device|start_ns|end_ns" records
    placement: list[str] = field(default_factory=list)
    durations_s: dict[str, float] = field(default_factory=dict)
    #: Spark jobs each stage ran (where the session can count them: classic sessions)
    spark_jobs: dict[str, int] = field(default_factory=dict)
    #: the session's kind (classic, connect, serverless), where scored rows waited (persist, table),
    #: and the confs the run would have set but the session does not allow
    session_kind: str = ""
    staging: str = ""
    confs_not_set: list[str] = field(default_factory=list)
    #: each worker that scored: host, pid, device, compute capability, precision and its tasks
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: "pid|cuda:N" -> the most bytes that Python worker allocated on that GPU (torch's peak)
    gpu_memory_peak: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    started_at: str = ""
    ended_at: str = ""

    def to_json(self) -> str:
        return json.dumps(redact_value(asdict(self)), indent=2, default=str)

    def record(self) -> dict[str, Any]:
        """The flat row appended to the runs table."""
        p = self.plan
        c = self.counters
        return {
            "run_id": self.run_id, "job_name": self.job_name, "status": self.status,
            "exit_code": self.exit_code, "input": redact(self.input), "output": redact(self.output),
            "task": self.task, "model": redact(self.model), "model_fingerprint": self.model_fingerprint,
            "config_hash": self.config_hash, "input_version": self.input_version,
            "output_version_before": self.output_version_before, "output_version_after": self.output_version_after,
            "units_planned": p.get("units_pending", 0), "units_scored": len(self.units_committed),
            "units_skipped": p.get("units_done", 0) + p.get("units_kept_old_model", 0),
            "units_failed": len(self.units_failed), "units_deleted": len(self.units_deleted), "rows": self.rows_scored,
            # what the plan found at row grain (new/changed rows are scored, deleted dropped, kept untouched)
            **{k: p.get(k, 0) for k in ("rows_new", "rows_changed", "rows_deleted", "rows_kept")},
            "rows_uncommitted": self.rows_uncommitted, "units_done_elsewhere": len(self.units_done_elsewhere),
            "error_rows": c.get("error_rows", 0), "tokens": c.get("tokens", 0),
            "durations_json": json.dumps(self.durations_s, sort_keys=True),
            "error": redact(self.error) if self.error else None,
            "started_at": self.started_at, "ended_at": self.ended_at,
            # where and how rows were scored: what a reader needs to tell runs of one table apart
            "session_kind": self.session_kind, "staging": self.staging, "device_kind": self.device_kind,
            "precision": self.precision, "workers_json": json.dumps(self.workers, sort_keys=True, default=str),
            "model_assumed": "; ".join(self.model_assumed) or None,
            "backend": self.backend or None,
        }


class Progress:
    """Units done/total, rows, rows/s over the last minute and ETA.

    A line per unit commit, and a heartbeat line every `interval_s` from a daemon thread (rows come
    from `rows_now()`, e.g. the worker accumulator, so long units still show movement). On an
    interactive terminal a tqdm bar is drawn as well.
    """

    def __init__(self, units_total: int, rows_total: int, interval_s: float = 30.0, rows_now=None,
                 bar: bool | None = None, tasks_now=None) -> None:
        self.units_total = units_total
        self.rows_total = rows_total
        self.units_done = 0
        self.rows_done = 0
        self.start = time.monotonic()
        self.interval_s = interval_s
        self._rows_now = rows_now
        self._tasks_now = tasks_now
        self._history: deque[tuple[float, int]] = deque([(self.start, 0)])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._bar = None
        if bar is None:
            bar = sys.stderr.isatty()
        if bar and rows_total:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=rows_total, unit="row", desc="scoring", file=sys.stderr, leave=True)
            except ImportError:  # pragma: no cover - tqdm comes with transformers
                self._bar = None

    def __enter__(self) -> Progress:
        if self.interval_s > 0:
            self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._bar is not None:
            self._bar.close()

    def _rows(self) -> int:
        rows = self.rows_done
        if self._rows_now is not None:
            try:
                rows = max(rows, min(int(self._rows_now()), self.rows_total))
            except Exception:  # noqa: BLE001 - progress must never break a run
                pass
        return rows

    def _rates(self, rows: int) -> tuple[float, float]:
        now = time.monotonic()
        self._history.append((now, rows))
        while len(self._history) > 2 and now - self._history[0][0] > 60:
            self._history.popleft()
        t0, r0 = self._history[0]
        rate = (rows - r0) / (now - t0) if now > t0 else 0.0
        eta = (self.rows_total - rows) / rate if rate > 0 else -1.0
        return rate, eta

    def _fields(self, rows: int) -> dict[str, Any]:
        rate, eta = self._rates(rows)
        fields: dict[str, Any] = {
            "units": f"{self.units_done}/{self.units_total}", "rows_done": f"{rows}/{self.rows_total}",
            "rows_per_s_1m": rate, "eta_s": eta,
            "pct": 100.0 * rows / self.rows_total if self.rows_total else 100.0,
        }
        if self._tasks_now is not None:  # Spark Connect: the server's task progress of groups in flight
            try:
                done, total = self._tasks_now()
                fields["tasks_in_flight"] = f"{done}/{total}"
            except Exception:  # noqa: BLE001 - progress must never break a run
                pass
        return fields

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                rows = self._rows()
                event("progress", **self._fields(rows))
                self._update_bar(rows)

    def _update_bar(self, rows: int) -> None:
        if self._bar is not None and rows > self._bar.n:
            self._bar.update(rows - self._bar.n)

    def group_done(self, labels: list[str], rows: int, seconds: float) -> None:
        """A commit group landed: one line naming its units (the first few), its rows and the totals."""
        with self._lock:
            self.units_done += len(labels)
            self.rows_done += rows
            shown = ";".join(labels[:3]) + (f";+{len(labels) - 3} more" if len(labels) > 3 else "")
            event("group_committed", group=shown, group_units=len(labels), rows=rows, group_s=seconds,
                  **self._fields(self.rows_done))
            self._update_bar(self.rows_done)


def unit_label(plan: Plan, key: tuple) -> str:
    """A unit as the plan table shows it, `category=books`: every column name and value through
    `render` (a ',' quoted too, so `a=x,b=y` is always two columns)."""
    return ",".join(f"{render(c.name, also=',')}={render(v, also=',')}"
                    for c, v in zip(plan.unit_columns, key, strict=True))


def format_plan(plan: Plan, input_ref: str, id_col: str, max_lines: int | None = None) -> str:
    """The plan as printed by `--dry-run` (and before a run): one line per unit, then the counts.

    Every value from the tables or the config goes through `render`, so a hostile partition value
    can neither break a unit's line nor print a line of its own. With `max_lines`, units beyond it
    are summarised in one line per kind (a backfill of thousands of partitions should not print
    thousands of lines before it starts).
    """
    units = (render(f"buckets of {id_col}") if plan.bucketed
             else ",".join(render(c.name, also=",") for c in plan.unit_columns))
    lines = [f"plan: input={render(input_ref)} version={render(plan.input_version)} units={units}"]

    def line(kind: str, why: str, key: tuple, rows: int) -> str:  # `why`: fixed text or rendered
        return f"  {kind:<8} {why:<13} {unit_label(plan, key):<40} rows={render(rows)}"

    def pending(u, reason: str) -> str:
        text = line("pending", render(reason), u.key, u.rows)
        rc = plan.rows.get(u.key)
        if rc is None:
            return text + f" score={render(u.rows)}"
        return text + (f" score={rc.score} (new={rc.new} changed={rc.changed} errors={rc.errors} model={rc.model})"
                       f" delete={rc.deleted} keep={rc.kept}")

    rows: list[tuple[str, str]] = []
    rows += [("pending", pending(u, reason)) for u, reason in plan.pending]
    rows += [("done", line("done", "", u.key, u.rows)) for u in plan.done]
    rows += [("kept", line("kept", "old model", u.key, u.rows)) for u in plan.stale_model]
    action = "delete" if plan.delete_orphans else "keep"
    rows += [("orphaned", line("orphaned", action + " (gone)", k, c.rows)) for k, c in plan.orphaned]
    shown = rows if max_lines is None else rows[:max_lines]
    lines += [text for _, text in shown]
    hidden: dict[str, int] = {}
    for kind, _ in rows[len(shown):]:
        hidden[kind] = hidden.get(kind, 0) + 1
    lines += [f"  ... {n} more {kind}" for kind, n in hidden.items()]
    lines.append("plan: " + kv(**plan.counts()))
    refusal = plan.mass_delete_refusal()
    if refusal:
        lines.append("plan: " + render_message(refusal))  # fixed text and numbers, one line
    return "\n".join(lines)
