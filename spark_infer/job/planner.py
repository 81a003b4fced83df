"""Planning: read the input's units and what the output holds, as cheaply as they allow, and decide.

The input is pinned at one version from its Delta log (delta-rs, no Spark job) where it can be, else
through Spark. A unit whose files are the ones its output rows were scored from is unchanged without
reading a row; only units whose files changed (a compaction, an update) are content-hashed. The
decisions themselves are `plan.decide`, pure.

A unit whose files changed but whose content did not (a compaction) is recorded after planning in the
output's unit-files records (`sinks.RecordsUnitFiles`, where the sink keeps them): its new files state
maps to the content state its rows were scored from, so the next run finds it unchanged without
reading a row. A record is used only when its files state is the unit's current one and its content
state the one the output's rows record; anything else is hashed as before.

A run with nothing to do ends without starting Spark (`Planner._plan_from_logs`): when no session was
given or is active, the master is local, both tables are Delta paths whose logs delta-rs reads, every
unit's state is known from them (no row to hash), the output needs no upgrade and the plan leaves
nothing pending, nothing to delete and nothing learned. The run's record then says `session_kind:
"none"`, `spark_jobs: {"plan": 0}` and has no `session_start` duration. In any other case the plan is
made with the session, exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spark_infer.delta_log import open_log
from spark_infer.errors import ConfigError
from spark_infer.inputs import InputTable, InputUnit, content_states
from spark_infer.job.changefeed import FeedPlan, feed_enabled, read_feed
from spark_infer.job.devices import known_local
from spark_infer.job.fit import check_fits_udf_memory
from spark_infer.job.rowdiff import RowDiff, check_unique_ids
from spark_infer.job.shape import JobShape, shape_of
from spark_infer.log import event
from spark_infer.plan import NEW, Plan, bucket_expr, decide
from spark_infer.sinks import FilesRecord, RecordsUnitFiles, RowsAtVersion
from spark_infer.tables import TableRef
from spark_infer.units import key_json

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyspark.sql import DataFrame

    from spark_infer.config import JobConfig
    from spark_infer.job.session import JobSession
    from spark_infer.report import RunSummary
    from spark_infer.runtime.spec import ModelSpec
    from spark_infer.sinks import Committed, OutputTable
    from spark_infer.units import UnitColumn, UnitKey

log = logging.getLogger("spark_infer")

#: `Planner._row_diff`: the change feed did not explain a unit's rows; plan again by hashing
_FEED_DOUBT = object()


@dataclass(frozen=True)
class Planned:
    """A plan with what scoring it needs: the job's shape and the input pinned at the plan's version."""

    plan: Plan
    shape: JobShape
    #: None for a plan from the logs alone (no session: nothing to score)
    input_df: DataFrame | None
    #: units done (or kept) whose files changed but not their content: what the run records
    files_learned: tuple[FilesRecord, ...] = field(default=())
    #: planned from the two Delta logs with no session, and nothing to do: the run ends without Spark
    from_logs: bool = False
    #: the row-level diff of the plan's row-grain units (`plan.rows`), None at unit grain
    diff: RowDiff | None = None


class Planner:
    """Builds the run's one plan (what `--dry-run` prints is what runs)."""

    def __init__(self, cfg: JobConfig, spec: ModelSpec, session: JobSession, summary: RunSummary) -> None:
        self.cfg, self.spec, self.session, self.summary = cfg, spec, session, summary
        self.input = InputTable(cfg.input.table)
        #: the change feed this plan read (None: units hashed), and the unit-files records in use
        self._feed: FeedPlan | None = None
        self._known: _KnownFiles | None = None

    def plan(self) -> Planned:
        cfg, inp, session = self.cfg, self.input, self.session
        t0 = time.monotonic()
        if not inp.read_log():  # a catalog table, or a log delta-rs cannot read: ask Spark
            session.open()
            t0 = time.monotonic()
            inp.read_spark(session.spark)
        shape = shape_of(cfg, self.spec, inp.schema, inp.partition_columns)  # config errors need no Spark
        quiet = self._plan_from_logs(shape, t0)
        if quiet is not None:
            return quiet
        spark = session.open()
        limit = cfg.resources.udf_memory_limit or session.caps.udf_memory_limit
        if limit:
            where = "udf_memory_limit" if cfg.resources.udf_memory_limit else f"a {session.caps.kind} session"
            check_fits_udf_memory(self.spec, limit, where)
        with session.stage("plan"):
            inp.read_spark(spark)
            if any(c.kind == "timestamp" for c in shape.unit_cols):
                # Delta names timestamp partitions in the session time zone: two instants of a
                # daylight-saving fall-back hour would share one partition. UTC has no such hour.
                session.set_conf("spark.sql.session.timeZone", "UTC")
            df = inp.read(spark)
            if shape.bucketed:
                df = df.withColumn(shape.unit_cols[0].name, bucket_expr(cfg.input.id_col, cfg.input.buckets))
            self.summary.input_version = inp.version
            committed: dict[UnitKey, Committed] = {}
            sink = session.sink
            if sink.exists():
                sink.check_compatible(shape.schema, shape.unit_cols, shape.layout)
                self.summary.output_version_before = sink.version()
                committed = sink.committed_units(shape.unit_cols)
            # from the change feed where the input has one; hashing where that fails or leaves a doubt
            for use_feed in ((True, False) if self._feed_allowed(shape) else (False,)):
                self._feed = None
                known = _KnownFiles(sink, shape.unit_cols, shape.hashed)
                units = self._input_units(shape, df, committed, known, use_feed=use_feed)
                plan = self._decide(shape, units, committed)
                plan.output_rows = sum(c.rows for c in committed.values())
                if plan.pending:  # an id names one row: checked over every row this run scores or diffs
                    check_unique_ids(df, shape, [u.key for u, _ in plan.pending], cfg.input.id_col)
                diff = self._row_diff(shape, df, plan, committed)
                if diff is not _FEED_DOUBT:
                    break
        self.summary.plan = plan.counts()
        if self._feed is not None:  # the units diffed on the feed's ids alone (not a plan decision)
            self.summary.plan["units_from_feed"] = len(set(self._feed.changed) & set(plan.rows))
        self.summary.durations_s["plan"] = round(time.monotonic() - t0, 3)
        session.count_jobs("plan")
        settled = {u.key for u in (*plan.done, *plan.stale_model)}
        return Planned(plan, shape, df, tuple(r for k, r in known.learned.items() if k in settled), diff=diff)

    def _feed_allowed(self, shape: JobShape) -> bool:
        """Whether changed units may be planned from the input's change feed (row grain, the feed on
        in the config and enabled on the input, an output to diff against)."""
        cfg = self.cfg
        return (cfg.input.change_feed and cfg.commit.incremental == "row" and feed_enabled(self.input.properties)
                and self.summary.output_version_before is not None and isinstance(self.session.sink, RowsAtVersion))

    def _row_diff(self, shape: JobShape, df: DataFrame, plan: Plan, committed: dict[UnitKey, Committed]
                  ) -> RowDiff | None | object:
        """At row grain, the diff of the pending units the output holds rows for, counted into
        `plan.rows` (one Spark job); None at unit grain, or for an output that cannot give its rows
        at the plan's version; `_FEED_DOUBT` when the feed does not explain a unit's rows (plan again,
        hashing)."""
        cfg, sink, version = self.cfg, self.session.sink, self.summary.output_version_before
        if cfg.commit.incremental != "row" or version is None or not isinstance(sink, RowsAtVersion):
            return None
        feed = self._feed
        diff = RowDiff(self.session.spark, shape, df, self.input.table, sink, version, self.spec.fingerprint,
                       id_col=cfg.input.id_col, buckets=cfg.input.buckets, on_model_change=cfg.commit.on_model_change,
                       rescore_errors=cfg.commit.rescore_errors, feed=feed)
        keys = [u.key for u, why in plan.pending if why != NEW]
        if not keys:
            return diff
        t0 = time.monotonic()
        plan.rows = diff.counts(keys)
        self.summary.durations_s["row_diff"] = round(time.monotonic() - t0, 3)
        if feed is None:
            return diff
        # a unit planned from the feed: its rows now are the ones it keeps and scores
        pending, settled = [], []
        for u, why in plan.pending:
            rc = plan.rows.get(u.key)
            if u.key not in feed.changed or rc is None:
                pending.append((u, why))
                continue
            present = rc.kept + rc.score
            if shape.bucketed:
                u = dataclasses.replace(u, rows=present)
            elif present != u.rows:
                event("change_feed_not_used", reason=f"the feed leaves {present} rows in a unit of {u.rows}")
                return _FEED_DOUBT
            c = committed[u.key]
            if present == 0:  # every row of the unit deleted: an orphan, as hashing finds it
                plan.rows.pop(u.key)
                plan.orphaned.append((u.key, c))
            elif rc.score == 0 and rc.deleted == 0 and c.state is not None:
                # named by the feed, but equal (an update of a column the task does not read, or to the
                # same value): done, as hashing finds it; its new files are recorded
                plan.rows.pop(u.key)
                settled.append(dataclasses.replace(u, state=c.state))
            else:
                pending.append((u, why))
        plan.pending = pending
        plan.done.extend(settled)
        for u in settled:
            self._known.learn(u, committed[u.key])
        return diff

    def _decide(self, shape: JobShape, units: list[InputUnit], committed: dict[UnitKey, Committed]) -> Plan:
        """The plan's decisions (`plan.decide`) with the job's commit settings: one place for both ways
        of planning, so a plan from the logs alone decides exactly as the session's would."""
        c = self.cfg.commit
        pending, done, stale, orphaned = decide(units, committed, self.spec.fingerprint, c.on_model_change,
                                                c.rescore_errors)
        return Plan(tuple(shape.unit_cols), shape.bucketed, self.input.version, pending, done, stale, orphaned,
                    delete_orphans=c.on_orphan == "delete", max_orphan_share=c.max_orphan_share,
                    allow_mass_delete=c.allow_mass_delete)

    def _plan_from_logs(self, shape: JobShape, t0: float) -> Planned | None:
        """The plan from the two Delta logs alone, when that is certain and it leaves nothing to do:
        the run then starts no session (a no-op costs what reading the logs costs, not a JVM). None
        (plan with the session, as always) wherever one condition fails; see the module docstring."""
        cfg, session, inp = self.cfg, self.session, self.input
        res = cfg.resources
        if (inp.log is None or res.session_kind not in ("auto", "classic") or not known_local(cfg, session)
                or "spark.hadoop.fs.defaultFS" in res.spark_conf):  # a bare path could name other storage
            return None
        if cfg.report.record_runs and not TableRef(cfg.runs_table_ref).is_path:
            return None  # the record's row needs the catalog: Spark
        sink = session.log_sink()
        out = open_log(TableRef(cfg.output.table).location) if sink is not None else None
        if out is None:
            return None
        have = set(out.spark_schema().fieldNames())
        if (any(f.name not in have for f in shape.schema.fields)
                or any(k not in out.properties for k in (*shape.layout, "delta.setTransactionRetentionDuration"))):
            return None  # an output an older version wrote: the run upgrades it (the sink's `ensure`)
        if res.udf_memory_limit:  # a classic session has no cap of its own
            check_fits_udf_memory(self.spec, res.udf_memory_limit, "udf_memory_limit")
        try:
            sink.check_compatible(shape.schema, shape.unit_cols, shape.layout)
            version = sink.version()
            committed = sink.committed_units(shape.unit_cols)
            known = _KnownFiles(sink, shape.unit_cols, shape.hashed)
            units = self._input_units(shape, None, committed, known)
        except ConfigError:
            raise  # the same answer the session's plan would give (it reads the same log)
        except Exception as exc:  # noqa: BLE001 - something needs Spark after all: plan with it
            log.debug("no plan from the logs alone: %s: %s", type(exc).__name__, exc)
            return None
        if units is None:
            return None
        plan = self._decide(shape, units, committed)
        if plan.pending or (plan.orphaned and plan.delete_orphans) or known.learned:
            return None  # something to write: the session plans it (the same decisions) and scores
        s = self.summary
        s.input_version, s.output_version_before, s.session_kind = inp.version, version, "none"
        s.plan = plan.counts()
        s.durations_s["plan"] = round(time.monotonic() - t0, 3)
        s.spark_jobs["plan"] = 0
        return Planned(plan, shape, None, from_logs=True)

    def _input_units(self, shape: JobShape, df: DataFrame | None, committed: dict[UnitKey, Committed],
                     seen: _KnownFiles, use_feed: bool = False) -> list[InputUnit] | None:
        """The input's units with their states, reading rows only where the logs cannot tell; None
        when rows would have to be read but there is no `df` (a plan from the logs alone). With
        `use_feed`, units whose files changed are planned from the input's change feed where it can
        tell (`spark_infer.job.changefeed`), and hashed where it cannot."""
        cols = shape.unit_cols
        spark = self.session.spark
        self._known = seen
        by_unit = self.input.files_by_unit(cols, spark) if not shape.bucketed else None
        if by_unit is not None:
            known: dict[UnitKey, InputUnit] = {}
            need = []
            for key, files in by_unit.items():
                c = committed.get(key)
                if c is not None and c.rows == files.rows and (
                        c.files == files.state or seen.holds(key, files.state, c.rows, c.state)):
                    known[key] = InputUnit(key, files.rows, c.state, files.state)
                elif c is not None:
                    need.append(key)  # its files changed: did its rows? (a compaction rewrites files only)
                elif files.rows:
                    known[key] = InputUnit(key, files.rows, None, files.state)  # new: state computed when scored
            if need and df is None:
                return None
            if need and use_feed:
                feed = self._read_feed(shape, df, need)
                if feed is not None:
                    for key in need:
                        c, files = committed[key], by_unit[key]
                        if key in feed.changed:
                            known[key] = InputUnit(key, files.rows, feed.state, files.state)
                        elif files.rows == c.rows and c.state is not None:  # files rewritten, rows not
                            known[key] = seen.learn(InputUnit(key, files.rows, c.state, files.state), c)
                    need = [k for k in need if k not in known]
            for key, (rows, state) in content_states(df, cols, shape.hashed, need).items():
                known[key] = seen.learn(InputUnit(key, rows, state, by_unit[key].state if key in by_unit else None),
                                        committed.get(key))
            return list(known.values())
        # units that are not partitions (id buckets) can be in any file: the all-files state is compared
        everything = self.input.all_files(spark)
        files = everything.state if everything is not None else None
        if (files is not None and committed and sum(c.rows for c in committed.values()) == everything.rows
                and all(c.files == files or seen.holds(k, files, c.rows, c.state) for k, c in committed.items())):
            # nothing changed since every unit was scored from these very files (or their compaction)
            return [InputUnit(k, c.rows, c.state, files) for k, c in committed.items()]
        if df is None:
            return None
        if use_feed and committed and files is not None:
            feed = self._read_feed(shape, df, list(committed))
            if feed is not None and set(feed.changed) <= set(committed):  # a new bucket: hash them all
                # rows of a bucket the feed names are counted by its diff (kept + scored)
                return [InputUnit(k, c.rows, feed.state, files) if k in feed.changed
                        else seen.learn(InputUnit(k, c.rows, c.state, files), c) for k, c in committed.items()]
            self._feed = None
        return [seen.learn(InputUnit(k, n, s, files), committed.get(k))
                for k, (n, s) in content_states(df, cols, shape.hashed).items()]

    def _read_feed(self, shape: JobShape, df: DataFrame, keys: list[UnitKey]) -> FeedPlan | None:
        t0 = time.monotonic()
        cfg = self.cfg
        self._feed = read_feed(self.session.spark, self.input, shape, df, self.session.sink,
                               self.summary.output_version_before, keys, id_col=cfg.input.id_col,
                               buckets=cfg.input.buckets)
        self.summary.durations_s["change_feed"] = round(time.monotonic() - t0, 3)
        return self._feed


