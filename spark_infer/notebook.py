"""Helpers for the Databricks notebooks in `notebooks/` (which also run as plain Python files).

    from spark_infer.notebook import finish, widgets
    w = widgets(globals().get("dbutils"))          # dbutils.widgets on Databricks, env vars elsewhere
    w.text("output", "demo-output/emb", "output table"); finish(run_job({"output": w.get("output"), ...}))

Outside Databricks each widget reads `$SPARK_INFER_<NAME>` or its declared default, so CI and a laptop
run the same file. `widgets()` also sends spark-infer's log lines (progress, run end) to the cell's
output.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from spark_infer.log import install_stderr_handler
from spark_infer.report import RunSummary


class EnvWidgets:
    """The part of `dbutils.widgets` the notebooks use, backed by environment variables."""

    def __init__(self) -> None:
        self._defaults: dict[str, str] = {}

    def text(self, name: str, default: str, label: str | None = None) -> None:
        self._defaults[name] = default

    def dropdown(self, name: str, default: str, choices: list[str], label: str | None = None) -> None:
        self._defaults[name] = default

    def get(self, name: str) -> str:
        if name not in self._defaults:
            raise KeyError(f"widget {name!r} was not declared")
        return os.environ.get(f"SPARK_INFER_{name.upper()}", self._defaults[name])


def on_databricks(dbutils: Any = None) -> bool:
    return dbutils is not None or "DATABRICKS_RUNTIME_VERSION" in os.environ


def widgets(dbutils: Any = None) -> Any:
    """`dbutils.widgets` when given (Databricks), else an `EnvWidgets`; installs the log handler."""
    install_stderr_handler(logging.INFO)
    return dbutils.widgets if dbutils is not None else EnvWidgets()


def finish(summary: RunSummary, dbutils: Any = None) -> RunSummary:
    """End the notebook's run cell: print the outcome; on failure raise (Databricks: fails the job
    task) or exit with the job's exit code (plain Python)."""
    print(f"spark-infer: status={summary.status} exit_code={summary.exit_code} "
          f"units_committed={len(summary.units_committed)} rows_scored={summary.rows_scored}")
    if summary.exit_code:
        if not on_databricks(dbutils):
            sys.exit(summary.exit_code)
        raise RuntimeError(f"spark-infer exited with code {summary.exit_code}: {summary.error}")
    return summary
