"""Scoring one commit group into staged rows: the worker runtime over the group's units, its rows kept
(`spark_infer.job.staging`: on the executors' disks, or in a staging table; never recomputed: a model
runs once per row) until they are checked and committed, with per-unit statistics and the workers'
counters read back in two small Spark jobs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyspark.sql import functions as F

from spark_infer.inputs import InputUnit, row_hash
from spark_infer.row_state import row_state_expr
from spark_infer.udf import METRICS_COL, predict_frame, sum_counters
from spark_infer.units import UnitKey, canonical_exprs, group_predicate, key_from_row

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_infer.config import JobConfig
    from spark_infer.job.rowdiff import RowDiff
    from spark_infer.job.shape import JobShape
    from spark_infer.job.staging import Staging
    from spark_infer.runtime.spec import ModelSpec

#: the row hash travels with each scored row (it becomes the unit's content state)
HASH_COL = "__spark_infer_row_hash"
#: and the row's state (`spark_infer.row_state`: the output's `input_row_state`)
STATE_COL = "__spark_infer_row_state"


@dataclass(frozen=True)
class UnitStats:
    """What one unit's scored rows hold: their count, error rows and summed row hashes.

    `values` are the unit's canonical key values as Spark returned them (they join the rows to the
    unit's lineage at commit)."""

    key: UnitKey
    values: tuple[Any, ...]
    rows: int
    errors: int
    hash_sum: Any


class StagedGroup:
    """One group's scored rows, kept until `release` (after the commit, or on failure)."""

    def __init__(self, scored: DataFrame, shape: JobShape, release: Callable[[], None]) -> None:
        self._scored = scored
        self._release = release
        self.shape = shape
        self.key_cols = [f"__k{i}" for i in range(len(shape.unit_cols))]
        #: the scored rows (no metric rows) with each unit column's canonical value beside them
        self.rows = scored.where(F.col(METRICS_COL).isNull()).selectExpr("*", *canonical_exprs(shape.unit_cols))

    def unit_stats(self) -> list[UnitStats]:
        stats = self.rows.groupBy(*self.key_cols).agg(
            F.count(F.lit(1)).alias("__n"), F.count("error").alias("__errors"),
            F.sum(F.col(HASH_COL).cast("decimal(38,0)")).alias("__h"),
        ).collect()
        return [UnitStats(key_from_row(self.shape.unit_cols, r), tuple(r[k] for k in self.key_cols),
                          int(r["__n"]), int(r["__errors"]), r["__h"]) for r in stats]

    def counters(self) -> dict[str, int]:
        # one metric row per Spark task: few enough to sum here, without a shuffle (one Spark job)
        return sum_counters([r[0] for r in self._scored.where(F.col(METRICS_COL).isNotNull())
                             .select(METRICS_COL).collect()])

    def release(self) -> None:
        self._release()


class GroupScorer:
    """Scores the units of one group with the job's model, `tasks_per_group` Spark tasks wide: whole
    units all their rows, row-grain units (`row_keys`) only the rows their diff says to score."""

    def __init__(self, cfg: JobConfig, spec: ModelSpec, shape: JobShape, input_df: DataFrame, parallelism: int,
                 profile: Any, metrics: Any, staging: Staging, diff: RowDiff | None = None,
                 row_keys: frozenset[UnitKey] = frozenset()) -> None:
        self.cfg, self.spec, self.shape, self.input_df = cfg, spec, shape, input_df
        self.parallelism, self.profile, self.metrics, self.staging = parallelism, profile, metrics, staging
        self.diff, self.row_keys = diff, row_keys

    def stage(self, units: Sequence[InputUnit], name: str = "group", rows: int | None = None) -> StagedGroup:
        """The group's scored rows, staged; `rows`: how many it scores (for its width)."""
        shape = self.shape
        rows = sum(u.rows for u in units) if rows is None else rows
        whole = [u.key for u in units if u.key not in self.row_keys]
        part = [u.key for u in units if u.key in self.row_keys]
        src = self.input_df.where(group_predicate(shape.unit_cols, whole)) if whole else None
        if part:
            assert self.diff is not None
            diffed = self.diff.to_score(part)
            src = diffed if src is None else src.unionByName(diffed)
        assert src is not None
        src = src.withColumn(HASH_COL, row_hash(src, shape.hashed)).withColumn(
            STATE_COL, row_state_expr(src.schema, shape.read))
        if self.parallelism > 1 and rows > 1:
            src = src.repartition(min(self.parallelism, rows))
        scored = predict_frame(
            src, shape.input_expr, spec=self.spec, runtime=self.cfg.runtime, profile=self.profile,
            keys=[*shape.keys, HASH_COL, STATE_COL], output_col=self.cfg.prediction_col, metrics=self.metrics,
            metric_rows=True,
        )
        kept, release = self.staging.keep(scored, name)
        return StagedGroup(kept, shape, release)
