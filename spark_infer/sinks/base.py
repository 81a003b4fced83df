"""The output seam: where scored units are committed, and what is already committed there.

The job talks to an `OutputTable` only. A unit (or a commit group of units) is written in one atomic
commit that replaces exactly those units' rows, so a rerun or a concurrent run never duplicates a
row, and `committed_units` tells the planner what each unit's rows were scored from. Adding an
output format = one module in `spark_infer/sinks/` with a class decorated `@register_sink`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from spark_infer.units import UnitColumn, UnitKey

_SINKS: dict[str, type] = {}
_discovered = False


def discover() -> None:
    """Import every sink module of this package once (each registers itself)."""
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules([os.path.dirname(__file__)]):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"{__package__}.{mod.name}")
        _discovered = True


def register_sink(cls: type) -> type:
    """Class decorator: make an output format available by its `format_name`."""
    _SINKS[cls.format_name] = cls
    return cls


def registered_sinks() -> dict[str, type]:
    discover()
    return dict(_SINKS)


@dataclass(frozen=True)
class Committed:
    """What the output holds for one unit: the content state, files state and model fingerprint its
    rows were scored from (None where its rows disagree or did not record one), its rows, and how
    many of them are error rows."""

    state: str | None
    fingerprint: str | None
    rows: int
    files: str | None = None
    error_rows: int = 0


@dataclass(frozen=True)
class FilesRecord:
    """A fact about the input kept beside the output: when the unit `unit` (its `units.key_json`) had
    the files state `files`, it held `rows` rows with the content state `state` (hashing the columns
    `hashed`, a JSON list). Files are immutable and named once, so the fact stays true."""

    unit: str
    files: str
    rows: int
    state: str
    hashed: str


@runtime_checkable
class RecordsUnitFiles(Protocol):
    """What an output may offer besides `OutputTable` (optional: an accelerator, never needed for a
    correct plan): a record of the files states whose content states were found equal to the ones a
    unit's rows were scored from (a compaction of the input), so the next run need not hash them."""

    def files_records(self) -> list[FilesRecord] | None:
        """Every record kept, or None when there are none or they cannot be read (plan as without)."""

    def record_files(self, records: Sequence[FilesRecord], run_id: str) -> bool:
        """Keep `records` (replacing the units' earlier ones) without touching the output's rows;
        False when it could not (a failure here never fails a run)."""


@runtime_checkable
class RowsAtVersion(Protocol):
    """What an output offers for row-grain plans (`commit.incremental: row`): its rows as they were at
    one of its versions, so that a run's plan, scoring and commit all diff against the same rows.
    Without it, changed units are scored whole."""

    def rows_at(self, version: int) -> DataFrame:
        """The table's rows at `version` (all columns)."""


@runtime_checkable
class ClaimsUnits(Protocol):
    """What an output may offer so that runs overlapping on it share its units (`spark_infer.job.claims`)
    instead of scoring them twice; without it overlapping runs are still safe (one of two commits of
    the same units fails), only not cheap."""

    def claims(self) -> Any:
        """The output's claims table: `live()` -> the claims in force, `change(fn)` -> apply `fn`
        atomically (`spark_infer.sinks._claims.ClaimsTable`)."""

    def commits_since(self, version: int, run_id: str) -> tuple[int, bool]:
        """The output's newest version, and whether a commit after `version` was not run `run_id`'s."""


@runtime_checkable
class OutputTable(Protocol):
    """An output table as the job sees it."""

    #: how the table is named in logs, plans and run records
    ref: str

    def exists(self) -> bool:
        """True when the table exists (it is created by `ensure`)."""

    def version(self) -> int:
        """A number that grows with every commit (the table's version)."""

    def committed_units(self, unit_columns: Sequence[UnitColumn]) -> dict[UnitKey, Committed]:
        """For each unit the output holds (keys canonical, see `spark_infer.units`), what it was scored from."""

    def check_compatible(self, schema: StructType, unit_columns: Sequence[UnitColumn],
                         layout: Mapping[str, str]) -> None:
        """ConfigError naming the problem when the existing table cannot take this job's rows, or was
        laid out differently (`layout`: the job's unit columns, id buckets, ...)."""

    def ensure(self, schema: StructType, unit_columns: Sequence[UnitColumn], layout: Mapping[str, str]) -> None:
        """Create the table (empty, final schema, `layout` recorded) unless it exists; safe against a
        concurrent create. Lineage columns an older version did not write are added."""

    def write_units(self, df: DataFrame, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        """Replace the rows matching `predicate` (SQL over the unit columns) with `df`, in one commit,
        and return the version it committed.

        `units_id` names the unit(s) stably across runs; with `plan_version` (the table's version when
        the run planned) it makes the write idempotent: a second writer of the same units planned at
        the same version is skipped or fails. A write that did not commit raises: ConcurrentRunError
        when another run committed those units, RuntimeError otherwise; it never passes silently.
        """

    def delete_units(self, predicate: str, units_id: str, plan_version: int, run_id: str) -> int:
        """Remove the rows matching `predicate` in one commit (as `write_units`, with no rows)."""

    def is_conflict(self, exc: BaseException) -> bool:
        """True when `exc` means another writer committed to the same units concurrently."""

    def compact(self) -> None:
        """Rewrite small files into larger ones without changing rows (after a run, when asked)."""

    def append_run_record(self, record: dict[str, Any]) -> None:
        """Keep one run's record beside the output (for a Delta output: a `<output>_runs` table)."""


def open_sink(format_name: str, spark: SparkSession, ref: str, **options: Any) -> OutputTable:
    """The output table `ref` in `format_name` (registered sinks: `registered_sinks()`)."""
    from spark_infer.errors import ConfigError

    sinks = registered_sinks()
    try:
        cls = sinks[format_name]
    except KeyError:
        raise ConfigError(
            f"config field 'output_format'={format_name!r}: unknown format; known: {', '.join(sorted(sinks))}"
        ) from None
    return cls(spark, ref, **options)
