"""Command line: `spark-infer score ...`, `python -m spark_infer score ...`, `spark-submit jobs/score.py ...`.

Exit codes:
  0  every planned unit is committed (or nothing was pending; or --dry-run)
  1  unexpected error (bug, or Spark/infrastructure failure before any unit could be scored)
  2  bad configuration: nothing was written
  3  partial failure: some units failed; committed units are kept, a rerun scores the rest
  4  a concurrent run wrote the same output units; committed units are kept, rerun to finish
  5  stopped by SIGTERM/SIGINT (preemption, scheduler timeout): committed units kept, rerun continues

Every run that got past parsing its configuration leaves a JSON record (path printed in the last
line) and, once Spark is up, a row in the Delta runs table next to the output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from spark_infer.report import emit, redact_text
from spark_infer.runtime.spec import ConfigError

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_PARTIAL, EXIT_CONCURRENT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 5


def _kv_pairs(values: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)  # numbers, booleans, lists
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def score_parser(prog: str = "spark-infer score") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a Delta table with a model, incrementally by partition.")
    p.add_argument("--config", help="YAML or TOML file with any config field; flags override it")
    p.add_argument("--input", help="input Delta table (path or catalog name)")
    p.add_argument("--output", help="output Delta table (path or catalog name)")
    p.add_argument("--task", help="embed, classify, generate, zero_shot, custom")
    p.add_argument("--model", help="model folder or Hugging Face id (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--text-col", dest="text_col")
    p.add_argument("--id-col", dest="id_col")
    p.add_argument("--partition-by", dest="partition_by", help="comma-separated unit columns")
    p.add_argument("--buckets", type=int, help="id buckets for an unpartitioned input")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--max-length", dest="max_length", type=int)
    p.add_argument("--token-budget", dest="token_budget", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--on-error", dest="on_error", choices=["null", "fail"])
    p.add_argument("--on-model-change", dest="on_model_change", choices=["rescore", "new_only"])
    p.add_argument("--gpus-per-task", dest="gpus_per_task", type=float)
    p.add_argument("--cpus-per-task", dest="cpus_per_task", type=int)
    p.add_argument("--concurrent-units", dest="concurrent_units", type=int)
    p.add_argument("--master")
    p.add_argument("--job-name", dest="job_name")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="task option (repeatable)")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE", help="Spark conf (repeatable)")
    p.add_argument("--delta-jars", dest="delta_jars", help="comma-separated local Delta jars (no download)")
    p.add_argument("--summary-json", dest="summary_json", help="write the run record JSON here")
    p.add_argument("--runs-table", dest="runs_table", help="Delta table for run records (default: OUTPUT_runs)")
    p.add_argument("--progress-interval", dest="progress_interval_s", type=float,
                   help="seconds between progress lines (0 = only at unit commits)")
    p.add_argument("--change-data-feed", dest="change_data_feed", action="store_true", default=None)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", default=None,
                   help="print the plan and exit without scoring")
    return p


def _overrides(ns: argparse.Namespace) -> dict[str, Any]:
    d = {k: v for k, v in vars(ns).items() if k not in ("config", "option", "conf") and v is not None}
    if isinstance(d.get("partition_by"), str):
        d["partition_by"] = [c.strip() for c in d["partition_by"].split(",") if c.strip()]
    if ns.option:
        d["task_options"] = _kv_pairs(ns.option, "--option")
    if ns.conf:
        d["spark_conf"] = {k: str(v) for k, v in _kv_pairs(ns.conf, "--conf").items()}
    return d


def print_plan(job) -> None:
    p, cols = job.plan, job.unit_cols
    print(f"plan: input={job.cfg.input} version={p.input_version} units={'buckets of ' + job.cfg.id_col if p.bucketed else ','.join(cols)}")
    for u, reason in p.pending:
        print(f"  pending  {reason:<13} {u.label(cols):<40} rows={u.rows}")
    for u in p.done:
        print(f"  done     {'':<13} {u.label(cols):<40} rows={u.rows}")
    for u in p.stale_model:
        print(f"  kept     {'old model':<13} {u.label(cols):<40} rows={u.rows}")
    for k in p.orphaned:
        print(f"  orphaned {'not in input':<13} {','.join(f'{c}={v}' for c, v in zip(cols, k, strict=True))}")
    print("plan: " + " ".join(f"{k}={v}" for k, v in p.counts().items()))


def run_score(argv: list[str], relaunch_args: list[str] | None = None) -> int:
    """Parse flags, validate, plan, score and commit. Returns the exit code."""
    from spark_infer.config import build_config

    ns = score_parser().parse_args(argv)
    code, _ = execute(lambda: build_config(ns.config, _overrides(ns)), relaunch_args=argv)
    return code


def execute(make_config, spark=None, relaunch_args: list[str] | None = None):
    """Run one job from a config factory; returns (exit code, RunSummary or None).

    Every exit path goes through here: signals, config errors, failures, and the run record.
    """
    t_start = time.monotonic()
    job = None
    previous = {}

    def _on_signal(signum, frame):  # noqa: ARG001
        emit("signal", name=signal.Signals(signum).name, action="stop_after_inflight_units_abandoned")
        if job is not None:
            job.request_stop()
        else:
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_signal)
    try:
        cfg = make_config()
        from spark_infer.job import ConcurrentRunError, DeltaMissing, ScoringJob

        job = ScoringJob(cfg, spark)
        emit("run_start", run_id=job.run_id, job=cfg.job_name, task=cfg.task, input=cfg.input, output=cfg.output)
        job.validate_model()
        try:
            job.make_plan()
        except DeltaMissing:
            from spark_infer.launch import RELAUNCH_ENV, delta_flags, relaunch_with_delta, under_spark_submit

            if relaunch_args is not None and under_spark_submit() and not os.environ.get(RELAUNCH_ENV):
                return relaunch_with_delta(job.session_unchecked(), relaunch_args, cfg.delta_jars), None
            raise ConfigError(
                "Delta Lake is not on this Spark session's classpath; start it with "
                + " ".join(delta_flags(cfg.delta_jars))
            ) from None
        if cfg.dry_run:
            print_plan(job)
            job.summary.status, job.summary.exit_code = "dry_run", EXIT_OK
            return EXIT_OK, (job.summary if job is not None else None)
        print_plan(job)
        if not job.stop_requested.is_set():
            job.score_and_commit()
        s = job.summary
        if job.stop_requested.is_set():
            code, s.status = EXIT_INTERRUPTED, "interrupted"
            s.error = "stopped by signal; committed units are kept, rerun to continue"
        elif s.units_failed:
            code, s.status = EXIT_PARTIAL, "partial"
            s.error = "; ".join(f"{k}: {v}" for k, v in list(s.units_failed.items())[:5])
        else:
            code, s.status = EXIT_OK, "succeeded"
        s.exit_code = code
        return code, (job.summary if job is not None else None)
    except KeyboardInterrupt:
        print("error: interrupted before the job started", file=sys.stderr, flush=True)
        if job:
            job.summary.status, job.summary.exit_code = "interrupted", EXIT_INTERRUPTED
        return EXIT_INTERRUPTED, (job.summary if job is not None else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        if job:
            job.summary.status, job.summary.exit_code, job.summary.error = "config_error", EXIT_CONFIG, str(exc)
        if job is None:
            from spark_infer.report import RunSummary

            return EXIT_CONFIG, RunSummary(run_id="", job_name="", status="config_error", exit_code=EXIT_CONFIG,
                                           error=str(exc))
        return EXIT_CONFIG, job.summary
    except Exception as exc:  # noqa: BLE001 - every failure still leaves its record
        from spark_infer.job import ConcurrentRunError

        code = EXIT_CONCURRENT if isinstance(exc, ConcurrentRunError) else EXIT_ERROR
        if job is not None and job.stop_requested.is_set():
            code = EXIT_INTERRUPTED
        print(redact_text(f"error: {type(exc).__name__}: {exc}"), file=sys.stderr, flush=True)
        if job:
            job.summary.status, job.summary.exit_code, job.summary.error = "failed", code, str(exc)[:4000]
        if code == EXIT_ERROR:
            import traceback

            traceback.print_exc()
        return code, (job.summary if job is not None else None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if job is not None and job.summary.exit_code is not None:
            job.summary.durations_s["total"] = round(time.monotonic() - t_start, 3)
            _finish(job)


def _finish(job) -> None:
    """Write the run record (JSON file, and a row in the runs table) and the closing line."""
    import datetime as dt
    import tempfile

    from spark_infer.report import append_run_record, emit

    s = job.summary
    s.ended_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    path = job.cfg.summary_json or os.path.join(
        tempfile.gettempdir(), "spark-infer-runs", f"{job.cfg.job_name}-{s.run_id}.json"
    )
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(s.to_json())
    except OSError as exc:
        emit("warning", what="run_record_json_not_written", path=path, error=str(exc))
        path = ""
    runs_table = ""
    if job.cfg.record_runs and s.status not in ("config_error", "dry_run") and job._spark is not None:
        runs_table = job.cfg.runs_table_ref
        try:
            append_run_record(job._spark, runs_table, s)
        except Exception as exc:  # noqa: BLE001 - the JVM may be gone (SIGTERM to the whole group)
            emit("warning", what="run_record_table_not_written", table=runs_table,
                 error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
            runs_table = ""
    rows_s = s.rows_scored / s.durations_s["score_commit"] if s.durations_s.get("score_commit") else 0.0
    emit("run_end", run_id=s.run_id, status=s.status, exit_code=s.exit_code,
         units_committed=len(s.units_committed), units_failed=len(s.units_failed),
         units_abandoned=len(s.units_abandoned), units_skipped=s.plan.get("units_done", 0),
         rows_scored=s.rows_scored, rows_per_s=rows_s, output=s.output,
         output_version=s.output_version_after, summary_json=path, runs_table=runs_table)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `spark-infer` and `python -m spark_infer`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from spark_infer.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "score":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        print(f"error: unknown command {argv[0]!r}; use 'score' or 'demo'", file=sys.stderr)
        return EXIT_CONFIG
    return run_score(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
