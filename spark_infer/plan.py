"""Plan: which units need scoring, compared with what the output holds, and how they are grouped.

Pure decisions over states read elsewhere (`job/planner.py`, from the input's log and the sink):
`decide` splits the input's units into pending (with a reason), done, kept-with-an-old-model
and orphaned; `make_groups` packs pending units into commit groups. Nothing here touches Spark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from spark_infer.inputs import InputUnit
from spark_infer.sinks.base import Committed
from spark_infer.units import UnitColumn, UnitKey, label

#: why a unit is pending
NEW, CHANGED, MODEL_CHANGED, ERRORS = "new", "changed", "model_changed", "errors"


@dataclass
class Plan:
    """What a run will do. `pending` holds (unit, reason); `orphaned` output units gone from the input."""

    unit_columns: tuple[UnitColumn, ...]
    bucketed: bool
    input_version: int
    pending: list[tuple[InputUnit, str]] = field(default_factory=list)
    done: list[InputUnit] = field(default_factory=list)
    stale_model: list[InputUnit] = field(default_factory=list)  # model changed, kept by on_model_change=new_only
    orphaned: list[tuple[UnitKey, Committed]] = field(default_factory=list)
    #: orphaned units this run deletes (on_orphan=delete) or keeps
    delete_orphans: bool = True
    #: the largest share of the output's units a run deletes as orphans without `allow_mass_delete`
    max_orphan_share: float = 0.5
    allow_mass_delete: bool = False

    @property
    def pending_rows(self) -> int:
        return sum(u.rows for u, _ in self.pending)

    @property
    def orphaned_rows(self) -> int:
        """Rows the output holds for orphaned units (what `on_orphan: delete` deletes)."""
        return sum(c.rows for _, c in self.orphaned)

    @property
    def input_units(self) -> int:
        return len(self.pending) + len(self.done) + len(self.stale_model)

    @property
    def output_units(self) -> int:
        """Units the output holds: the orphaned ones and every input unit it has rows for (all but new)."""
        held = sum(1 for _, r in self.pending if r != NEW) + len(self.done) + len(self.stale_model)
        return held + len(self.orphaned)

    def mass_delete_refusal(self) -> str | None:
        """Why this plan's orphan deletion needs `allow_mass_delete`, or None: an input with no units at
        all (truncated, mis-pointed, mid-rewrite) never empties the output, and no run deletes more than
        `max_orphan_share` of the output's units without the flag."""
        if not (self.delete_orphans and self.orphaned) or self.allow_mass_delete:
            return None
        n, total, rows = len(self.orphaned), self.output_units, self.orphaned_rows
        share = n / total
        what = f"would delete {rows} output rows of {n} of the output's {total} units ({share:.0%})"
        if self.input_units == 0:
            why = "the input has no units at all (truncated, mis-pointed or being rewritten?)"
        elif share > self.max_orphan_share:
            why = (f"more than max_orphan_share={self.max_orphan_share:g} of the output's units are gone from "
                   "the input")
        else:
            return None
        return (f"refusing to delete orphaned units: this run {what}: {why}; nothing was written. Check the "
                "input; to delete them rerun with --allow-mass-delete (commit.allow_mass_delete: true), "
                "or keep them with --on-orphan keep")

    def label(self, key: UnitKey) -> str:
        return label(self.unit_columns, key)

    def counts(self) -> dict[str, int]:
        reasons = [r for _, r in self.pending]
        return {
            "units_total": len(self.pending) + len(self.done) + len(self.stale_model),
            "units_pending": len(self.pending),
            "units_new": reasons.count(NEW),
            "units_changed": reasons.count(CHANGED),
            "units_model_changed": reasons.count(MODEL_CHANGED),
            "units_with_errors": reasons.count(ERRORS),
            "units_done": len(self.done),
            "units_kept_old_model": len(self.stale_model),
            "units_orphaned": len(self.orphaned),
            "rows_pending": self.pending_rows,
            "rows_orphaned": self.orphaned_rows,
        }


def _sort_key(key: UnitKey) -> tuple[Any, ...]:
    return tuple((v is None, str(v)) for v in key)


def decide(
    inputs: Sequence[InputUnit],
    committed: dict[UnitKey, Committed],
    fingerprint: str,
    on_model_change: str = "rescore",
    rescore_errors: bool = False,
) -> tuple[list[tuple[InputUnit, str]], list[InputUnit], list[InputUnit], list[tuple[UnitKey, Committed]]]:
    """Split input units into (pending with reason, done, kept-with-old-model, orphaned)."""
    pending: list[tuple[InputUnit, str]] = []
    done: list[InputUnit] = []
    stale: list[InputUnit] = []
    for u in sorted(inputs, key=lambda u: _sort_key(u.key)):
        c = committed.get(u.key)
        if c is None:
            pending.append((u, NEW))
        elif c.state is None or u.state != c.state or c.rows != u.rows:
            pending.append((u, CHANGED))
        elif c.fingerprint != fingerprint:
            if on_model_change == "new_only":
                stale.append(u)
            else:
                pending.append((u, MODEL_CHANGED))
        elif rescore_errors and c.error_rows:
            pending.append((u, ERRORS))
        else:
            done.append(u)
    present = {u.key for u in inputs}
    orphaned = sorted(((k, c) for k, c in committed.items() if k not in present), key=lambda kc: _sort_key(kc[0]))
    return pending, done, stale, orphaned


def make_groups(pending: Sequence[tuple[InputUnit, str]], group_rows: int, group_units: int
                ) -> list[list[tuple[InputUnit, str]]]:
    """Pack pending units, in plan order, into commit groups of at most `group_rows` rows and
    `group_units` units; a unit of `group_rows` rows or more is a group of its own."""
    groups: list[list[tuple[InputUnit, str]]] = []
    current: list[tuple[InputUnit, str]] = []
    rows = 0
    for item in pending:
        n = item[0].rows
        if current and (rows + n > group_rows or len(current) >= group_units):
            groups.append(current)
            current, rows = [], 0
        current.append(item)
        rows += n
    if current:
        groups.append(current)
    return groups


def bucket_expr(id_col: str, buckets: int):
    """The id bucket of a row: pmod(xxhash64(id), buckets)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.col(id_col)), F.lit(buckets)).cast("int")
