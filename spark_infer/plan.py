"""Plan: which units need scoring, compared with what the output holds, and how they are grouped.

Pure decisions over states read elsewhere (`job/planner.py`, from the input's log and the sink):
`decide` splits the input's units into pending (with a reason), done, kept-with-an-old-model
and orphaned; `make_groups` packs pending units into commit groups. Nothing here touches Spark.

Two grains (`commit.incremental`): a unit's state says "done" at metadata cost; a pending unit the
output already holds rows for is, at row grain, planned row by row (`RowCounts`, from
`spark_infer.job.rowdiff`): its new and changed rows are scored, its deleted rows dropped, the rest
kept. A new unit, or any unit at unit grain, is scored whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spark_infer.inputs import InputUnit
from spark_infer.sinks.base import Committed
from spark_infer.units import UnitColumn, UnitKey, label

#: why a unit is pending
NEW, CHANGED, MODEL_CHANGED, ERRORS = "new", "changed", "model_changed", "errors"


@dataclass(frozen=True)
class RowCounts:
    """What a row-grain unit's diff found: rows to score (new ids, changed content, error rows under
    `rescore_errors`, rows of another model under `on_model_change: rescore`), to delete (ids gone
    from the input) and to keep."""

    new: int = 0
    changed: int = 0
    errors: int = 0
    model: int = 0
    deleted: int = 0
    kept: int = 0
    #: kept rows that are error rows (they count toward the unit's error rate after the commit)
    kept_errors: int = 0

    @property
    def score(self) -> int:
        return self.new + self.changed + self.errors + self.model


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
    #: pending units planned at row grain: what their diff found (every other pending unit is scored whole)
    rows: dict[UnitKey, RowCounts] = field(default_factory=dict)
    #: rows the output held when the run planned (the mass-delete guard's denominator)
    output_rows: int = 0

    def score_rows(self, unit: InputUnit) -> int:
        """Rows of `unit` this plan scores: its diff's, at row grain, else all of them."""
        rc = self.rows.get(unit.key)
        return unit.rows if rc is None else rc.score

    @property
    def pending_rows(self) -> int:
        return sum(self.score_rows(u) for u, _ in self.pending)

    @property
    def deleted_rows(self) -> int:
        """Output rows this plan removes from units the input still has (ids gone from it)."""
        return sum(rc.deleted for rc in self.rows.values())

    def row_counts(self) -> dict[str, int]:
        """rows_new, rows_changed (content, errors, model), rows_deleted, rows_kept over the whole plan."""
        new = changed = kept = 0
        for u, why in self.pending:
            rc = self.rows.get(u.key)
            if rc is not None:
                new, changed, kept = new + rc.new, changed + rc.changed + rc.errors + rc.model, kept + rc.kept
            elif why == NEW:
                new += u.rows
            else:
                changed += u.rows
        kept += sum(u.rows for u in (*self.done, *self.stale_model))
        deleted = self.deleted_rows + (self.orphaned_rows if self.delete_orphans else 0)
        return {"rows_new": new, "rows_changed": changed, "rows_deleted": deleted, "rows_kept": kept}

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
        """Why this plan's deletions need `allow_mass_delete`, or None: an input with no units at all
        (truncated, mis-pointed, mid-rewrite) never empties the output, and no run deletes more than
        `max_orphan_share` of the output's units, or of its rows, without the flag."""
        if self.allow_mass_delete:
            return None
        return self._orphans_refusal() or self._rows_refusal()

    def _orphans_refusal(self) -> str | None:
        if not (self.delete_orphans and self.orphaned):
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

    def _rows_refusal(self) -> str | None:
        gone = self.deleted_rows + (self.orphaned_rows if self.delete_orphans else 0)
        if not self.output_rows or gone / self.output_rows <= self.max_orphan_share:
            return None
        return (f"refusing to delete output rows: this run would delete {gone} of the output's {self.output_rows} "
                f"rows ({gone / self.output_rows:.0%}: ids gone from the input), more than max_orphan_share="
                f"{self.max_orphan_share:g}; nothing was written. Check the input; to delete them rerun with "
                "--allow-mass-delete (commit.allow_mass_delete: true)")

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
            "units_row_grain": len(self.rows),
            "rows_pending": self.pending_rows,
            "rows_orphaned": self.orphaned_rows,
            **self.row_counts(),
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


def make_groups(pending: Sequence[tuple[InputUnit, str]], group_rows: int, group_units: int,
                rows_of: Callable[[InputUnit], int] | None = None) -> list[list[tuple[InputUnit, str]]]:
    """Pack pending units, in plan order, into commit groups of at most `group_rows` rows (to score:
    `rows_of`, default all of a unit's) and `group_units` units; a unit of `group_rows` rows or more
    is a group of its own."""
    groups: list[list[tuple[InputUnit, str]]] = []
    current: list[tuple[InputUnit, str]] = []
    rows = 0
    for item in pending:
        n = item[0].rows if rows_of is None else rows_of(item[0])
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
