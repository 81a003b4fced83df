"""The scoring job's stages: config -> plan -> score -> commit, one atomic commit per commit group.

`ScoringJob.run()` runs them in order and returns the run's `RunSummary`; the lifecycle around it
(signals, exit codes, the run record) is `spark_infer.run`. The job talks to the output through the
`OutputTable` protocol (`spark_infer.sinks`) and to Spark through the session's capabilities
(`spark_infer.sessions`).

A commit group (several small units, or one big unit) is scored in one Spark job whose results are
kept on the executors' disks (`persist`), checked per unit (row count, error rate, content state)
and then written in one commit: a unit above `max_error_rate` is left out and reported, never
committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import sys
import threading
import time
import uuid
from concurrent.futures import (
    ThreadPoolExecutor,
    TimeoutError,  # noqa: A004 - same as builtin since 3.11
)
from contextlib import contextmanager
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType, TimestampType

from spark_infer import plan as planning
from spark_infer.config import BUCKET_COLUMN, LINEAGE_COLUMNS, JobConfig
from spark_infer.errors import ConcurrentRunError, ConfigError, DeltaMissing, describe
from spark_infer.inputs import InputTable, InputUnit, content_state, content_states, row_hash
from spark_infer.log import event
from spark_infer.report import Progress, RunSummary
from spark_infer.resources import scoring_profile
from spark_infer.runtime import PLACEMENT_PREFIX
from spark_infer.runtime.spec import ModelSpec, make_spec
from spark_infer.sessions import SessionCapabilities, build_session, capabilities
from spark_infer.sinks import OutputTable, open_sink
from spark_infer.udf import METRICS_COL, output_schema, predict_frame, sum_counters
from spark_infer.units import UnitColumn, canonical_exprs, group_predicate, key_from_row, label, units_id

#: the row hash travels with each scored row (it becomes the unit's content state)
HASH_COL = "__spark_infer_row_hash"


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
        self.input = InputTable(cfg.input)
        self.plan: planning.Plan | None = None
        self.unit_cols: list[UnitColumn] = []
        self.input_df: DataFrame | None = None
        self.input_expr: str | list[str] = cfg.text_col
        self.hashed: list[str] = []
        self.keys: list[str] = []
        self.expected_schema: StructType | None = None
        self.layout: dict[str, str] = {}
        self._restore_conf: dict[str, str | None] = {}

    def request_stop(self) -> None:
        """SIGTERM/preemption: start no new group and cancel in-flight ones (nothing half-written:
        an uncommitted write leaves no trace)."""
        self.stop_requested.set()
        if self.caps is not None:
            self.caps.cancel_tag(self.tag)

    def run(self) -> RunSummary:
        """Resolve the model, plan, then score and commit every pending unit."""
        try:
            self.resolve_model()
            self.make_plan()
            if not self.cfg.dry_run and not self.stop_requested.is_set():
                self.score_and_commit()
        finally:
            self._restore_session_conf()
        return self.summary

    # -- stages ---------------------------------------------------------------------------------
    def resolve_model(self) -> ModelSpec:
        """Task, options and model checked, resolved and fingerprinted before Spark starts."""
        if self.spec is None:
            t0 = time.monotonic()
            cfg = self.cfg
            for path in cfg.py_files:  # the driver imports a custom predictor from them too
                entry = path if path.endswith((".zip", ".egg")) else os.path.dirname(path)
                if entry not in sys.path:
                    sys.path.insert(0, entry)
            self.spec = make_spec(cfg.task, cfg.model, revision=cfg.model_revision,
                                  device_kind=self._device_kind(), **cfg.task_option_values())
            self.summary.model = self.spec.reference
            self.summary.model_fingerprint = self.spec.fingerprint
            self.summary.durations_s["fingerprint"] = round(time.monotonic() - t0, 3)
        return self.spec

    def _device_kind(self) -> str:
        """Where the workers will score: part of the fingerprint (outputs differ by device and precision)."""
        device = self.cfg.runtime.device
        if device in ("cpu", "cuda"):
            return device
        if self.cfg.gpus_per_task:
            return "cuda"
        master = self.cfg.master or ""
        if self.cfg.remote or os.environ.get("SPARK_REMOTE"):
            return "cpu"  # a Connect server's workers: GPUs need gpus_per_task (classic clusters)
        if master.startswith("local") or not master:
            from spark_infer.runtime.device import cuda_available

            return "cuda" if cuda_available() else "cpu"
        return "cpu"

    def open_session(self) -> SparkSession:
        """The session (built if none was given) with Delta checked; DeltaMissing if it lacks Delta."""
        if self.spark is None:
            t0 = time.monotonic()
            conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(self.cfg.arrow_batch_size),
                    **self.cfg.spark_conf}
            self.spark = build_session(self.cfg.job_name, self.cfg.master, conf, self.cfg.delta_jars, self.cfg.remote)
            self.summary.durations_s["session_start"] = round(time.monotonic() - t0, 3)
        if self.caps is None:
            self.caps = capabilities(self.spark)
            if not self.caps.delta_available():
                raise DeltaMissing("Delta Lake classes are not on this Spark session's classpath")
            # runtime conf also applies to a session we did not create (notebook, spark-submit)
            self._set_session_conf("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.arrow_batch_size))
            for path in self.cfg.py_files:
                self.caps.ship_python_file(path)
        if self.sink is None:
            self.sink = open_sink(
                self.cfg.output_format, self.spark, self.cfg.output, change_data_feed=self.cfg.change_data_feed,
                runs_table=self.cfg.runs_table_ref, txn_retention=self.cfg.txn_retention,
                stats_columns=[self.cfg.id_col, "input_state", "input_files", "model_fingerprint", "error"],
            )
        return self.spark

    def _set_session_conf(self, key: str, value: str) -> None:
        """Set a runtime conf for this run; the previous value comes back when the run ends."""
        if key not in self._restore_conf:
            self._restore_conf[key] = self.spark.conf.get(key, None)
        self.spark.conf.set(key, value)

    def _restore_session_conf(self) -> None:
        for key, value in self._restore_conf.items():
            try:
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)
            except Exception:  # noqa: BLE001 - the session may be gone (SIGTERM to the group)
                pass
        self._restore_conf.clear()

    def make_plan(self) -> planning.Plan:
        cfg, spec = self.cfg, self.resolve_model()
        t0 = time.monotonic()
        inp = self.input
        if not inp.read_log():  # a catalog table, or a log delta-rs cannot read: ask Spark
            self.open_session()
            t0 = time.monotonic()
            inp.read_spark(self.spark)
        self._shape(inp.schema, inp.partition_columns)  # config errors here need no Spark
        self.open_session()
        with self._stage("plan"):
            inp.read_spark(self.spark)
            if any(c.kind == "timestamp" for c in self.unit_cols):
                # Delta names timestamp partitions in the session time zone: two instants of a
                # daylight-saving fall-back hour would share one partition. UTC has no such hour.
                self._set_session_conf("spark.sql.session.timeZone", "UTC")
            df = inp.read(self.spark)
            if self.plan_bucketed:
                df = df.withColumn(BUCKET_COLUMN, planning.bucket_expr(cfg.id_col, cfg.buckets))
            self.input_df = df
            self.summary.input_version = inp.version
            committed: dict = {}
            sink = self.sink
            if sink.exists():
                sink.check_compatible(self.expected_schema, self.unit_cols, self.layout)
                self.summary.output_version_before = sink.version()
                committed = sink.committed_units(self.unit_cols)
            units = self._input_units(committed)
            pending, done, stale, orphaned = planning.decide(
                units, committed, spec.fingerprint, cfg.on_model_change, cfg.rescore_errors)
            self.plan = planning.Plan(tuple(self.unit_cols), self.plan_bucketed, inp.version, pending, done, stale,
                                      orphaned, delete_orphans=cfg.on_orphan == "delete")
        self.summary.plan = self.plan.counts()
        self.summary.durations_s["plan"] = round(time.monotonic() - t0, 3)
        self._count_jobs("plan")
        return self.plan

    def _shape(self, schema: StructType, partition_columns: list[str]) -> None:
        """Input columns, unit columns, output schema and layout, checked against the input's schema."""
        cfg, spec = self.cfg, self.spec
        cols = [f.name for f in schema.fields]
        if cfg.id_col not in cols:
            raise ConfigError(f"config field 'id_col'={cfg.id_col!r}: no such column in input (columns: {cols})")
        task_cols = spec.input_columns()
        if task_cols is None:
            if cfg.text_col not in cols:
                raise ConfigError(
                    f"config field 'text_col'={cfg.text_col!r}: no such column in input (columns: {cols})"
                )
            self.input_expr, self.hashed = cfg.text_col, [cfg.id_col, cfg.text_col]
        else:
            missing = [c for c in task_cols if c not in cols]
            if missing:
                raise ConfigError(
                    f"task {cfg.task!r} reads columns {missing} that the input lacks (columns: {cols})"
                )
            self.input_expr, self.hashed = list(task_cols), [cfg.id_col, *task_cols]
        names = list(cfg.partition_by) if cfg.partition_by is not None else list(partition_columns)
        for c in names:
            if c not in cols:
                raise ConfigError(f"config field 'partition_by'={c!r}: no such column in input (columns: {cols})")
        self.plan_bucketed = not names
        if self.plan_bucketed:
            if BUCKET_COLUMN in cols:
                raise ConfigError(f"the input has a column {BUCKET_COLUMN!r}, the name of spark-infer's id buckets: "
                                  "set partition_by, or rename it")
            self.unit_cols = [UnitColumn(BUCKET_COLUMN, "int")]
            key_fields = [schema[cfg.id_col], StructField(BUCKET_COLUMN, IntegerType())]
        else:
            self.unit_cols = [UnitColumn.of(c, schema[c].dataType) for c in names]
            key_fields = [schema[cfg.id_col], *[schema[c] for c in names if c != cfg.id_col]]
        self.keys = [f.name for f in key_fields]
        base = output_schema(spec, key_fields, cfg.prediction_col)
        clash = [c for c in LINEAGE_COLUMNS if c in [f.name for f in base.fields]]
        if clash:
            raise ConfigError(f"input columns {clash} clash with spark-infer's lineage columns; rename them")
        if cfg.prediction_col in self.keys or "error" in self.keys:
            raise ConfigError(f"config field 'output_col'={cfg.prediction_col!r} clashes with a key column")
        self.expected_schema = StructType(
            [*[StructField(f.name, f.dataType, True) for f in base.fields], *lineage_schema()])
        self.layout = {"spark_infer.id_col": cfg.id_col,
                       "spark_infer.units": ",".join(c.name for c in self.unit_cols) or "-"}
        if self.plan_bucketed:
            self.layout["spark_infer.buckets"] = str(cfg.buckets)

    def _input_units(self, committed: dict) -> list[InputUnit]:
        """The input's units with their states, reading rows only where the log cannot tell."""
        cols, df = self.unit_cols, self.input_df
        by_unit = self.input.files_by_unit(cols) if not self.plan_bucketed else None
        if by_unit is not None:
            known: dict = {}
            need = []
            for key, files in by_unit.items():
                c = committed.get(key)
                if c is not None and c.files == files.state and c.rows == files.rows:
                    known[key] = InputUnit(key, files.rows, c.state, files.state)
                elif c is not None:
                    need.append(key)  # its files changed: did its rows? (a compaction rewrites files only)
                elif files.rows:
                    known[key] = InputUnit(key, files.rows, None, files.state)  # new: state computed when scored
            for key, (rows, state) in content_states(df, cols, self.hashed, need).items():
                known[key] = InputUnit(key, rows, state, by_unit[key].state if key in by_unit else None)
            return list(known.values())
        everything = self.input.all_files()
        files = everything.state if everything is not None else None
        if (files is not None and committed and all(c.files == files for c in committed.values())
                and sum(c.rows for c in committed.values()) == everything.rows):
            # nothing changed since every unit was scored from these very files
            return [InputUnit(k, c.rows, c.state, files) for k, c in committed.items()]
        return [InputUnit(k, n, s, files) for k, (n, s) in content_states(df, cols, self.hashed).items()]

    @contextmanager
    def _stage(self, stage: str):
        """Tag this thread's Spark jobs with the run (what a stop cancels) and count them by stage."""
        self.caps.enter_stage(self.tag, f"{self.tag}:{stage}")
        try:
            yield
        finally:
            self.caps.leave_stage(self.tag, f"{self.tag}:{stage}")

    def _count_jobs(self, stage: str) -> None:
        n = self.caps.jobs_in_stage(f"{self.tag}:{stage}")
        if n is not None:
            self.summary.spark_jobs[stage] = n

    def score_and_commit(self) -> None:
        cfg, p, sink, caps = self.cfg, self.plan, self.sink, self.caps
        profile = scoring_profile(caps, cfg.gpus_per_task, cfg.cpus_per_task)  # fails before any write
        with self._stage("score_commit"):
            sink.ensure(self.expected_schema, self.unit_cols, self.layout)
            base_version = sink.version()
        if self.summary.output_version_before is None:
            self.summary.output_version_before = base_version
        self._set_session_conf("spark.sql.files.maxRecordsPerFile", str(cfg.rows_per_file))
        parallelism = cfg.score_partitions or caps.default_parallelism()
        acc = caps.counters_accumulator()
        groups = planning.make_groups(p.pending, cfg.group_rows, cfg.group_units)
        self.summary.plan["groups"] = len(groups)
        lock = threading.Lock()
        conflict: list[BaseException] = []
        counters: dict[str, int] = {}
        t_all = time.monotonic()

        if p.orphaned and p.delete_orphans and not self.stop_requested.is_set():
            keys = [k for k, _ in p.orphaned]
            with self._stage("score_commit"):
                sink.delete_units(group_predicate(self.unit_cols, keys), units_id(self.unit_cols, keys), base_version,
                                  self.run_id)
            self.summary.units_deleted = [p.label(k) for k in keys]
            event("units_deleted", units=len(keys), reason="not_in_input",
                  first=p.label(keys[0]), output=sink.ref)

        def score(group: list[tuple[InputUnit, str]]) -> None:
            caps.enter_stage(self.tag, f"{self.tag}:score_commit")
            t0 = time.monotonic()
            labels = [p.label(u.key) for u, _ in group]
            try:
                if conflict or self.stop_requested.is_set():
                    return  # a concurrent writer or a stop request: start no new work
                committed_units, failed, got = self._score_group(group, base_version, parallelism, profile, acc)
            except Exception as exc:  # noqa: BLE001 - one group's failure must not lose the others
                if sink.is_conflict(exc):
                    conflict.append(exc)
                    return
                if self.stop_requested.is_set():
                    with lock:
                        self.summary.units_abandoned += labels
                    event("group_abandoned", units=len(labels), first=labels[0], reason="stop_requested")
                    return
                msg = describe(exc)
                with lock:
                    for lab in labels:
                        self.summary.units_failed[lab] = msg
                event("group_failed", units=len(labels), first=labels[0], error=msg[:300])
                return
            finally:
                caps.leave_stage(self.tag, f"{self.tag}:score_commit")
            with lock:
                for k, v in got.items():
                    counters[k] = counters.get(k, 0) + v
                for lab, why in failed.items():
                    self.summary.units_failed[lab] = why
                    event("unit_failed", unit=lab, error=why[:300])
                for u, lab in committed_units:
                    self.summary.units_committed.append(lab)
                    self.summary.rows_scored += u.rows
                if committed_units:
                    progress.group_done([lab for _, lab in committed_units], sum(u.rows for u, _ in committed_units),
                                        time.monotonic() - t0)

        # A few groups in flight at once hide Spark's per-job latency (planning, commit) behind
        # another group's scoring; each group is still its own atomic commit.
        tasks_now = caps.watch_tasks() if acc is None else None
        with (
            Progress(len(p.pending), p.pending_rows, interval_s=cfg.progress_interval_s,
                     rows_now=(lambda: (acc.value or {}).get("rows", 0)) if acc is not None else None,
                     tasks_now=tasks_now) as progress,
            ThreadPoolExecutor(max_workers=max(1, cfg.concurrent_units), thread_name_prefix="group") as pool,
        ):
            futures = [pool.submit(score, g) for g in groups]
            for f in futures:
                # a bounded wait keeps the main thread responsive to SIGTERM
                while not f.done():
                    try:
                        f.result(timeout=0.5)
                    except TimeoutError:
                        continue
        caps.stop_watching()
        if conflict:
            raise ConcurrentRunError(
                f"another run wrote to {cfg.output} concurrently; committed units are kept, rerun to finish"
            ) from conflict[0]
        self.summary.counters = {k: v for k, v in counters.items() if not k.startswith(PLACEMENT_PREFIX)}
        self.summary.placement = sorted(k[len(PLACEMENT_PREFIX):] for k in counters
                                        if k.startswith(PLACEMENT_PREFIX) and "|gpu_mem|" not in k)
        for k, v in counters.items():  # the peak GPU memory of each (worker process, device)
            if k.startswith(f"{PLACEMENT_PREFIX}gpu_mem|"):
                _, _, pid, device, _ = k.split("|")
                key = f"{pid}|{device}"
                self.summary.gpu_memory_peak[key] = max(self.summary.gpu_memory_peak.get(key, 0), v)
        self.summary.durations_s["score_commit"] = round(time.monotonic() - t_all, 3)
        with self._stage("score_commit"):
            if cfg.optimize and self.summary.units_committed and not self.stop_requested.is_set():
                t0 = time.monotonic()
                sink.compact()
                self.summary.durations_s["optimize"] = round(time.monotonic() - t0, 3)
            self.summary.output_version_after = sink.version()
        self._count_jobs("score_commit")

    def _score_group(self, group: list[tuple[InputUnit, str]], base_version: int, parallelism: int, profile: Any,
                     acc: Any) -> tuple[list[tuple[InputUnit, str]], dict[str, str], dict[str, int]]:
        """Score one group, check each unit, commit the good ones: (committed, failed, counters)."""
        from pyspark import StorageLevel

        cfg, spec, cols, p = self.cfg, self.spec, self.unit_cols, self.plan
        units = {u.key: u for u, _ in group}
        rows = sum(u.rows for u in units.values())
        src = self.input_df.where(group_predicate(cols, list(units)))
        src = src.withColumn(HASH_COL, row_hash(src, self.hashed))
        if parallelism > 1 and rows > 1:
            src = src.repartition(min(parallelism, rows))
        scored = predict_frame(
            src, self.input_expr, spec=spec, runtime=cfg.runtime, profile=profile, keys=[*self.keys, HASH_COL],
            output_col=cfg.prediction_col, metrics=acc, metric_rows=True,
        ).persist(StorageLevel.DISK_ONLY)
        try:
            data = scored.where(F.col(METRICS_COL).isNull()).selectExpr("*", *canonical_exprs(cols))
            kcols = [f"__k{i}" for i in range(len(cols))]
            stats = data.groupBy(*kcols).agg(
                F.count(F.lit(1)).alias("__n"), F.count("error").alias("__errors"),
                F.sum(F.col(HASH_COL).cast("decimal(38,0)")).alias("__h"),
            ).collect()
            # one metric row per Spark task: few enough to sum here, without a shuffle (one Spark job)
            counters = sum_counters([r[0] for r in scored.where(F.col(METRICS_COL).isNotNull())
                                     .select(METRICS_COL).collect()])
            ok_rows, failed = [], {}
            for r in stats:
                key = key_from_row(cols, r)
                lab, n, errors = label(cols, key), int(r["__n"]), int(r["__errors"])
                unit = units.get(key)
                if unit is None or n != unit.rows:
                    failed[lab] = (f"read {n} rows, the plan expected {unit.rows if unit else 0}: the input changed "
                                   "under its pinned version")
                elif errors > cfg.max_error_rate * n:
                    failed[lab] = (f"{errors} of {n} rows failed to score ({errors / n:.1%} > max_error_rate "
                                   f"{cfg.max_error_rate:.1%}); nothing of this unit was committed. See the rows' "
                                   "errors with on_error=fail, or raise max_error_rate")
                else:
                    ok_rows.append((r, key, content_state(n, r["__h"])))
            seen = {key_from_row(cols, r) for r in stats}
            for key, unit in units.items():
                if key not in seen:
                    failed[label(cols, key)] = f"read 0 rows, the plan expected {unit.rows}"
            if not ok_rows:
                return [], failed, counters
            ok_keys = [key for _, key, _ in ok_rows]
            states_schema = StructType([*[StructField(f"__s{i}", data.schema[kcols[i]].dataType) for i in range(len(cols))],
                                        StructField("__state", StringType()), StructField("__files", StringType())])
            states = self.spark.createDataFrame(
                [(*[r[k] for k in kcols], state, units[key].files) for r, key, state in ok_rows], states_schema)
            cond = [data[kcols[i]].eqNullSafe(states[f"__s{i}"]) for i in range(len(cols))]
            out = data.join(F.broadcast(states), on=cond, how="inner").select(
                *[F.col(f.name) for f in self.expected_schema.fields if f.name not in LINEAGE_COLUMNS],
                F.lit(spec.reference).alias("model"),
                F.lit(spec.fingerprint).alias("model_fingerprint"),
                F.lit(cfg.task).alias("task"),
                F.lit(self.run_id).alias("run_id"),
                F.lit(p.input_version).cast("long").alias("input_version"),
                F.col("__state").alias("input_state"),
                F.col("__files").alias("input_files"),
                F.current_timestamp().alias("scored_at"),
            )
            ok_n = sum(units[k].rows for k in ok_keys)
            files = max(1, math.ceil(ok_n / cfg.rows_per_file))
            # one unit per write task (its rows in files of at most rows_per_file); a big unit alone
            # in its group is spread over several tasks
            out = out.repartition(files) if len(ok_keys) == 1 else out.repartition(files, *[c.name for c in cols])
            out = out.select(*[f.name for f in self.expected_schema.fields])
            self.sink.write_units(out, group_predicate(cols, ok_keys), units_id(cols, ok_keys), base_version,
                                  self.run_id)
            order = {u.key: i for i, (u, _) in enumerate(group)}
            ok_keys.sort(key=order.__getitem__)
            return [(units[k], label(cols, k)) for k in ok_keys], failed, counters
        finally:
            try:
                scored.unpersist()
            except Exception:  # noqa: BLE001 - a stop may interrupt it; the cache goes with the session
                pass
