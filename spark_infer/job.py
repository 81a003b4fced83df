"""The scoring job's stages: config -> plan -> score -> commit, one atomic commit per unit.

`ScoringJob.run()` runs them in order and returns the run's `RunSummary`; the lifecycle around it
(signals, exit codes, the run record) is `spark_infer.run`. The job talks to the output through the
`OutputTable` protocol (`spark_infer.sinks`) and to Spark through the session's capabilities
(`spark_infer.sessions`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from concurrent.futures import (
    ThreadPoolExecutor,
    TimeoutError,  # noqa: A004 - same as builtin since 3.11
)
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType, TimestampType

from spark_infer import plan as planning
from spark_infer.config import BUCKET_COLUMN, LINEAGE_COLUMNS, JobConfig
from spark_infer.errors import ConcurrentRunError, ConfigError, DeltaMissing
from spark_infer.log import event
from spark_infer.report import Progress, RunSummary
from spark_infer.resources import scoring_profile
from spark_infer.runtime import PLACEMENT_PREFIX
from spark_infer.runtime.spec import ModelSpec, make_spec
from spark_infer.sessions import SessionCapabilities, build_session, capabilities
from spark_infer.sinks import OutputTable, open_sink
from spark_infer.tables import TableRef
from spark_infer.udf import output_schema, predict_frame


def lineage_schema() -> list[StructField]:
    types = {"input_version": LongType(), "scored_at": TimestampType()}
    return [StructField(c, types.get(c, StringType())) for c in LINEAGE_COLUMNS]


class ScoringJob:
    """One run of a configured job.

        job = ScoringJob(JobConfig(input="/data/in", output="/data/out"), spark)
        summary = job.run()          # plan, score and commit; summary.units_committed ...

    `run()` raises on errors that end the run (ConfigError, ConcurrentRunError, Spark failures) and
    leaves what it did so far in `summary`; `spark_infer.run` turns that into exit codes and records.
    """

    def __init__(self, cfg: JobConfig, spark: SparkSession | None = None, sink: OutputTable | None = None) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:16]
        self.summary = RunSummary(run_id=self.run_id, job_name=cfg.job_name, input=cfg.input,
                                  output=cfg.output, task=cfg.task)
        self.summary.config_hash = hashlib.sha256(
            json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()[:16]
        self.summary.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.spark: SparkSession | None = spark
        self.caps: SessionCapabilities | None = None
        self.sink: OutputTable | None = sink
        self.stop_requested = threading.Event()
        #: every Spark job of this run carries this tag (what a stop cancels)
        self.tag = f"spark-infer-{self.run_id}"
        # set by the stages below
        self.spec: ModelSpec | None = None
        self.plan: planning.Plan | None = None
        self.unit_cols: list[str] = []
        self.input_df: DataFrame | None = None
        self.input_expr: str | list[str] = cfg.text_col
        self.keys: list[str] = []
        self.expected_schema: StructType | None = None

    def request_stop(self) -> None:
        """SIGTERM/preemption: start no new unit and cancel in-flight ones (nothing half-written:
        an uncommitted write leaves no trace)."""
        self.stop_requested.set()
        if self.caps is not None:
            self.caps.cancel_tag(self.tag)

    def run(self) -> RunSummary:
        """Resolve the model, plan, then score and commit every pending unit."""
        self.resolve_model()
        self.make_plan()
        if not self.cfg.dry_run and not self.stop_requested.is_set():
            self.score_and_commit()
        return self.summary

    # -- stages ---------------------------------------------------------------------------------
    def resolve_model(self) -> ModelSpec:
        """Task, options and model checked and fingerprinted before Spark starts."""
        if self.spec is None:
            t0 = time.monotonic()
            self.spec = make_spec(self.cfg.task, self.cfg.model, **self.cfg.task_option_values())
            self.summary.model = self.spec.reference
            self.summary.model_fingerprint = self.spec.fingerprint
            self.summary.durations_s["fingerprint"] = round(time.monotonic() - t0, 3)
        return self.spec

    def open_session(self) -> SparkSession:
        """The session (built if none was given) with Delta checked; DeltaMissing if it lacks Delta."""
        if self.spark is None:
            t0 = time.monotonic()
            conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(self.cfg.arrow_batch_size),
                    **self.cfg.spark_conf}
            self.spark = build_session(self.cfg.job_name, self.cfg.master, conf, self.cfg.delta_jars)
            self.summary.durations_s["session_start"] = round(time.monotonic() - t0, 3)
        if self.caps is None:
            self.caps = capabilities(self.spark)
            if not self.caps.delta_available():
                raise DeltaMissing("Delta Lake classes are not on this Spark session's classpath")
            # runtime conf also applies to a session we did not create (notebook, spark-submit)
            self.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.arrow_batch_size))
        if self.sink is None:
            self.sink = open_sink(self.cfg.output_format, self.spark, self.cfg.output,
                                  change_data_feed=self.cfg.change_data_feed, runs_table=self.cfg.runs_table_ref)
        return self.spark

    def make_plan(self) -> planning.Plan:
        cfg, spec = self.cfg, self.resolve_model()
        spark = self.open_session()
        t0 = time.monotonic()
        inp = TableRef(cfg.input)
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
            self.input_expr = cfg.text_col
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
            df = df.withColumn(BUCKET_COLUMN, planning.bucket_expr(cfg.id_col, cfg.buckets))
            tag = f"b{cfg.buckets}:"
        self.unit_cols, self.input_df = unit_cols, df
        self.expected_schema = self._expected_schema(df, unit_cols)
        self.summary.input_version = version
        units = planning.input_units(df, unit_cols, hashed, tag=tag)
        committed: dict = {}
        sink = self.sink
        if sink.exists():
            sink.check_compatible(self.expected_schema, unit_cols)
            self.summary.output_version_before = sink.version()
            committed = sink.committed_units(unit_cols)
        pending, done, stale, orphaned = planning.decide(units, committed, spec.fingerprint, cfg.on_model_change)
        self.plan = planning.Plan(tuple(unit_cols), bucketed, version, pending, done, stale, orphaned)
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
        cfg, _spark, spec, p, sink, caps = self.cfg, self.spark, self.spec, self.plan, self.sink, self.caps
        profile = scoring_profile(caps, cfg.gpus_per_task, cfg.cpus_per_task)  # fails before any write
        sink.ensure(self.expected_schema, list(self.unit_cols))
        base_version = sink.version()
        if self.summary.output_version_before is None:
            self.summary.output_version_before = base_version
        parallelism = cfg.score_partitions or caps.default_parallelism()
        acc = caps.counters_accumulator()
        lock = threading.Lock()
        conflict: list[BaseException] = []

        def score_unit(unit: planning.Unit, reason: str) -> None:
            label = unit.label(self.unit_cols)
            where = planning.unit_filter(self.unit_cols, unit)
            t0 = time.monotonic()
            caps.tag_current_thread(self.tag)
            try:
                if conflict or self.stop_requested.is_set():
                    return  # a concurrent writer or a stop request: start no new work
                src = self.input_df.where(where)
                if parallelism > 1 and unit.rows > 1:
                    src = src.repartition(min(parallelism, unit.rows))
                scored = predict_frame(
                    src, self.input_expr, spec=spec, runtime=cfg.runtime, profile=profile, keys=self.keys,
                    output_col=cfg.prediction_col, metrics=acc,
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
                sink.write_units(scored, where, label, base_version)
            except Exception as exc:  # noqa: BLE001 - one unit's failure must not lose the others
                if sink.is_conflict(exc):
                    conflict.append(exc)
                    return
                if self.stop_requested.is_set():
                    with lock:
                        self.summary.units_abandoned.append(label)
                    event("unit_abandoned", unit=label, reason="stop_requested")
                    return
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                with lock:
                    self.summary.units_failed[label] = msg[:2000]
                event("unit_failed", unit=label, reason=reason, error=msg[:300])
                return
            finally:
                caps.untag_current_thread(self.tag)
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
        counters: dict[str, Any] = dict(acc.value) if acc is not None else {}
        self.summary.counters = {k: v for k, v in counters.items() if not k.startswith(PLACEMENT_PREFIX)}
        self.summary.placement = sorted(k[len(PLACEMENT_PREFIX):] for k in counters if k.startswith(PLACEMENT_PREFIX))
        self.summary.durations_s["score_commit"] = round(time.monotonic() - t_all, 3)
        self.summary.output_version_after = sink.version()
