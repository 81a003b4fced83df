"""The run lifecycle: one path for every way a job is started (CLI, `run_job`, notebooks, spark-submit).

Signals, exit codes, the run record (JSON file + a row beside the output) and the closing log line
live here. Every run that got past parsing its configuration leaves a record, failed and
interrupted ones included.

Exit codes:
  0  every planned unit is committed (or nothing was pending; or --dry-run)
  1  unexpected error (bug, or Spark/infrastructure failure before any unit could be scored)
  2  bad configuration (or a refused mass delete of orphaned units): nothing was written
  3  partial failure: some units failed; committed units are kept, a rerun scores the rest
  4  a concurrent run wrote the same output units; committed units are kept, rerun to finish
  5  stopped by SIGTERM/SIGINT (preemption, scheduler timeout): committed units kept, rerun continues
  6  another live run holds units this run planned (`on_claimed: exit`): it is scoring them; this run
     scored the free ones (a scheduler may treat 6 as "skipped")
"""

from __future__ import annotations

import datetime as dt
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from spark_infer.config import JobConfig, build_config
from spark_infer.errors import ConcurrentRunError, ConfigError, DeltaMissing, RunStopped, UnitsClaimed
from spark_infer.log import event, logger, render_message
from spark_infer.redact import redact
from spark_infer.report import RunSummary, format_plan

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from spark_infer.job import ScoringJob
    from spark_infer.sinks import OutputTable


class ExitCode(IntEnum):
    """The job's exit codes (also `RunSummary.exit_code`)."""

    OK = 0
    ERROR = 1
    CONFIG = 2
    PARTIAL = 3
    CONCURRENT = 4
    INTERRUPTED = 5
    CLAIMED = 6


#: plan lines printed before a run (all of them with --dry-run)
PLAN_LINES = 50

#: the command line's bound on a stop: a run that has not reached a stopping point this many seconds
#: after SIGTERM writes its record and exits 5 without waiting (preemption notices give ~30 s)
STOP_TIMEOUT_S = 6.0
#: how often the watcher cancels the run's job tag again while a stop is under way (a Spark job
#: started just as the stop was requested)
_RECANCEL_S = 1.0


def run_job(
    config: JobConfig | Mapping[str, Any] | str,
    *,
    spark: SparkSession | None = None,
    sink: OutputTable | None = None,
    **overrides: Any,
) -> RunSummary:
    """Run the scoring job from Python (notebooks, orchestrators) and return its record.

        from spark_infer import run_job
        summary = run_job({"input": "/data/products", "output": "/data/emb"}, spark=spark)

    `config`: a JobConfig, a dict of config fields, or a path to a YAML/TOML file; `overrides` win.
    The active session (Databricks, a notebook) is used when `spark` is not given, and the output
    format's sink when `sink` is not. Never raises for job failures: look at `summary.status` /
    `summary.exit_code` (the CLI's exit codes).
    """

    def make_config() -> JobConfig:
        if isinstance(config, str):
            return build_config(config, overrides)
        base = config.model_dump() if isinstance(config, JobConfig) else config
        return build_config(base=base, overrides=overrides)

    return execute(make_config, spark=spark, sink=sink)


