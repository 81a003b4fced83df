"""Plan: which units of the input need scoring, compared with what the output already holds.

A unit is a partition value of the input (or an id bucket for an unpartitioned input). Its input
state is a content fingerprint computed by Spark in one pass: row count + an order-independent sum of
xxhash64 over the id and input columns; a rewritten partition with different rows gets a new state.
`decide` is a pure function (easy to test); `input_units` does the Spark read (the output side's
committed units come from the sink).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_infer.sinks.base import Committed
from spark_infer.tables import predicate


@dataclass(frozen=True)
class Unit:
    """One input unit: its column values, row count and input state."""

    values: tuple[Any, ...]
    rows: int
    state: str

    def label(self, columns: Sequence[str]) -> str:
        return ",".join(f"{c}={v}" for c, v in zip(columns, self.values, strict=True))


@dataclass
class Plan:
    unit_columns: tuple[str, ...]
    bucketed: bool
    input_version: int
    pending: list[tuple[Unit, str]] = field(default_factory=list)  # (unit, new|changed|model_changed)
    done: list[Unit] = field(default_factory=list)
    stale_model: list[Unit] = field(default_factory=list)  # model changed, kept by on_model_change=new_only
    orphaned: list[tuple[Any, ...]] = field(default_factory=list)  # in output, gone from input

    @property
    def pending_rows(self) -> int:
        return sum(u.rows for u, _ in self.pending)

    def counts(self) -> dict[str, int]:
        reasons = [r for _, r in self.pending]
        return {
            "units_total": len(self.pending) + len(self.done) + len(self.stale_model),
            "units_pending": len(self.pending),
            "units_new": reasons.count("new"),
            "units_changed": reasons.count("changed"),
            "units_model_changed": reasons.count("model_changed"),
            "units_done": len(self.done),
            "units_kept_old_model": len(self.stale_model),
            "units_orphaned": len(self.orphaned),
            "rows_pending": self.pending_rows,
        }


def decide(
    inputs: Sequence[Unit],
    committed: dict[tuple[Any, ...], Committed],
    fingerprint: str,
    on_model_change: str = "rescore",
) -> tuple[list[tuple[Unit, str]], list[Unit], list[Unit], list[tuple[Any, ...]]]:
    """Split input units into (pending with reason, done, kept-with-old-model, orphaned keys)."""
    pending, done, stale = [], [], []
    for u in sorted(inputs, key=lambda u: tuple((v is None, str(v)) for v in u.values)):
        c = committed.get(u.values)
        if c is None:
            pending.append((u, "new"))
        elif c.state != u.state:
            pending.append((u, "changed"))
        elif c.fingerprint != fingerprint:
            if on_model_change == "new_only":
                stale.append(u)
            else:
                pending.append((u, "model_changed"))
        else:
            done.append(u)
    present = {u.values for u in inputs}
    orphaned = sorted((k for k in committed if k not in present), key=str)
    return pending, done, stale, orphaned


def bucket_expr(id_col: str, buckets: int):
    return F.pmod(F.xxhash64(F.col(id_col)), F.lit(buckets)).cast("int")


def input_units(df: DataFrame, unit_cols: Sequence[str], hashed_cols: Sequence[str], tag: str = "") -> list[Unit]:
    """One aggregation pass over the input: rows and content fingerprint per unit."""
    h = F.xxhash64(*[F.col(c) for c in hashed_cols])
    rows = (
        df.groupBy(*unit_cols)
        .agg(F.count(F.lit(1)).alias("n"), F.sum(h.cast("decimal(38,0)")).alias("h"))
        .collect()
    )
    return [
        Unit(values=tuple(r[c] for c in unit_cols), rows=int(r["n"]), state=f"{tag}{r['n']}:{r['h']}")
        for r in rows
    ]


def unit_filter(unit_cols: Sequence[str], unit: Unit) -> str:
    return predicate(tuple(unit_cols), unit.values)
