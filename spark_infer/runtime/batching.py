"""Micro-batching: length sort, row limit + token budget cuts, order restore, OOM backoff.

The runner takes one Arrow batch worth of inputs, encodes them once, sorts rows by token length so
each micro-batch pads to similar lengths, cuts micro-batches by a row limit and a padded-token
budget, runs them, and puts outputs back in input order. Null inputs give null outputs; a row that
raises gets a null output and its message in the error column; a CUDA OOM halves the micro-batch
size for the rest of the task.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spark_infer.errors import SystemicScoringError
from spark_infer.runtime.metrics import new_counters
from spark_infer.tasks.base import Scored

if TYPE_CHECKING:
    from spark_infer.tasks.base import Task

log = logging.getLogger("spark_infer")


class RowError(RuntimeError):
    """Raised with on_error=fail: names the row that could not be scored."""


class InvalidOutputError(ValueError):
    """A row the model ran on whose output is not a valid value (e.g. of a response format)."""


#: rows of a task that may fail, one after another with none ever scored, before the model is
#: taken for broken (a row error is this input's problem; a model that scores nothing is systemic)
SYSTEMIC_AFTER = 8

#: error texts of accelerator failures that leave the device unusable for the rest of the process
_STICKY = ("device-side assert", "illegal memory access", "cudaErrorLaunchFailure", "CUBLAS_STATUS_",
           "CUDNN_STATUS_", "unspecified launch failure", "misaligned address", "ECC error", "uncorrectable")


def is_sticky_device_error(exc: BaseException | None) -> bool:
    """True for CUDA errors after which the process's device context cannot be used again."""
    if exc is None or is_oom(exc):
        return False
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in _STICKY) or ("CUDA error" in text and "out of memory" not in text)