def execute(
    make_config: Callable[[], JobConfig],
    *,
    spark: SparkSession | None = None,
    sink: OutputTable | None = None,
    relaunch_argv: list[str] | None = None,
    print_plan: bool = False,
    stop_timeout_s: float | None = None,
) -> RunSummary:
    """Run one job from a config factory; every exit path goes through here.

    `relaunch_argv` (the command line's arguments) lets a spark-submit run without Delta restart
    itself with Delta's package; `print_plan` prints the plan on stdout (the command line's view).
    `stop_timeout_s` (the command line's, never a notebook's): after SIGTERM/SIGINT, a run that has
    not stopped within this many seconds writes its JSON record and ends the process with exit 5.
    """
    t_start = time.monotonic()
    job: ScoringJob | None = None
    stop = threading.Event()
    watcher = _StopWatcher(stop, stop_timeout_s, t_start)
    watcher.install()
    try:
        cfg = make_config()
        from spark_infer.job import ScoringJob

        job = ScoringJob(cfg, spark, sink)
        job.stop_requested = job.session.stop = stop
        watcher.job = job
        event("run_start", run_id=job.run_id, job=cfg.job_name, task=cfg.task, input=cfg.input.table,
              output=cfg.output.table)
        try:
            job.resolve_model()
            watcher.reinstall()
            job.make_plan()
            watcher.reinstall()
        except DeltaMissing:
            if stop.is_set():
                raise RunStopped("stopped by signal before the relaunch with Delta") from None
            relaunched = _relaunch(job, relaunch_argv)
            if relaunched is not None:
                job.summary.status, job.summary.exit_code = "relaunched", relaunched
                return job.summary
            raise
        if print_plan or cfg.dry_run:
            print(format_plan(job.plan, cfg.input.table, cfg.input.id_col, None if cfg.dry_run else PLAN_LINES),
                  flush=True)
        if cfg.dry_run:
            return _finish(job.summary, ExitCode.OK, "dry_run")
        job.session.check_stop("score_commit")
        job.run()
        s = job.summary
        if job.stop_requested.is_set():
            s.error = "stopped by signal; committed units are kept, rerun to continue"
            return _finish(s, ExitCode.INTERRUPTED, "interrupted")
        if s.units_failed:
            s.error = "; ".join(f"{k}: {v}" for k, v in list(s.units_failed.items())[:5])
            return _finish(s, ExitCode.PARTIAL, "partial")
        return _finish(s, ExitCode.OK, "succeeded")
    except (KeyboardInterrupt, RunStopped) as exc:
        _error_line(str(exc) if isinstance(exc, RunStopped) else "interrupted before the job started")
        if job is None:
            return RunSummary(run_id="", job_name="", status="interrupted", exit_code=ExitCode.INTERRUPTED)
        job.summary.error = "stopped by signal; committed units are kept, rerun to continue"
        return _finish(job.summary, ExitCode.INTERRUPTED, "interrupted")
    except UnitsClaimed as exc:  # raised by a started job only
        _error_line(str(exc))
        summary = job.summary if job is not None else RunSummary(run_id="", job_name="")
        summary.error = str(exc)
        return _finish(summary, ExitCode.CLAIMED, "claimed_elsewhere")
    except (ConfigError, DeltaMissing) as exc:
        msg = str(exc) if isinstance(exc, ConfigError) else _delta_missing_message(job)
        _error_line(msg)
        if job is None:
            return RunSummary(run_id="", job_name="", status="config_error", exit_code=ExitCode.CONFIG,
                              error=redact(msg))
        job.summary.error = msg
        return _finish(job.summary, ExitCode.CONFIG, "config_error")
    except Exception as exc:  # noqa: BLE001 - every failure still leaves its record
        code = ExitCode.CONCURRENT if isinstance(exc, ConcurrentRunError) else ExitCode.ERROR
        if stop.is_set():  # a Spark call ended by the stop's cancellation
            code = ExitCode.INTERRUPTED
        _error_line(f"{type(exc).__name__}: {exc}")
        if code == ExitCode.ERROR:
            logger.error("%s", redact(traceback.format_exc()))
        if job is None:
            return RunSummary(run_id="", job_name="", status="failed", exit_code=code, error=redact(str(exc))[:4000])
        job.summary.error = str(exc)[:4000]
        return _finish(job.summary, code, "interrupted" if code == ExitCode.INTERRUPTED else "failed")
    finally:
        watcher.recording.set()  # the stop's cancellation is over: the record's own Spark write runs
        if job is not None and job.summary.exit_code is not None and job.summary.status != "relaunched":
            job.summary.durations_s["total"] = round(time.monotonic() - t_start, 3)
            _record(job, watcher)
        watcher.finish()


