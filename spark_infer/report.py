"""Report: progress lines while running and the run summary at the end."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

log = logging.getLogger("spark_infer")


def kv(**fields: Any) -> str:
    """key=value log line; values with spaces quoted."""
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.2f}"
        s = str(v)
        if " " in s or "=" in s or not s:
            s = json.dumps(s)
        parts.append(f"{k}={s}")
    return " ".join(parts)


def emit(event: str, **fields: Any) -> None:
    print(kv(event=event, **fields), file=sys.stderr, flush=True)


@dataclass
class RunSummary:
    """What a run did: the record printed at the end (and written as JSON when asked)."""

    run_id: str
    job_name: str
    status: str = "running"
    exit_code: int | None = None
    input: str = ""
    output: str = ""
    task: str = ""
    model: str = ""
    model_fingerprint: str = ""
    config_hash: str = ""
    input_version: int | None = None
    output_version_before: int | None = None
    output_version_after: int | None = None
    plan: dict[str, int] = field(default_factory=dict)
    units_committed: list[str] = field(default_factory=list)
    units_failed: dict[str, str] = field(default_factory=dict)
    rows_scored: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: "load|pid|device" and "task|attempt|pid|gpu addresses|device|start_ns|end_ns" records
    placement: list[str] = field(default_factory=list)
    durations_s: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)


class Progress:
    """Units done/total, rows, rows/s and ETA, one plain line per unit commit."""

    def __init__(self, units_total: int, rows_total: int) -> None:
        self.units_total = units_total
        self.rows_total = rows_total
        self.units_done = 0
        self.rows_done = 0
        self.start = time.monotonic()

    def unit_done(self, label: str, rows: int, seconds: float, status: str = "committed") -> None:
        self.units_done += 1
        self.rows_done += rows
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.rows_done / elapsed
        eta = (self.rows_total - self.rows_done) / rate if rate > 0 else 0.0
        emit(
            "unit_" + status, unit=label, units=f"{self.units_done}/{self.units_total}",
            rows=rows, unit_s=seconds, rows_done=f"{self.rows_done}/{self.rows_total}",
            rows_per_s=rate, eta_s=eta,
            pct=100.0 * self.units_done / self.units_total if self.units_total else 100.0,
        )
