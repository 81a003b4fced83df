"""The output seam: where scored units are committed, and what is already committed there.

The job talks to an `OutputTable` only. A unit (or a group of units) is written in one atomic commit
that replaces exactly those units' rows, so a rerun or a concurrent run never duplicates a row, and
`committed_units` tells the planner what each unit's rows were scored from. Adding an output format
= one module in `spark_infer/sinks/` with a class decorated `@register_sink`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

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
    """What the output holds for one unit: the input state and model fingerprint its rows were
    scored from (None when the unit's rows disagree, which spark-infer never leaves), and its rows."""

    state: str | None
    fingerprint: str | None
    rows: int


@runtime_checkable
class OutputTable(Protocol):
    """An output table as the job sees it."""

    #: how the table is named in logs, plans and run records
    ref: str

    def exists(self) -> bool:
        """True when the table exists (it is created by `ensure`)."""

    def version(self) -> int:
        """A number that grows with every commit (the table's version)."""

    def committed_units(self, unit_columns: Sequence[str]) -> dict[tuple[Any, ...], Committed]:
        """For each unit key (values of `unit_columns`) the output holds, what it was scored from."""

    def check_compatible(self, schema: StructType, partition_columns: Sequence[str]) -> None:
        """ConfigError naming the problem when the existing table cannot take this job's rows."""

    def ensure(self, schema: StructType, partition_columns: Sequence[str]) -> None:
        """Create the table (empty, final schema) unless it exists; safe against a concurrent create."""

    def write_units(self, df: DataFrame, predicate: str, units_id: str, plan_version: int) -> None:
        """Replace the rows matching `predicate` (SQL over the unit columns) with `df`, in one commit.

        `units_id` names the unit(s) stably across runs; together with `plan_version` (the table's
        version when the run planned) it makes the write idempotent: a second writer of the same
        units planned at the same version must be skipped or fail with a conflict.
        """

    def is_conflict(self, exc: BaseException) -> bool:
        """True when `exc` means another writer committed to the same units concurrently."""

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
