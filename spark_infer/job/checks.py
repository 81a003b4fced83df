"""The checks a unit's staged rows pass before they are committed: every planned row was scored
(no more, no fewer: the input cannot change under its pinned version unnoticed), and no more than
`max_error_rate` of them are error rows, and every worker scored on the device kind and in the
precision the model fingerprint says. A unit that passes gets its content state; one that fails is
reported with the reason and never committed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from spark_infer.errors import DeviceMismatchError
from spark_infer.inputs import InputUnit, content_state
from spark_infer.job.groups import UnitStats
from spark_infer.plan import RowCounts
from spark_infer.runtime import worker_records
from spark_infer.units import UnitColumn, UnitKey, label

if TYPE_CHECKING:
    from spark_infer.runtime.spec import ModelSpec


@dataclass(frozen=True)
class CheckedUnit:
    """A unit whose staged rows may be committed, with the content state they were scored from."""

    unit: InputUnit
    stats: UnitStats
    state: str


def check_units(stats: Sequence[UnitStats], units: Mapping[UnitKey, InputUnit], unit_cols: Sequence[UnitColumn],
                max_error_rate: float, row_grain: Mapping[UnitKey, RowCounts] | None = None
                ) -> tuple[list[CheckedUnit], dict[str, str]]:
    """(units that pass, {unit label: why it failed}) for one group's staged rows.

    `row_grain` holds the diffs of row-grain units (part of their rows scored): those keep the
    content state the plan found for the whole unit, and their error rate is the one the unit will
    have once committed (scored error rows and kept ones, over all its rows); a unit scored whole
    gets its staged rows' state and rate."""
    row_grain = row_grain or {}
    expected = {k: rc.score for k, rc in row_grain.items()}
    ok: list[CheckedUnit] = []
    failed: dict[str, str] = {}
    for s in stats:
        unit = units.get(s.key)
        lab = label(unit_cols, s.key)
        want = 0 if unit is None else expected.get(s.key, unit.rows)
        rc = row_grain.get(s.key)
        errors, rows = (s.errors, s.rows) if rc is None or unit is None else (s.errors + rc.kept_errors, unit.rows)
        if unit is None or s.rows != want:
            failed[lab] = (f"read {s.rows} rows, the plan expected {want}: the input changed "
                           "under its pinned version")
        elif errors > max_error_rate * rows:
            failed[lab] = (f"{errors} of {rows} rows failed to score ({errors / rows:.1%} > max_error_rate "
                           f"{max_error_rate:.1%}); nothing of this unit was committed. See the rows' "
                           "errors with on_error=fail, or raise max_error_rate")
        elif s.key in expected:
            assert unit.state is not None  # a row-grain unit was hashed when planned
            ok.append(CheckedUnit(unit, s, unit.state))
        else:
            ok.append(CheckedUnit(unit, s, content_state(s.rows, s.hash_sum)))
    seen = {s.key for s in stats}
    for key, unit in units.items():
        if key in seen:
            continue
        if expected.get(key, unit.rows) == 0:  # nothing to score: its kept rows and deletes are committed
            assert unit.state is not None
            ok.append(CheckedUnit(unit, UnitStats(key, (), 0, 0, 0), unit.state))
        else:
            failed[label(unit_cols, key)] = f"read 0 rows, the plan expected {expected.get(key, unit.rows)}"
    return ok, failed


def check_workers(counters: Mapping[str, int], spec: ModelSpec) -> None:
    """Raise DeviceMismatchError (the group is not committed) when a worker reports scoring on another
    device kind or in another precision than `spec`'s fingerprint says (workers refuse to, so this is
    the driver's own check of what they report)."""
    if spec.device_kind == "any":
        return
    for w in worker_records(dict(counters)):
        kind = "cuda" if w["device"].startswith("cuda") else "cpu"
        if (kind, w["precision"]) != (spec.device_kind, spec.dtype):
            raise DeviceMismatchError(
                f"host {w['host']} (Python worker {w['pid']}) scored on {w['device']} in {w['precision']}, but the "
                f"run's model fingerprint says {spec.device_kind} in {spec.dtype}: the group is not committed"
            )