def _finish(summary: RunSummary, code: ExitCode, status: str) -> RunSummary:
    summary.exit_code, summary.status = int(code), status
    return summary


def _error_line(msg: str) -> None:
    # the one line a user must see, even when the application installed no log handler
    print(render_message(f"error: {msg}"), file=sys.stderr, flush=True)


def _delta_missing_message(job: ScoringJob | None) -> str:
    from spark_infer.delta_jars import DELTA_CONFS, DELTA_PACKAGE, delta_flags

    if job is not None and job.session.caps is not None and job.session.caps.remote:
        confs = " ".join(f"--conf {k}={v}" for k, v in DELTA_CONFS.items())
        return ("the Spark Connect server has no Delta Lake (the server owns its classpath, nothing can be "
                f"added from this client): start the server with --packages {DELTA_PACKAGE} {confs} "
                "(Databricks compute has Delta built in)")
    return ("Delta Lake is not on this Spark session's classpath; start it with "
            + " ".join(delta_flags(job.cfg.resources.delta_jars if job else None)))


def _relaunch(job: ScoringJob, argv: list[str] | None) -> int | None:
    """Under spark-submit without Delta: rerun the job with Delta's package; its exit code, or None."""
    from spark_infer.launch import RELAUNCH_ENV, relaunch_with_delta, under_spark_submit

    caps = job.session.caps
    if argv is None or not under_spark_submit() or os.environ.get(RELAUNCH_ENV) or caps is None:
        return None
    return relaunch_with_delta(caps, argv, job.cfg.resources.delta_jars)


def _write_json(job: ScoringJob) -> str:
    """The run record's JSON file; its path, or "" when it could not be written."""
    s = job.summary
    s.ended_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path = job.cfg.report.summary_json or os.path.join(
        tempfile.gettempdir(), "spark-infer-runs", f"{job.cfg.job_name}-{s.run_id}.json"
    )
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(s.to_json())
    except OSError as exc:
        event("warning", what="run_record_json_not_written", path=path, error=str(exc))
        path = ""
    return path


