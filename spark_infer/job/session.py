"""The job's hold on Spark: the session (built when none was given), its capabilities, the output
sink, runtime confs set for this run only, and the stage tags that a stop cancels and that count
Spark jobs per stage."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from spark_infer.errors import DeltaMissing, RunStopped
from spark_infer.log import event
from spark_infer.sessions import SessionCapabilities, build_session, capabilities
from spark_infer.sinks import OutputTable, open_sink
from spark_infer.tables import TableRef

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_infer.config import JobConfig
    from spark_infer.report import RunSummary

#: output columns that keep Delta statistics (what `committed_units` reads from the log)
STATS_COLUMNS = ("input_state", "input_files", "model_fingerprint", "error")


class JobSession:
    """Opens lazily (a plan from the Delta log needs no Spark), tags every Spark job of the run with
    `tag`, and puts back every conf it changed when the run ends. `stop` is the run's stop request:
    `check_stop` (at each stage boundary, and around the session's start) ends the run there."""

    def __init__(self, cfg: JobConfig, tag: str, summary: RunSummary, spark: SparkSession | None = None,
                 sink: OutputTable | None = None, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.tag = tag
        self.summary = summary
        self.stop = stop if stop is not None else threading.Event()
        #: the stage the run last entered (what a stop that cannot wait for the run names)
        self.where = "start"
        self.spark = spark
        self.caps: SessionCapabilities | None = None
        self.sink = sink
        self._restore: dict[str, str | None] = {}
        #: confs this run would set but the session does not allow (the summary's list)
        self.skipped_confs: list[str] = summary.confs_not_set

    def open(self) -> SparkSession:
        """The session (built if none was given) with Delta checked; DeltaMissing if it lacks Delta."""
        cfg, res = self.cfg, self.cfg.resources
        if self.spark is None:
            self.check_stop("session_start")
            t0 = time.monotonic()
            # the Arrow batch size is set below, where the session allows it (serverless does not)
            conf = dict(res.spark_conf)
            self.spark = build_session(cfg.job_name, res.master, conf, res.delta_jars, res.remote)
            self.summary.durations_s["session_start"] = round(time.monotonic() - t0, 3)
            self.check_stop("session_started")
        if self.caps is None:
            self.caps = capabilities(self.spark, res.session_kind)
            self.summary.session_kind = self.caps.kind
            if not self.caps.delta_available():
                raise DeltaMissing("Delta Lake classes are not on this Spark session's classpath")
            # runtime conf also applies to a session we did not create (notebook, spark-submit)
            self.set_conf("spark.sql.execution.arrow.maxRecordsPerBatch", str(res.arrow_batch_size))
            for path in res.py_files:
                self.caps.ship_python_file(path)
        if self.sink is None:
            self.sink = self._open_sink(self.spark)
        self.check_stop("session_ready")  # each stage opens the session first: a stop ends the run here
        return self.spark

    def _open_sink(self, spark: SparkSession | None) -> OutputTable:
        cfg, out = self.cfg, self.cfg.output
        return open_sink(out.format, spark, out.table, change_data_feed=out.change_data_feed,
                         runs_table=cfg.runs_table_ref, txn_retention=cfg.commit.txn_retention,
                         stats_columns=[cfg.input.id_col, *STATS_COLUMNS])

    def log_sink(self) -> OutputTable | None:
        """The output's sink with no session, for reads from its Delta log only (a plan that may end
        the run without starting Spark); None where the sink comes with the session: a session was
        given or opened already (using it costs no JVM start), the caller gave its own sink, or the
        output is not a Delta table named by its path (a catalog name needs the catalog)."""
        out = self.cfg.output
        if self.spark is not None or self.sink is not None or out.format != "delta" or not TableRef(out.table).is_path:
            return None
        return self._open_sink(None)

    def check_stop(self, where: str) -> None:
        """A stage boundary: raise RunStopped when a stop was requested (the run ends, exit 5)."""
        self.where = where
        if self.stop.is_set():
            raise RunStopped(f"stopped by signal before {where}")

    def set_conf(self, key: str, value: str) -> bool:
        """Set a runtime conf for this run (its previous value comes back at `restore_conf`); False
        where the session does not let a client set it (serverless allows a few): the run goes without."""
        if not self.caps.conf_settable(key):
            if key not in self.skipped_confs:
                self.skipped_confs.append(key)
                event("conf_not_set", conf=key, session_kind=self.caps.kind, reason="not_allowed_by_session")
            return False
        if key not in self._restore:
            self._restore[key] = self.spark.conf.get(key, None)
        self.spark.conf.set(key, value)
        return True

    def restore_conf(self) -> None:
        for key, value in self._restore.items():
            try:
                if value is None:
                    self.spark.conf.unset(key)
                else:
                    self.spark.conf.set(key, value)
            except Exception:  # noqa: BLE001 - the session may be gone (SIGTERM to the group)
                pass
        self._restore.clear()

    @contextmanager
    def stage(self, stage: str) -> Iterator[None]:
        """Tag this thread's Spark jobs with the run (what a stop cancels) and count them by stage."""
        self.caps.enter_stage(self.tag, f"{self.tag}:{stage}")
        try:
            yield
        finally:
            self.caps.leave_stage(self.tag, f"{self.tag}:{stage}")

    def count_jobs(self, stage: str) -> None:
        """Record how many Spark jobs `stage` ran (where the session can count them)."""
        n = self.caps.jobs_in_stage(f"{self.tag}:{stage}")
        if n is not None:
            self.summary.spark_jobs[stage] = n

    def cancel(self) -> None:
        """Cancel this run's Spark jobs in flight (a stop request)."""
        if self.caps is not None:
            self.caps.cancel_tag(self.tag)
