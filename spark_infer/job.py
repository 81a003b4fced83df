"""The scoring job: config -> plan -> score -> commit -> report, one Delta commit per unit."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import (
    ThreadPoolExecutor,
    TimeoutError,  # noqa: A004 - same as builtin since 3.11
)

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from spark_infer import commit, plan
from spark_infer.config import BUCKET_COLUMN, LINEAGE_COLUMNS, JobConfig
from spark_infer.report import Progress, RunSummary, emit
from spark_infer.resources import scoring_profile
from spark_infer.runtime import PLACEMENT_PREFIX
from spark_infer.runtime.spec import ConfigError, ModelSpec, make_spec
from spark_infer.session import build_session, delta_available
from spark_infer.tables import TableRef
from spark_infer.udf import new_metrics_accumulator, output_schema, predict_frame


class DeltaMissing(RuntimeError):
    """Delta Lake's classes are not on the running Spark session's classpath."""


class ConcurrentRunError(RuntimeError):
    """Another run committed to the same output units at the same time."""


def _is_concurrency_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return any(
        w in text
        for w in ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentTransaction",
                  "ConcurrentWriteException", "ConcurrentDeleteDeleteException", "ProtocolChangedException",
                  "MetadataChangedException", "DELTA_CONCURRENT")
    )


def lineage_schema() -> list[StructField]:
    from pyspark.sql.types import LongType, TimestampType

    types = {"input_version": LongType(), "scored_at": TimestampType()}
    return [StructField(c, types.get(c, StringType())) for c in LINEAGE_COLUMNS]


class ScoringJob:
    """One run of a configured job. `run()` returns the RunSummary (also on failure, via summary)."""

    def __init__(self, cfg: JobConfig, spark: SparkSession | None = None) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:16]
        self.summary = RunSummary(run_id=self.run_id, job_name=cfg.job_name, input=cfg.input,
                                  output=cfg.output, task=cfg.task)
        self.summary.config_hash = hashlib.sha256(
            json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()[:16]
        import datetime as dt

        self.summary.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self._spark = spark
        self.spec: ModelSpec | None = None
        self.plan: plan.Plan | None = None
        self.stop_requested = threading.Event()

    def request_stop(self) -> None:
        """SIGTERM/preemption: start no new unit and abandon in-flight ones (nothing half-written:
        an uncommitted Delta write leaves no trace)."""
        self.stop_requested.set()
        if self._spark is not None:
            try:
                self._spark.sparkContext.cancelAllJobs()
            except Exception:  # noqa: BLE001 - the JVM may already be going down
                pass

    # -- stages ---------------------------------------------------------------------------------
    def validate_model(self) -> ModelSpec:
        """Task, options and model folder checked (and fingerprinted) before Spark starts."""
        cfg = self.cfg
        if cfg.model is not None and cfg.model.strip() == "":
            raise ConfigError("config field 'model'='': empty model reference")
        t0 = time.monotonic()
        self.spec = make_spec(cfg.task, cfg.model, **cfg.task_option_values())
        self.summary.model = self.spec.reference
        self.summary.model_fingerprint = self.spec.fingerprint
        self.summary.durations_s["fingerprint"] = round(time.monotonic() - t0, 3)
        return self.spec

    def session_unchecked(self) -> SparkSession:
        if self._spark is None:
            t0 = time.monotonic()
            conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(self.cfg.arrow_batch_size),
                    **self.cfg.spark_conf}
            self._spark = build_session(self.cfg.job_name, self.cfg.master, conf, self.cfg.delta_jars)
            self.summary.durations_s["session_start"] = round(time.monotonic() - t0, 3)
        return self._spark

    def session(self) -> SparkSession:
        self.session_unchecked()
        if not delta_available(self._spark):
            raise DeltaMissing("Delta Lake classes are not on this Spark session's classpath")
        # runtime conf also applies to a session we did not create (notebook, spark-submit)
        self._spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.arrow_batch_size))
        return self._spark

    def make_plan(self) -> plan.Plan:
        cfg, spark, spec = self.cfg, self.session(), self.spec or self.validate_model()
        t0 = time.monotonic()
        inp, out = TableRef(cfg.input), TableRef(cfg.output)
        if not inp.exists(spark):
            raise ConfigError(f"input={cfg.input!r}: not an existing Delta table")
        version = inp.version(spark)
        df = inp.read(spark, version)
        cols = df.columns
        if cfg.id_col not in cols:
            raise ConfigError(f"config field 'id_col'={cfg.id_col!r}: no such column in input (columns: {cols})")
        task_cols = spec.input_columns()
        if task_cols is None:
            if cfg.text_col not in cols:
                raise ConfigError(
                    f"config field 'text_col'={cfg.text_col!r}: no such column in input (columns: {cols})"
                )
            self.input_expr: str | list[str] = cfg.text_col
            hashed = [cfg.id_col, cfg.text_col]
        else:
            missing = [c for c in task_cols if c not in cols]
            if missing:
                raise ConfigError(
                    f"task {cfg.task!r} reads columns {missing} that the input lacks (columns: {cols})"
                )
            self.input_expr = list(task_cols)
            hashed = [cfg.id_col, *task_cols]
        unit_cols = list(cfg.partition_by) if cfg.partition_by is not None else inp.partition_columns(spark)
        for c in unit_cols:
            if c not in cols:
                raise ConfigError(f"config field 'partition_by'={c!r}: no such column in input (columns: {cols})")
        bucketed = not unit_cols
        tag = ""
        if bucketed:
            unit_cols = [BUCKET_COLUMN]
            df = df.withColumn(BUCKET_COLUMN, plan.bucket_expr(cfg.id_col, cfg.buckets))
            tag = f"b{cfg.buckets}:"
        self.unit_cols, self.input_df = unit_cols, df
        self.expected_schema = self._expected_schema(df, unit_cols)
        self.summary.input_version = version
        units = plan.input_units(df, unit_cols, hashed, tag=tag)
        committed: dict = {}
        if out.exists(spark):
            dt = out.delta_table(spark)
            existing = dt.toDF()
            commit.check_compatible(existing.schema, out.partition_columns(spark), self.expected_schema,
                                    unit_cols, out)
            self.summary.output_version_before = out.version(spark)
            committed = plan.output_units(existing, unit_cols)
        pending, done, stale, orphaned = plan.decide(units, committed, spec.fingerprint, cfg.on_model_change)
        self.plan = plan.Plan(tuple(unit_cols), bucketed, version, pending, done, stale, orphaned)
        self.summary.plan = self.plan.counts()
        self.summary.durations_s["plan"] = round(time.monotonic() - t0, 3)
        return self.plan

    def _expected_schema(self, df: DataFrame, unit_cols: list[str]) -> StructType:
        cfg = self.cfg
        keys = [cfg.id_col, *[c for c in unit_cols if c != cfg.id_col]]
        key_fields = [df.schema[k] for k in keys]
        base = output_schema(self.spec, key_fields, cfg.prediction_col)
        names = [f.name for f in base.fields]
        clash = [c for c in LINEAGE_COLUMNS if c in names]
        if clash:
            raise ConfigError(f"input columns {clash} clash with spark-infer's lineage columns; rename them")
        if cfg.prediction_col in keys or "error" in keys:
            raise ConfigError(f"config field 'output_col'={cfg.prediction_col!r} clashes with a key column")
        self.keys = keys
        return StructType([*[StructField(f.name, f.dataType, True) for f in base.fields], *lineage_schema()])

    def score_and_commit(self) -> None:
        cfg, spark, spec, p = self.cfg, self.session(), self.spec, self.plan
        out = TableRef(cfg.output)
        profile = scoring_profile(spark, cfg.gpus_per_task, cfg.cpus_per_task)  # fails before any write
        commit.ensure_table(spark, out, self.expected_schema, list(self.unit_cols), cfg.change_data_feed)
        base_version = out.version(spark)
        if self.summary.output_version_before is None:
            self.summary.output_version_before = base_version
        parallelism = cfg.score_partitions or spark.sparkContext.defaultParallelism
        acc = new_metrics_accumulator(spark)
        lock = threading.Lock()
        conflict: list[BaseException] = []

        def score_unit(unit: plan.Unit, reason: str) -> None:
            label = unit.label(self.unit_cols)
            where = plan.unit_filter(self.unit_cols, unit)
            t0 = time.monotonic()
            try:
                if conflict or self.stop_requested.is_set():
                    return  # a concurrent writer or a stop request: start no new work
                src = self.input_df.where(where)
                if parallelism > 1 and unit.rows > 1:
                    src = src.repartition(min(parallelism, unit.rows))
                scored = predict_frame(
                    src, self.input_expr, spec=spec, profile=profile, keys=self.keys, output_col=cfg.prediction_col,
                    metrics=acc, **cfg.runtime_options().model_dump(),
                )
                scored = scored.select(
                    *scored.columns,
                    F.lit(spec.reference).alias("model"),
                    F.lit(spec.fingerprint).alias("model_fingerprint"),
                    F.lit(cfg.task).alias("task"),
                    F.lit(self.run_id).alias("run_id"),
                    F.lit(p.input_version).cast("long").alias("input_version"),
                    F.lit(unit.state).alias("input_state"),
                    F.current_timestamp().alias("scored_at"),
                ).select(*[f.name for f in self.expected_schema.fields])
                commit.write_unit(scored, out, where, commit.txn_app_id(out, label), base_version + 1)
            except Exception as exc:  # noqa: BLE001 - one unit's failure must not lose the others
                if _is_concurrency_error(exc):
                    conflict.append(exc)
                    return
                if self.stop_requested.is_set():
                    with lock:
                        self.summary.units_abandoned.append(label)
                    emit("unit_abandoned", unit=label, reason="stop_requested")
                    return
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                with lock:
                    self.summary.units_failed[label] = msg[:2000]
                emit("unit_failed", unit=label, reason=reason, error=msg[:300])
                return
            with lock:
                self.summary.units_committed.append(label)
                self.summary.rows_scored += unit.rows
                progress.unit_done(label, unit.rows, time.monotonic() - t0)

        t_all = time.monotonic()
        # A few units in flight at once hide Spark's per-job latency (planning, commit) behind
        # another unit's scoring; each unit is still its own atomic commit.
        with (
            Progress(len(p.pending), p.pending_rows, interval_s=cfg.progress_interval_s,
                     rows_now=lambda: (acc.value or {}).get("rows", 0) if acc is not None else 0) as progress,
            ThreadPoolExecutor(max_workers=max(1, cfg.concurrent_units), thread_name_prefix="unit") as pool,
        ):
            futures = [pool.submit(score_unit, u, r) for u, r in p.pending]
            for f in futures:
                # a bounded wait keeps the main thread responsive to SIGTERM
                while not f.done():
                    try:
                        f.result(timeout=0.5)
                    except TimeoutError:
                        continue
        if conflict:
            raise ConcurrentRunError(
                f"another run wrote to {cfg.output} concurrently; committed units are kept, rerun to finish"
            ) from conflict[0]
        counters = dict(acc.value) if acc is not None else {}
        self.summary.counters = {k: v for k, v in counters.items() if not k.startswith(PLACEMENT_PREFIX)}
        self.summary.placement = sorted(k[len(PLACEMENT_PREFIX):] for k in counters if k.startswith(PLACEMENT_PREFIX))
        self.summary.durations_s["score_commit"] = round(time.monotonic() - t_all, 3)
        self.summary.output_version_after = out.version(spark)


def run_job(config, spark: SparkSession | None = None, **overrides) -> RunSummary:
    """Run the scoring job from Python (notebooks, orchestrators) and return its record.

    `config`: a JobConfig, a dict of config fields, or a path to a YAML/TOML file; `overrides` win.
    The active session (Databricks, a notebook) is used when `spark` is not given. Never raises for
    job failures: look at `summary.status` / `summary.exit_code` (the CLI's exit codes).
    """
    from spark_infer.cli import EXIT_CONFIG, execute
    from spark_infer.config import build_config

    def make_config() -> JobConfig:
        if isinstance(config, JobConfig):
            return build_config(overrides={**config.model_dump(), **overrides})
        if isinstance(config, str):
            return build_config(config, overrides)
        return build_config(overrides={**dict(config), **overrides})

    code, summary = execute(make_config, spark=spark)
    return summary or RunSummary(run_id="", job_name="", status="failed", exit_code=code or EXIT_CONFIG)
