"""Command line: `spark-infer score|demo`, `python -m spark_infer`, `spark-submit jobs/score.py`.

Argument parsing only: the run itself (signals, exit codes, records) is `spark_infer.run`. Nothing
imports this module.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from spark_infer.errors import ConfigError
from spark_infer.log import install_stderr_handler, render_message
from spark_infer.run import STOP_TIMEOUT_S, ExitCode, execute


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


def _json_values(pairs: dict[str, str]) -> dict[str, Any]:
    """Task option values as JSON where they parse (numbers, booleans, lists), else strings."""
    out: dict[str, Any] = {}
    for k, v in pairs.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def score_parser(prog: str = "spark-infer score") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a Delta table with a model, incrementally by partition.")
    p.add_argument("--config", help="YAML or TOML file (sections or flat fields, docs/configuration.md); "
                   "flags override it")
    p.add_argument("--input", help="input Delta table (path or catalog name)")
    p.add_argument("--output", help="output Delta table (path or catalog name)")
    p.add_argument("--task", help="embed, classify, generate, zero_shot, custom")
    p.add_argument("--model", help="model folder or Hugging Face id (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--text-col", dest="text_col")
    p.add_argument("--id-col", dest="id_col")
    p.add_argument("--partition-by", dest="partition_by", help="comma-separated unit columns")
    p.add_argument("--buckets", type=int, help="id buckets for an unpartitioned input")
    p.add_argument("--no-change-feed", dest="change_feed", action="store_false", default=None,
                   help="hash changed units' rows even where the input has a Change Data Feed")
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--max-length", dest="max_length", type=int)
    p.add_argument("--token-budget", dest="token_budget", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--on-error", dest="on_error", choices=["null", "fail"])
    p.add_argument("--on-model-change", dest="on_model_change", choices=["rescore", "new_only"])
    p.add_argument("--incremental", dest="incremental", choices=["row", "unit"],
                   help="a changed unit costs its changed rows (row, the default) or all its rows (unit)")
    p.add_argument("--gpus-per-task", dest="gpus_per_task", type=float)
    p.add_argument("--cpus-per-task", dest="cpus_per_task", type=int)
    p.add_argument("--concurrent-groups", "--concurrent-units", dest="concurrent_groups", type=int,
                   help="commit groups scored and committed at once (default 2)")
    p.add_argument("--tasks-per-group", "--score-partitions", dest="tasks_per_group", type=int,
                   help="Spark tasks that score one commit group (default: the cluster's parallelism)")
    p.add_argument("--group-rows", dest="group_rows", type=int, help="rows per commit group")
    p.add_argument("--group-units", dest="group_units", type=int, help="units per commit group, at most")
    p.add_argument("--rows-per-file", dest="rows_per_file", type=int, help="output rows per file, at most")
    p.add_argument("--optimize", dest="optimize", action="store_true", default=None,
                   help="compact the output's files after a run that wrote")
    p.add_argument("--max-error-rate", dest="max_error_rate", type=float,
                   help="largest share of error rows a unit may have and be committed (default 0.1)")
    p.add_argument("--rescore-errors", dest="rescore_errors", action="store_true", default=None,
                   help="rescore units whose output holds error rows")
    p.add_argument("--on-orphan", dest="on_orphan", choices=["delete", "keep"],
                   help="output units whose input unit is gone (default: delete)")
    p.add_argument("--max-orphan-share", dest="max_orphan_share", type=float,
                   help="largest share of the output's units a run may delete as orphans (default 0.5)")
    p.add_argument("--allow-mass-delete", dest="allow_mass_delete", action="store_true", default=None,
                   help="delete orphaned units beyond --max-orphan-share, or all of them when the input has no units")
    p.add_argument("--no-claims", dest="claims", action="store_false", default=None,
                   help="do not claim units in <output>_claims (overlapping runs then collide: exit 4)")
    p.add_argument("--claim-ttl", dest="claim_ttl_s", type=float,
                   help="seconds a run's claims last unless renewed (default 600)")
    p.add_argument("--on-claimed", dest="on_claimed", choices=["wait", "exit"],
                   help="units another live run holds: wait for it (default), or exit 6 naming it")
    p.add_argument("--model-revision", dest="model_revision", help="hub revision or registry version to pin")
    p.add_argument("--output-col", dest="output_col", help="name of the prediction column (default: the task's)")
    p.add_argument("--output-format", dest="output_format", help="output sink (default: delta)")
    p.add_argument("--prefetch", choices=["auto", "on", "off"],
                   help="encode the next Arrow batch while the model runs (auto: on GPUs)")
    p.add_argument("--arrow-batch-size", dest="arrow_batch_size", type=int,
                   help="rows per Arrow batch handed to the workers (default 4096)")
    p.add_argument("--txn-retention", dest="txn_retention",
                   help="how long the output keeps commit-group transaction ids (default 'interval 7 days')")
    p.add_argument("--no-record-runs", dest="record_runs", action="store_false", default=None,
                   help="do not append the run record to the runs table")
    p.add_argument("--master")
    p.add_argument("--session-kind", dest="session_kind", choices=["auto", "classic", "connect", "serverless"],
                   help="what the session allows (default: detected; serverless: no persist, allow-listed confs)")
    p.add_argument("--udf-memory-limit", dest="udf_memory_limit",
                   help="memory a UDF may use on the workers, e.g. 1g (default: the platform's cap)")
    p.add_argument("--staging", choices=["auto", "persist", "table"],
                   help="where scored rows wait for their commit (default: persist, or a table on serverless)")
    p.add_argument("--staging-schema", dest="staging_schema", help="catalog.schema for staging tables")
    p.add_argument("--remote", help="Spark Connect URL, e.g. sc://host:15002 (default: $SPARK_REMOTE)")
    p.add_argument("--py-files", dest="py_files", help="comma-separated .py/.zip files the workers import")
    p.add_argument("--job-name", dest="job_name")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="task option (repeatable; JSON values)")
    p.add_argument("--conf", action="append", metavar="KEY=VALUE", help="Spark conf (repeatable; taken as given)")
    p.add_argument("--delta-jars", dest="delta_jars", help="comma-separated local Delta jars (no download)")
    p.add_argument("--summary-json", dest="summary_json", help="write the run record JSON here")
    p.add_argument("--runs-table", dest="runs_table", help="Delta table for run records (default: OUTPUT_runs)")
    p.add_argument("--progress-interval", dest="progress_interval_s", type=float,
                   help="seconds between progress lines (0 = only at unit commits)")
    p.add_argument("--change-data-feed", dest="change_data_feed", action="store_true", default=None)
    p.add_argument("--dry-run", dest="dry_run", action="store_true", default=None,
                   help="print the plan and exit without scoring")
    return p


def overrides_from(ns: argparse.Namespace) -> dict[str, Any]:
    """Config fields given as flags (None = not given)."""
    d = {k: v for k, v in vars(ns).items() if k not in ("config", "option", "conf") and v is not None}
    for key in ("partition_by", "py_files"):
        if isinstance(d.get(key), str):
            d[key] = [c.strip() for c in d[key].split(",") if c.strip()]
    if ns.option:
        d["task_options"] = _json_values(_pairs(ns.option, "--option"))
    if ns.conf:
        d["spark_conf"] = _pairs(ns.conf, "--conf")  # a Spark conf value is a string, passed as given
    return d


def run_score(argv: list[str]) -> int:
    """`spark-infer score ARGS`: returns the exit code."""
    from spark_infer.config import build_config

    install_stderr_handler(logging.INFO)
    ns = score_parser().parse_args(argv)
    summary = execute(lambda: build_config(ns.config, overrides_from(ns)), relaunch_argv=argv, print_plan=True,
                      stop_timeout_s=STOP_TIMEOUT_S)
    return int(summary.exit_code if summary.exit_code is not None else ExitCode.ERROR)


def run_demo_command(argv: list[str]) -> int:
    """`spark-infer demo [--dir D] [--rows N] [--master M] [score flags]`: returns the exit code."""
    from spark_infer.demo import run_demo

    p = argparse.ArgumentParser(prog="spark-infer demo",
                                description="Embed a bundled sample Delta table with the packaged model.")
    p.add_argument("--dir", default="demo-output", help="where the sample input and the output go")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--master", default="local[2]")
    ns, rest = p.parse_known_args(argv)
    install_stderr_handler(logging.INFO)
    try:
        overrides = overrides_from(score_parser("spark-infer demo").parse_args(rest))
    except ConfigError as exc:
        print(render_message(f"error: {exc}"), file=sys.stderr)
        return ExitCode.CONFIG
    overrides.pop("master", None)
    return run_demo(ns.dir, ns.rows, ns.master, overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `spark-infer` and `python -m spark_infer`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return run_demo_command(argv[1:])
    if argv and argv[0] == "score":
        argv = argv[1:]
    elif argv and not argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        print(render_message(f"error: unknown command {argv[0]!r}; use 'score' or 'demo'"), file=sys.stderr)
        return ExitCode.CONFIG
    code = run_score(argv)
    if code == ExitCode.INTERRUPTED:
        # a stop (preemption notice): the record is written, end now; the interpreter's teardown of
        # torch and of the session's Python side would take seconds of the notice
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
