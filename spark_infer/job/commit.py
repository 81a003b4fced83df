"""Committing checked units: their staged rows with the lineage columns (model, fingerprint, run,
input version, content, files and row state), laid out in files of at most `rows_per_file` rows,
written through the sink in one atomic, idempotent commit per group (the protocol itself is the
sink's: `spark_infer.sinks`). Orphaned units are removed the same way.

A row-grain unit's commit replaces the unit with its scored rows plus the rows its diff keeps, read
from the output at the plan's version: the kept rows keep their results and their own lineage (model,
run, input version, scored time); only the unit-wide states (`input_state`, `input_files`) become the
unit's new ones, so the next plan finds the whole unit done from the output's statistics alone. Its
deleted rows are simply not written again. One commit: a kill at any point leaves the unit as it was
or as it is to be, never in between."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from spark_infer.config import LINEAGE_COLUMNS
from spark_infer.job.groups import STATE_COL
from spark_infer.row_state import ROW_STATE_COLUMN
from spark_infer.units import UnitKey, group_predicate, units_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_infer.config import JobConfig
    from spark_infer.job.checks import CheckedUnit
    from spark_infer.job.groups import StagedGroup
    from spark_infer.job.rowdiff import RowDiff
    from spark_infer.job.shape import JobShape
    from spark_infer.runtime.spec import ModelSpec
    from spark_infer.sinks import OutputTable


class GroupCommitter:
    """Writes checked units of this run to the output; every write names the output version the run
    planned at (`base_version`), which makes a second writer of the same units collide."""

    def __init__(self, cfg: JobConfig, spec: ModelSpec, shape: JobShape, sink: OutputTable, spark: SparkSession,
                 run_id: str, input_version: int, base_version: int, diff: RowDiff | None = None,
                 row_keys: frozenset[UnitKey] = frozenset()) -> None:
        self.cfg, self.spec, self.shape, self.sink, self.spark = cfg, spec, shape, sink, spark
        self.run_id, self.input_version, self.base_version = run_id, input_version, base_version
        self.diff, self.row_keys = diff, row_keys

    def commit(self, staged: StagedGroup, ok: Sequence[CheckedUnit]) -> None:
        """Write the staged rows of the `ok` units (and the rows row-grain units keep) in one commit
        (raises when it did not land)."""
        cols = self.shape.unit_cols
        keys = [c.unit.key for c in ok]
        states = self._states(staged, ok)
        out = self._with_lineage(staged, states)
        part = [k for k in keys if k in self.row_keys]
        if part:
            assert self.diff is not None
            out = out.unionByName(self._kept_with_states(part, states))
        files = max(1, math.ceil(sum(c.unit.rows for c in ok) / self.cfg.output.rows_per_file))
        # one unit per write task (its rows in files of at most rows_per_file); a big unit alone in
        # its group is spread over several tasks
        out = out.repartition(files) if len(keys) == 1 else out.repartition(files, *[c.name for c in cols])
        out = out.select(*[f.name for f in self.shape.schema.fields])
        self.sink.write_units(out, group_predicate(cols, keys), units_id(cols, keys), self.base_version, self.run_id)

    def delete(self, keys: Sequence[UnitKey]) -> None:
        """Remove the rows of units gone from the input, in one commit."""
        cols = self.shape.unit_cols
        self.sink.delete_units(group_predicate(cols, keys), units_id(cols, keys), self.base_version, self.run_id)

    def _states(self, staged: StagedGroup, ok: Sequence[CheckedUnit]) -> DataFrame:
        """One row per unit: its canonical key values (as Spark returned them) and its new states."""
        data, kcols = staged.rows, staged.key_cols
        states_schema = StructType([*[StructField(f"__s{i}", data.schema[k].dataType) for i, k in enumerate(kcols)],
                                    StructField("__state", StringType()), StructField("__files", StringType())])
        rows = []
        for c in ok:
            values = c.stats.values or (self.diff.values.get(c.unit.key) if self.diff is not None else None)
            assert values, f"no key values for unit {c.unit.key}"
            rows.append((*values, c.state, c.unit.files))
        return self.spark.createDataFrame(rows, states_schema)

    def _kept_with_states(self, keys: Sequence[UnitKey], states: DataFrame) -> DataFrame:
        """The rows the row-grain units `keys` keep, with their units' new states (and their row state
        where an older output did not record it)."""
        assert self.diff is not None
        kept = self.diff.kept(keys)
        kcols = [f"__k{i}" for i in range(len(self.shape.unit_cols))]
        cond = [kept[k].eqNullSafe(states[f"__s{i}"]) for i, k in enumerate(kcols)]
        joined = kept.join(F.broadcast(states), on=cond, how="inner")
        have = set(kept.columns)
        cols = []
        for f in self.shape.schema.fields:
            if f.name == "input_state":
                cols.append(F.col("__state").alias(f.name))
            elif f.name == "input_files":
                cols.append(F.col("__files").alias(f.name))
            elif f.name == ROW_STATE_COLUMN:
                cols.append(F.col("__rd_in").alias(f.name))
            elif f.name in have:
                cols.append(F.col(f"`{f.name.replace('`', '``')}`"))
            else:  # a lineage column an older output lacked at the plan's version (added since)
                cols.append(F.lit(None).cast(f.dataType).alias(f.name))
        return joined.select(*cols)

    def _with_lineage(self, staged: StagedGroup, states: DataFrame) -> DataFrame:
        """The staged rows, each with the lineage of its unit (a broadcast join on the canonical key
        values: states differ per unit)."""
        data, kcols = staged.rows, staged.key_cols
        cond = [data[k].eqNullSafe(states[f"__s{i}"]) for i, k in enumerate(kcols)]
        return data.join(F.broadcast(states), on=cond, how="inner").select(
            *[F.col(f.name) for f in self.shape.schema.fields if f.name not in LINEAGE_COLUMNS],
            F.lit(self.spec.reference).alias("model"),
            F.lit(self.spec.fingerprint).alias("model_fingerprint"),
            F.lit(self.cfg.task).alias("task"),
            F.lit(self.run_id).alias("run_id"),
            F.lit(self.input_version).cast("long").alias("input_version"),
            F.col("__state").alias("input_state"),
            F.col("__files").alias("input_files"),
            F.col(STATE_COL).alias(ROW_STATE_COLUMN),
            F.current_timestamp().alias("scored_at"),
        ).select(*[f.name for f in self.shape.schema.fields])
