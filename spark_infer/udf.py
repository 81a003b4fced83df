"""The Spark shells over the worker runtime: an Arrow UDF and a whole-DataFrame mapInArrow path.

Both are thin: they read the task's resources (GPU address, CPU share), take the model from the
per-process cache and hand Arrow batches to the runtime. Worker counters (rows, tokens, errors,
OOM backoffs, model loads) come back to the driver in whatever way the session supports:

| path | classic session | Spark Connect |
| --- | --- | --- |
| `predict_udf(...).metrics()` | an accumulator | one Python-worker log line per task, summed from `python_worker_logs()` |
| `predict_frame(..., metrics=ScoringMetrics())` | one metric row per task, summed by an `Observation` | the same |
| the job | metric rows summed by its own per-group aggregation | the same |
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_type
from pyspark.sql.types import StringType, StructField, StructType

from spark_infer.errors import ConfigError
from spark_infer.runtime import score_stream
from spark_infer.runtime.metrics import COUNTER_NAMES, new_counters
from spark_infer.runtime.options import RuntimeOptions
from spark_infer.runtime.spec import ModelSpec, make_spec

#: the column predict_frame hands to the scoring function
_INPUT = "__spark_infer_input"
#: with metric_rows=True: a map of worker counters, set on one extra row per task (null elsewhere)
METRICS_COL = "__spark_infer_metrics"


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(runtime options, task options) of one flat keyword dict."""
    rt = RuntimeOptions.fields()
    return {k: v for k, v in options.items() if k in rt}, {k: v for k, v in options.items() if k not in rt}


def _spec_and_runtime(task: str, model: str | None, spec: ModelSpec | None, runtime: RuntimeOptions | None,
                      options: dict[str, Any]) -> tuple[ModelSpec, RuntimeOptions]:
    """One ModelSpec and one RuntimeOptions from whatever form the caller used; options that cannot
    apply (task options beside a ready spec, runtime options beside a ready RuntimeOptions) raise."""
    rt_opts, task_opts = _split_options(options)
    if runtime is not None and rt_opts:
        raise ConfigError(f"runtime options {sorted(rt_opts)} given beside runtime=: put them in the RuntimeOptions")
    if spec is not None:
        if task_opts or model is not None:
            given = sorted(task_opts) + (["model"] if model is not None else [])
            raise ConfigError(f"{given} given beside spec=: the spec already fixes the model and its task options")
    else:
        spec = make_spec(task, model, **task_opts)
    return spec, runtime if runtime is not None else RuntimeOptions.build(**rt_opts)


def new_metrics_accumulator(spark: SparkSession | None = None):
    """An accumulator of worker counters for `predict_frame(metrics=...)` (classic sessions), or None."""
    return _counters_accumulator(spark)


def _counters_accumulator(spark: SparkSession | None):
    from spark_infer.sessions import active_session, capabilities

    spark = spark or active_session()
    return capabilities(spark).counters_accumulator() if spark is not None else None


def _flush(counters: Counter[str], acc) -> None:
    if acc is not None:
        acc.add({k: v for k, v in counters.items() if v})


#: the logger whose one line per task carries a UDF's counters on Spark Connect
METRICS_LOGGER = "spark_infer.metrics"
WORKER_LOGS_CONF = "spark.sql.pyspark.worker.logging.enabled"


def _log_counters(udf_id: str, counters: Counter[str]) -> None:
    """One line per task with this UDF's counters, captured by Spark's Python worker logs."""
    logging.getLogger(METRICS_LOGGER).warning("%s %s", udf_id, json.dumps({k: v for k, v in counters.items() if v}))


