"""Helpers for the Databricks notebooks in `notebooks/` (which also run as plain Python files).

Everything the notebooks share lives here, so a notebook holds only its own task, model and options:

    from spark_infer import run_job
    from spark_infer.notebook import finish, input_table, job_fields, job_widgets, read_output, session
    from spark_infer.notebook import widgets

    w = widgets(globals().get("dbutils"))        # dbutils.widgets on Databricks, env vars elsewhere
    job_widgets(w, output="demo-output/emb")     # input, output, model, columns, batch, device, demo table
    w.dropdown("normalize", "true", ["true", "false"], "L2-normalise")        # the notebook's own widgets
    spark = session()                            # on Databricks: the notebook's active session
    config = {**job_fields(w, input_table(spark, w)), "task": "embed",
              "task_options": {"normalize": w.get("normalize") == "true"}}
    finish(run_job(config, spark=spark), globals().get("dbutils"))
    read_output(spark, config["output"]).show()

Outside Databricks each widget reads `$SPARK_INFER_<NAME>` or its declared default, so CI and a laptop
run the same file. `widgets()` also sends spark-infer's log lines (progress, run end) to the cell's
output. Nothing here touches `sparkContext`: on Databricks shared and serverless compute the session
is a Spark Connect session.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from spark_infer.log import install_stderr_handler
from spark_infer.report import RunSummary

#: the widgets `job_widgets` declares and `job_fields` reads (every notebook job has them)
JOB_WIDGETS = ("input", "output", "model", "text_col", "id_col", "batch_size", "max_length", "device",
               "demo_dir", "demo_rows")


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


def job_widgets(w: Any, *, output: str, model: str = "", model_label: str = "model (empty = packaged MiniLM)",
                batch_size: str = "64") -> Any:
    """Declare the widgets every notebook job has (`JOB_WIDGETS`), with this notebook's defaults for the
    output table, the model and the batch size. Returns `w`."""
    w.text("input", "", "input table (empty = demo table)")
    w.text("output", output, "output table")
    w.text("model", model, model_label)
    w.text("text_col", "text", "text column")
    w.text("id_col", "id", "id column")
    w.text("batch_size", batch_size, "rows per model call")
    w.text("max_length", "", "max input tokens (empty = model's)")
    w.dropdown("device", "auto", ["auto", "cpu", "cuda"], "device")
    w.text("demo_dir", "demo-output", "demo table folder")
    w.text("demo_rows", "3000", "demo table rows")
    return w


def session(app_name: str = "spark-infer-notebook") -> Any:
    """The notebook's Spark session: the active one on Databricks (classic or Spark Connect), else a
    local one with Delta (`$SPARK_REMOTE` for a Connect server)."""
    from spark_infer.sessions import build_session

    return build_session(app_name)


def input_table(spark: Any, w: Any) -> str:
    """The `input` widget's table; when it is empty, the demo sample table (`spark-infer demo`'s),
    written once under the `demo_dir` widget's folder with `demo_rows` rows."""
    table = w.get("input")
    if table:
        return table
    from spark_infer.demo import write_sample_table

    table = os.path.abspath(os.path.join(w.get("demo_dir"), "products"))
    if write_sample_table(spark, table, int(w.get("demo_rows"))):
        print(f"wrote the demo table {table}")
    return table


def job_fields(w: Any, input_table: str) -> dict[str, Any]:
    """The config fields the job widgets give (flat field names, as `run_job` takes them): input,
    output, model (empty = the task's default), text/id columns, batch size, max length, device. The
    notebook adds its task, task options and job name."""
    return {
        "input": input_table,
        "output": w.get("output"),
        "model": w.get("model") or None,
        "text_col": w.get("text_col"),
        "id_col": w.get("id_col"),
        "batch_size": w.get("batch_size"),
        "max_length": w.get("max_length") or None,
        "device": w.get("device"),
    }


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


def read_output(spark: Any, table: str) -> Any:
    """The output table as a DataFrame (a path or a catalog name), after printing its row count."""
    from spark_infer.tables import TableRef

    result = TableRef(table).read(spark)
    print(f"{table}: {result.count()} rows")
    return result
