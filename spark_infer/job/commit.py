"""Committing checked units: their staged rows with the lineage columns (model, fingerprint, run,
input version, content and files state), laid out in files of at most `rows_per_file` rows, written
through the sink in one atomic, idempotent commit per group (the protocol itself is the sink's:
`spark_infer.sinks`). Orphaned units are removed the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from spark_infer.config import LINEAGE_COLUMNS
from spark_infer.units import UnitKey, group_predicate, units_id

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_infer.config import JobConfig
    from spark_infer.job.checks import CheckedUnit
    from spark_infer.job.groups import StagedGroup
    from spark_infer.job.shape import JobShape
    from spark_infer.runtime.spec import ModelSpec
    from spark_infer.sinks import OutputTable


class GroupCommitter:
    """Writes checked units of this run to the output; every write names the output version the run
    planned at (`base_version`), which makes a second writer of the same units collide."""

    def __init__(self, cfg: JobConfig, spec: ModelSpec, shape: JobShape, sink: OutputTable, spark: SparkSession,
                 run_id: str, input_version: int, base_version: int) -> None:
        self.cfg, self.spec, self.shape, self.sink, self.spark = cfg, spec, shape, sink, spark
        self.run_id, self.input_version, self.base_version = run_id, input_version, base_version

    def commit(self, staged: StagedGroup, ok: Sequence[CheckedUnit]) -> None:
        """Write the staged rows of the `ok` units in one commit (raises when it did not land)."""
        cols = self.shape.unit_cols
        keys = [c.unit.key for c in ok]
        out = self._with_lineage(staged, ok)
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

    def _with_lineage(self, staged: StagedGroup, ok: Sequence[CheckedUnit]) -> DataFrame:
        """The staged rows of the `ok` units, each with the lineage of its unit (a broadcast join on
        the canonical key values: states differ per unit)."""
        data, kcols = staged.rows, staged.key_cols
        states_schema = StructType([*[StructField(f"__s{i}", data.schema[k].dataType) for i, k in enumerate(kcols)],
                                    StructField("__state", StringType()), StructField("__files", StringType())])
        states = self.spark.createDataFrame(
            [(*c.stats.values, c.state, c.unit.files) for c in ok], states_schema)
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
            F.current_timestamp().alias("scored_at"),
        )