def sum_counters(parts: Sequence[dict[str, int] | None]) -> dict[str, int]:
    """Sum per-task counter maps; every known counter is present (0 where no task reported it)."""
    total: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
    for part in parts:
        for k, v in (part or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


class _WorkerLogMetrics:
    """`.metrics()` of a UDF on Spark Connect: the per-task lines in the session's Python worker logs."""

    def __init__(self, spark: Any, udf_id: str) -> None:
        self.spark, self.udf_id = spark, udf_id

    def __call__(self) -> dict[str, int]:
        from pyspark.sql import functions as F

        rows = (self.spark.tvf.python_worker_logs()
                .where((F.col("logger") == METRICS_LOGGER) & F.col("msg").startswith(self.udf_id + " "))
                .select("msg").collect())
        return sum_counters([json.loads(r.msg.split(" ", 1)[1]) for r in rows])


class ScoringMetrics:
    """Worker counters of a `predict_frame` DataFrame, on classic and Spark Connect sessions alike.

        metrics = ScoringMetrics()
        out = predict_frame(df, "text", "embed", keys=["id"], metrics=metrics); out.write.save(...)
        metrics.value()        # {"rows": ..., "tokens": ..., "error_rows": ...}, after the action

    Each scoring task adds one metric row; an `Observation` sums them during the first action on the
    returned DataFrame (`value()` is empty before it), and the rows never reach the result.
    """

    def __init__(self) -> None:
        self._observation: Any = None

    def _observe(self, df: DataFrame) -> DataFrame:
        from pyspark.sql import functions as F

        from spark_infer.sessions import capabilities

        # the session seam knows which Observation its kind of session takes (classic or Connect)
        self._observation = capabilities(df.sparkSession).observation(f"spark_infer_{uuid.uuid4().hex[:12]}")
        observed = df.observe(self._observation, F.collect_list(F.col(METRICS_COL)).alias("m"))
        return observed.where(F.col(METRICS_COL).isNull()).drop(METRICS_COL)

    def value(self) -> dict[str, int]:
        """The counters summed over every task of the first action (empty before it ran)."""
        if self._observation is None:
            return {}
        got = self._observation.get or {}
        return {k: v for k, v in sum_counters(got.get("m") or []).items() if not k.startswith("placement|")}


def predict_udf(
    task: str = "embed",
    *,
    model: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    return_error: bool = False,
    **options: Any,
):
    """A Spark UDF scoring one input column with a model loaded once per Python worker and device.

        embed = predict_udf("embed")                            # packaged all-MiniLM-L6-v2
        df.withColumn("embedding", embed("text"))

    Args:
        task: a registered task name ("embed", "classify", "generate", "zero_shot", "custom").
        model: a model reference (local folder, Hugging Face id, ...), or None for the packaged
            all-MiniLM-L6-v2.
        batch_size: max rows per model call (micro-batch); the Arrow batch size is Spark's
            `spark.sql.execution.arrow.maxRecordsPerBatch`.
        max_length: truncate inputs to this many tokens (default: the model's own limit).
        return_error: return `struct<prediction, error>` instead of the bare prediction.
        **options: runtime options (token_budget, device, on_error) and task options.

    The returned UDF has `.spec` (the fingerprinted model spec) and `.metrics()` (worker counters
    summed over finished tasks, when created with an active SparkSession). On Spark Connect the
    counters come from the session's Python worker logs, which this turns on
    (`spark.sql.pyspark.worker.logging.enabled`, Spark 4.1+ servers).
    """
    from pyspark.sql.functions import arrow_udf

    if max_length is not None:
        options["max_length"] = max_length
    spec, runtime = _spec_and_runtime(task, model, None, None, dict(options, batch_size=batch_size))
    out_type = spec.output_type()
    from spark_infer.sessions import active_session, capabilities

    session = active_session()
    caps = capabilities(session) if session is not None else None
    remote = caps is not None and caps.remote
    acc = None if remote else _counters_accumulator(session)
    udf_id = f"udf-{uuid.uuid4().hex[:16]}"
    if remote and caps.conf_settable(WORKER_LOGS_CONF):
        # counters travel as one log line per task: turn the session's Python worker logs on (where
        # the session lets a client: serverless does not, and `.metrics()` then has no counters)
        session.conf.set(WORKER_LOGS_CONF, "true")

    def _score(batches: Iterator[pa.Array]) -> Iterator[pa.Array]:
        counters = new_counters()
        try:
            for out, err in score_stream(spec, runtime, (b.to_pylist() for b in batches), counters):
                if return_error:
                    yield pa.StructArray.from_arrays([out, err], names=["prediction", "error"])
                else:
                    yield out
        finally:
            if remote:
                _log_counters(udf_id, counters)
            else:
                _flush(counters, acc)

    spark_type = from_arrow_type(out_type)
    if return_error:
        spark_type = StructType(
            [StructField("prediction", spark_type), StructField("error", StringType())]
        )
    fn = arrow_udf(_score, spark_type)  # SCALAR_ITER, from the type hints
    fn.spec = spec  # type: ignore[attr-defined]
    if remote:
        fn.metrics = _WorkerLogMetrics(session, udf_id)  # type: ignore[attr-defined]
    else:
        fn.metrics = lambda: dict(acc.value) if acc is not None else {}  # type: ignore[attr-defined]
    return fn


def output_schema(spec: ModelSpec, key_fields: Sequence[StructField], output_col: str) -> StructType:
    """Schema of predict_frame's output: key columns, the prediction, and error."""
    return StructType(
        [*key_fields, StructField(output_col, from_arrow_type(spec.output_type())),
         StructField("error", StringType())]
    )


def predict_frame(
    df: DataFrame,
    input_col: str | Column | Sequence[str] | None,
    task: str = "embed",
    *,
    model: str | None = None,
    keys: Sequence[str] = (),
    output_col: str = "prediction",
    profile=None,
    metrics=None,
    spec: ModelSpec | None = None,
    runtime: RuntimeOptions | None = None,
    metric_rows: bool = False,
    **options: Any,
) -> DataFrame:
    """Score a whole DataFrame through `mapInArrow`: returns `keys` + `output_col` + `error`.

        scored = predict_frame(df, "text", "embed", keys=["id"], max_length=256)
        scored.write.format("delta").save("/data/emb")

    This is the path that can carry a ResourceProfile (stage-level scheduling: GPUs for the scoring
    stage only). Give either `task` + `model` + task options, or a ready `spec`; runtime options
    as keywords or as one `runtime` object. `metrics`: a `ScoringMetrics` (any session) or, on a
    classic session, an accumulator from `new_metrics_accumulator()`, to collect worker counters.
    `metric_rows=True` adds a `__spark_infer_metrics` map column, null on every scored row, set on
    one extra row per task (all other columns null) that carries that task's counters: how counters
    travel on sessions without accumulators.
    """
    spec, runtime = _spec_and_runtime(task, model, spec, runtime, options)
    observer = metrics if isinstance(metrics, ScoringMetrics) else None
    if observer is not None:
        metrics, metric_rows = None, True
    if input_col is None:
        input_col = spec.input_columns()
        if input_col is None:
            raise ConfigError(f"task {spec.task!r} needs an input column")
    if isinstance(input_col, str):
        expr = df[input_col]
    elif isinstance(input_col, Column):
        expr = input_col
    else:  # several columns: each row reaches the task as a dict
        from pyspark.sql import functions as F

        expr = F.struct(*[df[c] for c in input_col])
    src = df.select(*keys, expr.alias(_INPUT))
    key_fields = [src.schema[k] for k in keys]
    if metric_rows:  # the metric row has no keys: every key column must take a null
        key_fields = [StructField(f.name, f.dataType, True) for f in key_fields]
    schema = output_schema(spec, key_fields, output_col)
    out_fields = [pa.field(output_col, spec.output_type()), pa.field("error", pa.string())]
    metrics_type = pa.map_(pa.string(), pa.int64())
    if metric_rows:
        schema = StructType([*schema.fields, StructField(METRICS_COL, from_arrow_type(metrics_type))])

    def _score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        counters = new_counters()
        pending: list[pa.RecordBatch] = []

        def inputs():
            for b in batches:
                pending.append(b)
                yield b.column(_INPUT).to_pylist()

        fields: list[pa.Field] = []
        try:
            for out, err in score_stream(spec, runtime, inputs(), counters):
                b = pending.pop(0)
                # key types come from the batch itself (Spark already chose them, time zones included)
                fields = [b.schema.field(k).with_nullable(True) for k in keys] + out_fields
                cols = [b.column(k) for k in keys] + [out, err]
                if metric_rows:
                    fields.append(pa.field(METRICS_COL, metrics_type))
                    cols.append(pa.nulls(b.num_rows, metrics_type))
                yield pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))
            if metric_rows and fields:
                values = [pa.nulls(1, f.type) for f in fields[:-1]]
                values.append(pa.array([[(k, int(v)) for k, v in counters.items() if v]], metrics_type))
                yield pa.RecordBatch.from_arrays(values, schema=pa.schema(fields))
        finally:
            _flush(counters, metrics)

    out = src.mapInArrow(_score, schema, profile=profile) if profile is not None else src.mapInArrow(_score, schema)
    return observer._observe(out) if observer is not None else out