def _record(job: ScoringJob, watcher: _StopWatcher) -> None:
    """Write the run record (JSON file, and a row beside the output) and the closing line."""
    s = job.summary
    with watcher.json_lock:  # the watcher may be writing a stop's record (see _StopWatcher)
        if watcher.json_written:
            return
        path = _write_json(job)
        watcher.json_written = True
    runs_table = ""
    from_logs = job.planned is not None and job.planned.from_logs  # no session was started
    if (job.cfg.report.record_runs and s.status not in ("config_error", "dry_run")
            and (job.sink is not None or from_logs)):
        runs_table = job.cfg.runs_table_ref
        try:
            from spark_infer.sinks._runs_log import append_run_record

            record = s.record()
            # a run that started no session appends its row with delta-rs; through Spark where it cannot
            if job.sink is not None or not append_run_record(runs_table, record):
                if job.sink is None:
                    job.session.open()
                job.sink.append_run_record(record)
        except Exception as exc:  # noqa: BLE001 - the JVM may be gone (SIGTERM to the whole group)
            event("warning", what="run_record_table_not_written", table=runs_table,
                  error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            runs_table = ""
    rows_s = s.rows_scored / s.durations_s["score_commit"] if s.durations_s.get("score_commit") else 0.0
    event("run_end", run_id=s.run_id, status=s.status, exit_code=s.exit_code,
          units_committed=len(s.units_committed), units_failed=len(s.units_failed),
          units_abandoned=len(s.units_abandoned), units_skipped=s.plan.get("units_done", 0),
          rows_scored=s.rows_scored, rows_per_s=rows_s, output=s.output,
          output_version=s.output_version_after, summary_json=path, runs_table=runs_table)


class _StopWatcher:
    """SIGTERM/SIGINT. The handler only queues the signal (no Py4J or Spark Connect call, no lock: a
    signal handler runs between two bytecodes of the main thread, which may be inside a Py4J call);
    this thread then sets the run's stop flag (checked at every stage boundary and before each group)
    and cancels the run's job tag, which ends the Spark jobs in flight, including a blocking stage's,
    again every second while the run stops (a job started just as the flag was set).

    With `timeout_s` (the command line): a run that has not stopped by then (a JVM still starting, a
    model download, a driver-side read) gets its JSON record written here, its child processes (the
    JVM being started) ended, and the process exits 5 without waiting for it.
    """

    def __init__(self, stop: threading.Event, timeout_s: float | None, t_start: float) -> None:
        self.stop, self.timeout_s, self.t_start = stop, timeout_s, t_start
        self.job: ScoringJob | None = None
        self.recording = threading.Event()
        self.json_lock = threading.Lock()
        self.json_written = False
        self._signals: queue.SimpleQueue[int | None] = queue.SimpleQueue()  # put() is reentrant
        self._thread = threading.Thread(target=self._watch, name="spark-infer-stop", daemon=True)

    def install(self) -> None:
        """Take SIGTERM/SIGINT and start watching (from the main thread only: elsewhere, a notebook's
        worker thread, signals stay the caller's business)."""
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self.on_signal)
            self._thread.start()

    def reinstall(self) -> None:
        """Ours again: a classic SparkContext started on the main thread installs its own SIGINT
        handler (a Py4J call inside the handler)."""
        for sig in self._previous:
            if signal.getsignal(sig) != self.on_signal:
                signal.signal(sig, self.on_signal)

    def on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - the signal handler
        self._signals.put(signum)

    def finish(self) -> None:
        """Stop watching and give the signals back."""
        self._signals.put(None)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _watch(self) -> None:
        signum = self._signals.get()
        if signum is None:
            return
        t_signal = time.monotonic()
        self.stop.set()
        event("signal", name=signal.Signals(signum).name, action="stop_after_inflight_units_abandoned")
        while True:
            job = self.job
            if job is not None and not self.recording.is_set():
                job.session.cancel()  # the run's job tag: its Spark jobs in flight end now
            wait = _RECANCEL_S
            if self.timeout_s is not None:
                left = t_signal + self.timeout_s + (2.0 if self.recording.is_set() else 0.0) - time.monotonic()
                if left <= 0:
                    self._exit_now(signum)
                wait = min(wait, left)
            try:
                if self._signals.get(timeout=wait) is None:
                    return
            except queue.Empty:
                pass

    def _exit_now(self, signum: int) -> None:
        """The run did not stop in time: its record, its children, exit 5 (the process ends here)."""
        job = self.job
        if job is not None and self.json_lock.acquire(timeout=1.0):
            if not self.json_written:
                s = job.summary
                s.exit_code, s.status = int(ExitCode.INTERRUPTED), "interrupted"
                s.error = (f"stopped by {signal.Signals(signum).name}: the run had not stopped {self.timeout_s:g} s "
                           f"later (in {job.session.where}); the process exited without waiting for it")
                s.durations_s["total"] = round(time.monotonic() - self.t_start, 3)
                path = ""
                for _ in range(3):  # the main thread may be changing the summary meanwhile
                    try:
                        path = _write_json(job)
                        break
                    except RuntimeError:
                        time.sleep(0.05)
                self.json_written = True
                event("run_end", run_id=s.run_id, status=s.status, exit_code=s.exit_code,
                      units_committed=len(s.units_committed), stopped_in=job.session.where, summary_json=path)
        _error_line("stopped by signal without waiting for the run's current stage; rerun to continue")
        from spark_infer.launch import end_children

        end_children(grace_s=0.5)  # a JVM being started (the JVM of a started session also ends with its stdin)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(ExitCode.INTERRUPTED))
