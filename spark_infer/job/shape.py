"""The job's shape: which input columns it reads and hashes, its unit columns, and the output's
schema and layout, derived from the input's schema and the config (no Spark job, no data read).

Every "no such column" or "clashes with" configuration error is raised here, before any write.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from spark_infer.config import BUCKET_COLUMN, LINEAGE_COLUMNS, JobConfig
from spark_infer.errors import ConfigError
from spark_infer.runtime.spec import ModelSpec
from spark_infer.udf import output_schema
from spark_infer.units import UnitColumn


def lineage_schema() -> list[StructField]:
    types = {"input_version": LongType(), "input_row_state": LongType(), "scored_at": TimestampType()}
    return [StructField(c, types.get(c, StringType())) for c in LINEAGE_COLUMNS]


@dataclass(frozen=True)
class JobShape:
    """What one job reads and writes.

    `input_expr` is what the model reads (the text column, or the task's columns); `hashed` the
    columns whose values make a unit's content state (the id and `read`); `read` the columns whose
    values make a row's state (`spark_infer.row_state`); `keys` the columns every output row carries
    besides the prediction; `schema` the output's full schema; `layout` the table properties that
    must not change between runs (unit columns, id buckets).
    """

    input_expr: str | list[str]
    hashed: list[str]
    read: list[str]
    unit_cols: list[UnitColumn]
    bucketed: bool
    keys: list[str]
    schema: StructType
    layout: dict[str, str]


def shape_of(cfg: JobConfig, spec: ModelSpec, schema: StructType, partition_columns: list[str]) -> JobShape:
    """The job's shape over an input of `schema`; ConfigError naming the field on a mismatch."""
    inp = cfg.input
    cols = [f.name for f in schema.fields]
    if inp.id_col not in cols:
        raise ConfigError(f"config field 'id_col'={inp.id_col!r}: no such column in input (columns: {cols})")
    input_expr, hashed = _model_inputs(cfg, spec, cols)
    names = list(inp.partition_by) if inp.partition_by is not None else list(partition_columns)
    for c in names:
        if c not in cols:
            raise ConfigError(f"config field 'partition_by'={c!r}: no such column in input (columns: {cols})")
    bucketed = not names
    if bucketed:
        if BUCKET_COLUMN in cols:
            raise ConfigError(f"the input has a column {BUCKET_COLUMN!r}, the name of spark-infer's id buckets: "
                              "set partition_by, or rename it")
        unit_cols = [UnitColumn(BUCKET_COLUMN, "int")]
        key_fields = [schema[inp.id_col], StructField(BUCKET_COLUMN, IntegerType())]
    else:
        unit_cols = [UnitColumn.of(c, schema[c].dataType) for c in names]
        key_fields = [schema[inp.id_col], *[schema[c] for c in names if c != inp.id_col]]
    keys = [f.name for f in key_fields]
    base = output_schema(spec, key_fields, cfg.prediction_col)
    clash = [c for c in LINEAGE_COLUMNS if c in [f.name for f in base.fields]]
    if clash:
        raise ConfigError(f"input columns {clash} clash with spark-infer's lineage columns; rename them")
    if cfg.prediction_col in keys or "error" in keys:
        raise ConfigError(f"config field 'output_col'={cfg.prediction_col!r} clashes with a key column")
    out_schema = StructType([*[StructField(f.name, f.dataType, True) for f in base.fields], *lineage_schema()])
    layout = {"spark_infer.id_col": inp.id_col, "spark_infer.units": ",".join(c.name for c in unit_cols) or "-"}
    if bucketed:
        layout["spark_infer.buckets"] = str(inp.buckets)
    return JobShape(input_expr, hashed, hashed[1:], unit_cols, bucketed, keys, out_schema, layout)


def _model_inputs(cfg: JobConfig, spec: ModelSpec, cols: list[str]) -> tuple[str | list[str], list[str]]:
    """(what the model reads, the columns hashed into content states)."""
    id_col, text_col = cfg.input.id_col, cfg.input.text_col
    task_cols = spec.input_columns()
    if task_cols is None:
        if text_col not in cols:
            raise ConfigError(f"config field 'text_col'={text_col!r}: no such column in input (columns: {cols})")
        return text_col, [id_col, text_col]
    missing = [c for c in task_cols if c not in cols]
    if missing:
        raise ConfigError(f"task {cfg.task!r} reads columns {missing} that the input lacks (columns: {cols})")
    return list(task_cols), [id_col, *task_cols]
