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
                max_error_rate: float) -> tuple[list[CheckedUnit], dict[str, str]]:
    """(units that pass, {unit label: why it failed}) for one group's staged rows."""
    ok: list[CheckedUnit] = []
    failed: dict[str, str] = {}
    for s in stats:
        unit = units.get(s.key)
        lab = label(unit_cols, s.key)
        if unit is None or s.rows != unit.rows:
            failed[lab] = (f"read {s.rows} rows, the plan expected {unit.rows if unit else 0}: the input changed "
                           "under its pinned version")
        elif s.errors > max_error_rate * s.rows:
            failed[lab] = (f"{s.errors} of {s.rows} rows failed to score ({s.errors / s.rows:.1%} > max_error_rate "
                           f"{max_error_rate:.1%}); nothing of this unit was committed. See the rows' "
                           "errors with on_error=fail, or raise max_error_rate")
        else:
            ok.append(CheckedUnit(unit, s, content_state(s.rows, s.hash_sum)))
    seen = {s.key for s in stats}
    for key, unit in units.items():
        if key not in seen:
            failed[label(unit_cols, key)] = f"read 0 rows, the plan expected {unit.rows}"
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