class _KnownFiles:
    """The sink's unit-files records (read once, when a unit's files changed), and what this plan
    learns for them: a unit hashed to the content state its output rows record, from other files."""

    def __init__(self, sink: OutputTable | None, columns: Sequence[UnitColumn], hashed: Sequence[str]) -> None:
        self.sink = sink if isinstance(sink, RecordsUnitFiles) else None
        self.columns = columns
        self.hashed = json.dumps(list(hashed), separators=(",", ":"), ensure_ascii=False)
        self._records: dict[tuple[str, str], set[tuple[int, str]]] | None = None
        self.learned: dict[UnitKey, FilesRecord] = {}

    def holds(self, key: UnitKey, files: str | None, rows: int, state: str | None) -> bool:
        """True when a record says the files `files` of unit `key` hold `rows` rows of content `state`
        (hashed over this job's columns): those files hold what the unit's rows were scored from."""
        if self.sink is None or files is None or state is None:
            return False
        if self._records is None:
            self._records = {}
            for r in self.sink.files_records() or ():
                if r.hashed == self.hashed:
                    self._records.setdefault((r.unit, r.files), set()).add((r.rows, r.state))
        # two different records for one files state (impossible but for a bug) are trusted for neither
        return self._records.get((key_json(self.columns, key), files)) == {(rows, state)}

    def learn(self, unit: InputUnit, c: Committed | None) -> InputUnit:
        """Note `unit` (just hashed) when it holds what its output rows were scored from, but in files
        its rows do not name."""
        if (self.sink is not None and c is not None and unit.files is not None and unit.state is not None
                and unit.state == c.state and unit.rows == c.rows and unit.files != c.files):
            self.learned[unit.key] = FilesRecord(key_json(self.columns, unit.key), unit.files, unit.rows,
                                                 unit.state, self.hashed)
        return unit