def plan_micro_batches(lengths: Sequence[int], max_rows: int, token_budget: int | None) -> list[np.ndarray]:
    """Cut rows into micro-batches of indices, shortest first.

    Each micro-batch holds at most `max_rows` rows and, when `token_budget` is set, at most
    `token_budget` padded tokens (rows x longest row). A single row longer than the budget still
    forms a batch of its own, so no row is ever dropped.
    """
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        end = start + 1
        while end < n and end - start < max_rows:
            # sorted ascending: the candidate row is the longest so far
            if token_budget is not None and (end - start + 1) * lengths[order[end]] > token_budget:
                break
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def is_oom(exc: BaseException) -> bool:
    """True for CUDA (or other accelerator) out-of-memory errors."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, RuntimeError | MemoryError) and "out of memory" in str(exc).lower()


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


@dataclass
class Prepared:
    """One batch of inputs, encoded: what `Runner.finish` runs through the model."""

    n: int
    valid: list[int]
    errors: list[str | None]
    encoded: Any
    ok_rows: list[int]
    row_offset: int


class Runner:
    """Scores batches of inputs with one task instance; one Runner per Spark task.

    The micro-batch row limit it lowers after an OOM is kept for the rest of the task (the Runner's
    life), as memory pressure rarely goes away between Arrow batches.
    """

    def __init__(
        self,
        task: Task,
        batch_size: int = 64,
        token_budget: int | None = None,
        on_error: str = "null",
        counters: Counter[str] | None = None,
    ) -> None:
        if on_error not in ("null", "fail"):
            raise ValueError(f"on_error must be 'null' or 'fail', got {on_error!r}")
        self.task = task
        self.batch_size = batch_size
        self.token_budget = token_budget
        self.on_error = on_error
        self.counters = counters if counters is not None else new_counters()
        #: rows this task scored, and rows that failed in predict since the last one that did not
        self.scored = 0
        self.failed_in_a_row = 0

    # -- public -------------------------------------------------------------------------------
    def run(self, inputs: Sequence[Any], row_offset: int = 0) -> tuple[pa.Array, pa.Array]:
        """Score `inputs` (None = null row). Returns (outputs, errors), both in input order.

        row_offset is added to row numbers in error messages (position in the task's input).
        """
        return self.finish(self.prepare(inputs, row_offset))

    def prepare(self, inputs: Sequence[Any], row_offset: int = 0) -> Prepared:
        """The CPU half of `run`: encode one batch of inputs (safe to run in another thread while
        `finish` runs the model on the previous batch: it touches no shared state)."""
        n = len(inputs)
        valid = [i for i, x in enumerate(inputs) if x is not None]
        errors: list[str | None] = [None] * n
        encoded, ok_rows = self._encode([inputs[i] for i in valid], list(valid), errors, row_offset)
        return Prepared(n, valid, errors, encoded, ok_rows, row_offset)

    def finish(self, p: Prepared) -> tuple[pa.Array, pa.Array]:
        """The model half of `run`: micro-batches of a prepared batch, outputs in input order."""
        self.counters["rows"] += p.n
        self.counters["null_rows"] += p.n - len(p.valid)
        pieces: list[pa.Array] = []
        positions: list[np.ndarray] = []  # input rows, in the order their outputs appear in pieces
        encoded, errors = p.encoded, p.errors
        if p.ok_rows:
            lengths = [encoded.budget_length(j) for j in range(len(p.ok_rows))]
            ok_rows_arr = np.asarray(p.ok_rows)
            self.counters["tokens"] += int(sum(encoded.length(j) for j in range(len(p.ok_rows))))
            self.counters["truncated_rows"] += encoded.truncated
            for mb in plan_micro_batches(lengths, self.batch_size, self.token_budget):
                self._run_micro_batch(encoded, mb, ok_rows_arr, lengths, pieces, positions, errors,
                                      p.row_offset)
        out = self._restore(p.n, pieces, positions)
        n_err = sum(e is not None for e in errors)
        self.counters["error_rows"] += n_err
        self.counters["scored_rows"] += len(p.valid) - n_err
        return out, pa.array(errors, type=pa.string())

    # -- internals ------------------------------------------------------------------------------
    def _encode(self, values: list[Any], rows: list[int], errors: list[str | None], row_offset: int):
        """Encode all rows at once; on failure, row by row so one bad row spoils nothing else."""
        if not values:
            return None, []
        try:
            return self.task.encode(values), rows
        except Exception as batch_exc:  # noqa: BLE001
            if len(values) == 1:
                self._row_failed(rows[0], batch_exc, errors, row_offset)
                return None, []
        good_vals, good_rows = [], []
        for v, r in zip(values, rows, strict=True):
            try:
                self.task.encode([v])
            except Exception as exc:  # noqa: BLE001
                self._row_failed(r, exc, errors, row_offset)
                continue
            good_vals.append(v)
            good_rows.append(r)
        if not good_vals:
            return None, []
        return self.task.encode(good_vals), good_rows

    def _run_micro_batch(self, encoded, mb: np.ndarray, ok_rows: np.ndarray, lengths, pieces, positions,
                         errors, row_offset: int) -> None:
        # a work list of index arrays: OOM splits push halves back to the front
        todo: list[np.ndarray] = [mb]
        while todo:
            idx = todo.pop(0)
            if len(idx) > self.batch_size:
                todo[0:0] = [idx[: self.batch_size], idx[self.batch_size:]]
                continue
            try:
                out = self.task.predict(encoded, idx)
            except Exception as exc:  # noqa: BLE001
                if is_sticky_device_error(exc):
                    raise SystemicScoringError(
                        f"task {self.task.name}: the accelerator failed ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); failing the task so Spark "
                        "retries it in a fresh Python worker"
                    ) from exc
                if is_oom(exc):
                    _free_accelerator_memory()
                    self.counters["oom_backoffs"] += 1
                    if len(idx) == 1:
                        self._row_failed(int(ok_rows[idx[0]]), exc, errors, row_offset, oom=True)
                        continue
                    self.batch_size = max(1, min(self.batch_size, len(idx)) // 2)
                    log.warning("event=oom_backoff new_batch_size=%d", self.batch_size)
                    todo[0:0] = [idx[: len(idx) // 2], idx[len(idx) // 2:]]
                    continue
                if len(idx) == 1:
                    self._predict_failed(exc)
                    self._row_failed(int(ok_rows[idx[0]]), exc, errors, row_offset)
                    continue
                # isolate the bad row(s): retry one row at a time
                todo[0:0] = [idx[i: i + 1] for i in range(len(idx))]
                continue
            if isinstance(out, Scored):
                # rows the task scored but could not give a valid value (their output is null)
                for k, msg in enumerate(out.errors):
                    if msg is not None:
                        self.counters["invalid_output_rows"] += 1
                        self._row_failed(int(ok_rows[idx[k]]), InvalidOutputError(msg), errors, row_offset)
                out = out.values
            if len(out) != len(idx):
                raise RuntimeError(f"task {self.task.name} returned {len(out)} outputs for {len(idx)} rows")
            self.scored += len(idx)
            self.failed_in_a_row = 0
            self.counters["micro_batches"] += 1
            self.counters["padded_tokens"] += len(idx) * max(lengths[i] for i in idx)
            pieces.append(out)
            positions.append(ok_rows[idx])

    def _predict_failed(self, exc: BaseException) -> None:
        """One more row failed in predict: when no row of this task ever scored and SYSTEMIC_AFTER
        have failed, the model (not the input) is broken: fail the task instead of writing error rows."""
        self.failed_in_a_row += 1
        if self.scored == 0 and self.failed_in_a_row >= SYSTEMIC_AFTER:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SystemicScoringError(
                f"task {self.task.name}: the first {self.failed_in_a_row} rows of this Spark task all failed to "
                f"score ({type(exc).__name__}: {first}) and none succeeded: the model cannot score (a broken model "
                "folder, device or dependency), so the task fails instead of committing error rows"
            ) from exc

    def _row_failed(self, row: int, exc: BaseException, errors: list[str | None], row_offset: int,
                    oom: bool = False) -> None:
        msg = f"{type(exc).__name__}: {exc}".strip()
        if len(msg) > 1000:
            msg = msg[:997] + "..."
        if self.on_error == "fail":
            raise RowError(f"row {row + row_offset}: {msg}") from exc
        errors[row] = ("OOM even with micro-batch size 1: " if oom else "") + msg

    def _restore(self, n: int, pieces: list[pa.Array], positions: list[np.ndarray]) -> pa.Array:
        out_type = self.task.output_type
        if not pieces:
            return pa.nulls(n, type=out_type)
        # one trailing null slot serves every unscored row
        combined = pa.concat_arrays([*pieces, pa.nulls(1, type=out_type)])
        take = np.full(n, len(combined) - 1, dtype=np.int64)
        pos = np.concatenate(positions)
        take[pos] = np.arange(len(pos), dtype=np.int64)
        return combined.take(pa.array(take))
