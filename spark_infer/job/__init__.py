"""The scoring job: config -> plan -> score -> check -> commit -> report, one module per stage.

    from spark_infer.job import ScoringJob
    job = ScoringJob(JobConfig(input="/data/in", output="/data/out"), spark)
    summary = job.run()          # plan, score and commit; summary.units_committed ...

`ScoringJob` only sequences the stages; the lifecycle around it (signals, exit codes, the run
record) is `spark_infer.run`. Where each stage lives:

- `shape.py`: input/unit columns, the output's schema and layout (config errors, no Spark job);
- `planner.py` reads the input's units and what the output holds; `spark_infer.plan` decides (pure,
  shared with the plan's printing in `spark_infer.report`);
- `groups.py` scores one commit group into staged rows; `checks.py` checks each unit's rows;
- `commit.py` adds lineage and writes through the sink (`spark_infer.sinks`: the commit protocol);
- `scheduler.py` keeps groups in flight, handles stops and conflicts, and reports progress;
- `session.py` holds the Spark session, its capabilities, confs set for this run, stage tags.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Sequence

from pyspark.sql import SparkSession

from spark_infer.config import JobConfig
from spark_infer.errors import ConfigError, NeedsSparkSession, UnitsClaimed
from spark_infer.inputs import InputUnit
from spark_infer.job.checks import check_units, check_workers
from spark_infer.job.claims import RunClaims, wait_for_holders
from spark_infer.job.commit import GroupCommitter
from spark_infer.job.devices import place
from spark_infer.job.groups import GroupScorer
from spark_infer.job.planner import Planned, Planner
from spark_infer.job.scheduler import GroupResult, GroupScheduler
from spark_infer.job.session import JobSession
from spark_infer.job.staging import staging_for
from spark_infer.log import event
from spark_infer.plan import Plan, make_groups
from spark_infer.report import RunSummary
from spark_infer.resources import DevicePlan, scoring_profile
from spark_infer.runtime.spec import ModelSpec, make_spec
from spark_infer.sinks import ClaimsUnits, Committed, OutputTable, RecordsUnitFiles
from spark_infer.units import UnitColumn, UnitKey, key_json

__all__ = ["Plan", "ScoringJob"]


class ScoringJob:
    """One run of a configured job.

    `run()` raises on errors that end the run (ConfigError, ConcurrentRunError, Spark failures) and
    leaves what it did so far in `summary`; `spark_infer.run` turns that into exit codes and records.
    """

    def __init__(self, cfg: JobConfig, spark: SparkSession | None = None, sink: OutputTable | None = None) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:16]
        self.summary = RunSummary(run_id=self.run_id, job_name=cfg.job_name, input=cfg.input.table,
                                  output=cfg.output.table, task=cfg.task)
        self.summary.config_hash = hashlib.sha256(
            json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
        ).hexdigest()[:16]
        self.summary.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.stop_requested = threading.Event()
        #: every Spark job of this run carries this tag (what a stop cancels)
        self.session = JobSession(cfg, f"spark-infer-{self.run_id}", self.summary, spark, sink,
                                  stop=self.stop_requested)
        self.spec: ModelSpec | None = None
        self.devices: DevicePlan | None = None
        self.planned: Planned | None = None

    @property
    def plan(self) -> Plan | None:
        return self.planned.plan if self.planned is not None else None

    @property
    def sink(self) -> OutputTable | None:
        return self.session.sink

    def request_stop(self) -> None:
        """SIGTERM/preemption: start no new group and cancel in-flight ones (nothing half-written:
        an uncommitted write leaves no trace)."""
        self.stop_requested.set()
        self.session.cancel()

    def run(self) -> RunSummary:
        """Resolve the model, plan (once: what was printed is what runs), then score and commit."""
        try:
            self.resolve_model()
            self.make_plan()
            if self.planned.from_logs:  # nothing to do, known from the logs alone: no session, no write
                self.summary.plan["groups"] = 0
                self.summary.output_version_after = self.summary.output_version_before
            elif not self.cfg.dry_run and not self.stop_requested.is_set():
                self.score_and_commit()
        finally:
            self.session.restore_conf()  # a no-op when no conf was set (no session opened)
        return self.summary

    def resolve_model(self) -> ModelSpec:
        """Task, options and model checked, resolved and fingerprinted before Spark starts."""
        if self.spec is None:
            self.session.check_stop("model_resolution")
            t0 = time.monotonic()
            cfg = self.cfg
            for path in cfg.resources.py_files:  # the driver imports a custom predictor from them too
                entry = path if path.endswith((".zip", ".egg")) else os.path.dirname(path)
                if entry not in sys.path:
                    sys.path.insert(0, entry)

            def spec() -> ModelSpec:
                return make_spec(cfg.task, cfg.model.ref, revision=cfg.model.revision, **cfg.task_option_values())

            try:
                spec_any = spec()
            except NeedsSparkSession:  # a DDL type in the task options: Spark's own parser needs the session
                self.session.open()
                spec_any = spec()
            self.summary.durations_s["fingerprint"] = round(time.monotonic() - t0, 3)
            self.session.check_stop("device_placement")
            # where the workers score and in which precision: part of the fingerprint (outputs differ by both)
            self.spec, self.devices = place(cfg, spec_any, self.session, self.summary)
            self.summary.model = self.spec.reference
            self.summary.model_fingerprint = self.spec.fingerprint
            self.summary.model_assumed = list(self.spec.assumed)
            for note in self.spec.assumed:
                event("model_assumed", model=self.spec.reference, note=note)
        return self.spec

    def make_plan(self) -> Plan:
        if self.planned is None:
            self.session.check_stop("plan")
            self.planned = Planner(self.cfg, self.resolve_model(), self.session, self.summary).plan()
        return self.planned.plan

    def score_and_commit(self) -> None:
        """Every pending unit scored, checked and committed, group by group; orphans removed."""
        cfg, session, planned = self.cfg, self.session, self.planned
        p, shape, sink = planned.plan, planned.shape, session.sink
        session.check_stop("score_commit")
        refusal = p.mass_delete_refusal()  # before anything is written: exit 2
        if refusal:
            raise ConfigError(refusal)
        res = cfg.resources
        # the GPUs a scoring task asks for: gpus_per_task, else what the cluster's GPUs need (resources.plan_devices)
        profile = scoring_profile(session.caps, self.devices.gpus_per_task, res.cpus_per_task)  # fails before any write
        staging = staging_for(cfg, session.caps, session.spark, self.run_id)  # this too
        self.summary.staging = staging.kind
        # the version the run planned at (None: no table then): every commit names it, so a second
        # writer of the same units that planned before this run's commits cannot commit them again
        plan_version = self.summary.output_version_before
        with session.stage("score_commit"):
            sink.ensure(shape.schema, shape.unit_cols, shape.layout)
            if planned.files_learned and isinstance(sink, RecordsUnitFiles) and not self.stop_requested.is_set():
                # units compacted, not changed: one small commit beside the output, no output row rewritten
                sink.record_files(planned.files_learned, self.run_id)
            if plan_version is None:
                self.summary.output_version_before = sink.version()
        session.set_conf("spark.sql.files.maxRecordsPerFile", str(cfg.output.rows_per_file))
        metrics = session.caps.counters_accumulator()
        row_keys = frozenset(p.rows)
        scorer = GroupScorer(cfg, self.spec, shape, planned.input_df,
                             res.tasks_per_group or session.caps.default_parallelism(), profile, metrics, staging,
                             planned.diff, row_keys)
        committer = GroupCommitter(cfg, self.spec, shape, sink, session.spark, self.run_id, p.input_version,
                                   -1 if plan_version is None else plan_version, planned.diff, row_keys)
        t_all = time.monotonic()
        self._delete_orphans(committer)
        claims = sink.claims() if cfg.commit.claims and isinstance(sink, ClaimsUnits) else None
        elsewhere = _DoneElsewhere(sink, shape.unit_cols, self.spec.fingerprint, self.run_id,
                                   -1 if plan_version is None else plan_version) if claims is not None else None

        def score_group(units: Sequence[InputUnit]) -> GroupResult:
            if elsewhere is not None:
                units = elsewhere.drop(units, p, self.summary)  # an overlapping run committed them since the plan
                if not units:
                    return GroupResult()
            staged = scorer.stage(units, p.label(units[0].key), sum(p.score_rows(u) for u in units))
            counters: dict[str, int] = {}
            try:
                stats = staged.unit_stats()
                counters = staged.counters()
                ok, failed = check_units(stats, {u.key: u for u in units}, shape.unit_cols, cfg.commit.max_error_rate,
                                         {u.key: p.rows[u.key] for u in units if u.key in row_keys})
                check_workers(counters, self.spec)  # scored where and how the fingerprint says, or no commit
                if ok:
                    committer.commit(staged, ok)
            except Exception as exc:
                if not counters:
                    raise
                return GroupResult([], {}, counters, error=exc)  # scored, not committed: the record counts it
            finally:
                staged.release()
            done = {c.unit.key for c in ok}
            return GroupResult([u for u in units if u.key in done], failed, counters)

        scheduler = GroupScheduler(p, self.summary, session, self.stop_requested, res.concurrent_groups,
                                   cfg.report.progress_interval_s)
        reasons = {u.key: why for u, why in p.pending}
        todo = [u for u, _ in p.pending]
        self.summary.plan["groups"] = 0
        while todo and not self.stop_requested.is_set():
            groups = [[u for u, _ in g] for g in
                      make_groups([(u, reasons[u.key]) for u in todo], cfg.commit.group_rows, cfg.commit.group_units,
                                  p.score_rows)]
            self.summary.plan["groups"] += len(groups)
            held = None
            if claims is not None:
                held = RunClaims(claims, self.run_id, cfg.job_name,
                                 [[key_json(shape.unit_cols, u.key) for u in g] for g in groups],
                                 cfg.commit.claim_ttl_s, 2 * res.concurrent_groups, self.stop_requested)
            try:
                scheduler.run(groups, score_group, metrics, held)
            finally:
                if held is not None:
                    held.close()
            if held is None or not held.deferred or self.stop_requested.is_set():
                break
            deferred = [u for j in sorted(held.deferred) for u in groups[j]]
            if cfg.commit.on_claimed == "exit":
                raise UnitsClaimed(_claimed_message(held, deferred, p, sink.ref, len(self.summary.units_committed)))
            wait_for_holders(claims, held.deferred_units(), self.run_id, self.stop_requested,
                             max(1.0, min(10.0, cfg.commit.claim_ttl_s / 10)))
            todo = elsewhere.drop(deferred, p, self.summary, refresh=True)
        self.summary.durations_s["score_commit"] = round(time.monotonic() - t_all, 3)
        with session.stage("score_commit"):
            if cfg.output.optimize and self.summary.units_committed and not self.stop_requested.is_set():
                t0 = time.monotonic()
                sink.compact()
                self.summary.durations_s["optimize"] = round(time.monotonic() - t0, 3)
            self.summary.output_version_after = sink.version()
        session.count_jobs("score_commit")


    def _delete_orphans(self, committer: GroupCommitter) -> None:
        """Units the output holds but the input no longer has: deleted in one commit (`on_orphan`)."""
        p = self.planned.plan
        if p.orphaned and p.delete_orphans and not self.stop_requested.is_set():
            keys = [k for k, _ in p.orphaned]
            with self.session.stage("score_commit"):
                committer.delete(keys)
            self.summary.units_deleted = [p.label(k) for k in keys]
            event("units_deleted", units=len(keys), reason="not_in_input", first=p.label(keys[0]),
                  output=self.session.sink.ref)


class _DoneElsewhere:
    """Units an overlapping run committed after this run planned: found from the output's commits
    since the last look (one log read per group while nobody else commits), so that a unit whose
    claim this run won after the other run released it is not scored again."""

    def __init__(self, sink: OutputTable, columns: Sequence[UnitColumn], fingerprint: str, run_id: str,
                 version: int) -> None:
        self.sink, self.columns, self.fingerprint, self.run_id = sink, columns, fingerprint, run_id
        self.version = version
        self._committed: dict[UnitKey, Committed] | None = None
        self._lock = threading.Lock()

    def drop(self, units: Sequence[InputUnit], plan: Plan, summary: RunSummary, refresh: bool = False
             ) -> list[InputUnit]:
        """`units` less those the output now holds as this run would have written them."""
        with self._lock:
            newest, others = self.sink.commits_since(self.version, self.run_id)
            self.version = max(self.version, newest)
            if others or refresh:
                self._committed = self.sink.committed_units(self.columns)
            if self._committed is None:
                return list(units)
            keep = []
            for u in units:
                c = self._committed.get(u.key)
                if c is not None and c.fingerprint == self.fingerprint and c.rows == u.rows and (
                        (u.files is not None and c.files == u.files) or (u.state is not None and c.state == u.state)):
                    summary.units_done_elsewhere.append(plan.label(u.key))
                else:
                    keep.append(u)
            if len(keep) < len(units):
                event("units_done_elsewhere", units=len(units) - len(keep), first=plan.label(units[0].key))
            return keep


def _claimed_message(held: RunClaims, deferred: Sequence[InputUnit], plan: Plan, output: str, committed: int) -> str:
    now = int(time.time() * 1000)
    holders = {c.run_id: c for c in held.holders.values()}
    who = "; ".join(c.describe(now) for c in list(holders.values())[:3]) or "another run"
    return (f"{len(deferred)} unit(s) of {output} (first: {plan.label(deferred[0].key)}) are being scored by {who}; "
            f"this run committed the {committed} free unit(s) it planned. Nothing is wrong: rerun later, or set "
            "on_claimed: wait to wait for that run")
