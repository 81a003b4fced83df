"""Databricks notebooks (source format) and the Airflow DAG example: they compile, use widgets, and the
embeddings notebook runs as plain Python against the demo table (subprocess, tiny model)."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys

import pytest
from jobutil import ROOT, env, run

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.py")))
HEADER = "# Databricks notebook source"
SEPARATOR = re.compile(r"^# COMMAND -{10}$", re.M)
DAG = os.path.join(ROOT, "jobs", "airflow_dag_example.py")


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def cells(source: str) -> list[str]:
    return [c.strip("\n") for c in SEPARATOR.split(source.removeprefix(HEADER + "\n"))]


def import_cell(source: str) -> str:
    (cell,) = [c for c in cells(source) if "from spark_infer.notebook import" in c]
    return cell


def test_the_three_notebooks_are_there():
    names = {os.path.basename(p) for p in NOTEBOOKS}
    assert {"embeddings_to_delta.py", "classification.py", "summarization.py", "extraction.py"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_databricks_source_that_compiles_and_uses_widgets(path):
    src = read(path)
    assert src.startswith(HEADER + "\n")
    compile(src, path, "exec")
    parts = cells(src)
    assert len(parts) >= 4 and all(parts)
    assert parts[0].startswith("# MAGIC %md")  # a markdown cell first
    assert 'w = widgets(globals().get("dbutils"))' in src  # dbutils.widgets on Databricks
    assert re.search(r"\bw\.(text|dropdown)\(", src)
    assert "w.get(" in src
    assert "run_job(" in src  # the library's job, no scoring logic of its own
    declared = set(re.findall(r"\bw\.(?:text|dropdown)\(\"(\w+)\"", src))
    read_names = set(re.findall(r"\bw\.get\([\"'](\w+)[\"']\)", src))
    assert read_names <= declared, read_names - declared
    assert declared <= read_names, declared - read_names


def test_notebooks_share_one_import_cell_and_define_no_widget_shim():
    cells_by_nb = {os.path.basename(p): import_cell(read(p)) for p in NOTEBOOKS}
    assert len(set(cells_by_nb.values())) == 1, cells_by_nb.keys()
    for p in NOTEBOOKS:
        assert "SimpleNamespace" not in read(p) and "os.environ.get(" not in read(p)


def test_widget_helper_outside_databricks_reads_env_then_default(monkeypatch):
    from spark_infer.notebook import EnvWidgets, on_databricks, widgets

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert on_databricks(None) is False
    w = widgets(None)
    assert isinstance(w, EnvWidgets)
    w.text("output", "demo-output/x", "label")
    w.dropdown("device", "auto", ["auto", "cpu", "cuda"], "label")
    monkeypatch.delenv("SPARK_INFER_OUTPUT", raising=False)
    monkeypatch.setenv("SPARK_INFER_DEVICE", "cpu")
    assert w.get("output") == "demo-output/x"
    assert w.get("device") == "cpu"


class FakeDbutils:
    """`dbutils.widgets` as Databricks has it: positional (name, defaultValue[, choices], label)."""

    def __init__(self) -> None:
        self.widgets = self
        self.declared: dict[str, str] = {}

    def text(self, name, default, label=None):
        self.declared[name] = default

    def dropdown(self, name, default, choices, label=None):
        assert default in choices
        self.declared[name] = default

    def get(self, name):
        return self.declared[name]


def test_job_widgets_declare_the_shared_widgets_once_and_job_fields_reads_them(monkeypatch):
    from spark_infer.notebook import JOB_WIDGETS, job_fields, job_widgets, widgets

    for name in JOB_WIDGETS:
        monkeypatch.delenv(f"SPARK_INFER_{name.upper()}", raising=False)
    w = job_widgets(widgets(None), output="demo-output/x")
    assert job_fields(w, "/data/in") == {
        "input": "/data/in", "output": "demo-output/x", "model": None, "text_col": "text", "id_col": "id",
        "batch_size": "64", "max_length": None, "device": "auto",
    }
    monkeypatch.setenv("SPARK_INFER_MODEL", "/models/m")
    monkeypatch.setenv("SPARK_INFER_MAX_LENGTH", "128")
    fields = job_fields(w, "/data/in")
    assert fields["model"] == "/models/m" and fields["max_length"] == "128"

    db = FakeDbutils()
    assert widgets(db) is db.widgets
    job_widgets(db.widgets, output="main.shop.out", model="org/m", batch_size="8")
    assert tuple(db.declared) == JOB_WIDGETS
    assert job_fields(db.widgets, "main.shop.in")["model"] == "org/m"
    assert job_fields(db.widgets, "main.shop.in")["batch_size"] == "8"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebooks_declare_only_their_own_widgets_beside_the_shared_ones(path):
    from spark_infer.notebook import JOB_WIDGETS

    src = read(path)
    assert "job_widgets(w, " in src and "**job_fields(w, " in src and "input_table(spark, w)" in src
    own = set(re.findall(r"\bw\.(?:text|dropdown)\(\"(\w+)\"", src))
    assert not own & set(JOB_WIDGETS), own & set(JOB_WIDGETS)  # declared once, by the helper
    assert "sparkContext" not in src  # Spark Connect sessions (shared, serverless) have none


def test_input_table_is_the_widget_when_given_without_touching_spark(monkeypatch):
    from spark_infer.notebook import input_table, job_widgets, widgets

    monkeypatch.setenv("SPARK_INFER_INPUT", "main.shop.products")
    assert input_table(None, job_widgets(widgets(None), output="o")) == "main.shop.products"


def test_finish_exits_with_the_code_or_raises_on_databricks(monkeypatch, capsys):
    from spark_infer.notebook import finish
    from spark_infer.report import RunSummary

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    ok = RunSummary(run_id="r", job_name="j", status="succeeded", exit_code=0)
    assert finish(ok) is ok
    assert "exit_code=0" in capsys.readouterr().out
    bad = RunSummary(run_id="r", job_name="j", status="failed", exit_code=3, error="units failed")
    with pytest.raises(SystemExit) as exc:
        finish(bad)
    assert exc.value.code == 3
    with pytest.raises(RuntimeError, match="code 3: units failed"):
        finish(bad, FakeDbutils())


def test_embeddings_notebook_enables_change_data_feed_for_vector_search():
    src = read(os.path.join(ROOT, "notebooks", "embeddings_to_delta.py"))
    assert 'w.dropdown("change_data_feed", "true"' in src
    assert '"change_data_feed": w.get("change_data_feed") == "true"' in src
    assert "Vector Search" in src and "delta-sync" in src


def test_summarization_notebook_uses_generate_with_prompt_options():
    src = read(os.path.join(ROOT, "notebooks", "summarization.py"))
    assert '"task": "generate"' in src
    assert '"prompt_template": w.get("prompt_template")' in src and '"max_new_tokens": w.get(' in src


def run_notebook(path: str, extra_env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    e = {k: v for k, v in env().items() if not k.startswith("SPARK_INFER_") or k.startswith("SPARK_INFER_DELTA")}
    e.update(extra_env)
    return run([sys.executable, path], timeout=timeout, env_vars=e)


@pytest.mark.slow
def test_embeddings_notebook_runs_as_plain_python_and_rerun_commits_nothing(tmp_path, tiny_bert):
    from deltalake import DeltaTable

    rows = 50
    out = str(tmp_path / "embeddings")
    nb_env = {
        "SPARK_INFER_DEMO_DIR": str(tmp_path / "demo"),
        "SPARK_INFER_DEMO_ROWS": str(rows),
        "SPARK_INFER_OUTPUT": out,
        "SPARK_INFER_MODEL": tiny_bert,
        "SPARK_INFER_DEVICE": "cpu",
    }
    path = os.path.join(ROOT, "notebooks", "embeddings_to_delta.py")
    r = run_notebook(path, nb_env)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "wrote the demo table" in r.stdout

    inp = DeltaTable(str(tmp_path / "demo" / "products"))
    assert inp.to_pyarrow_table().num_rows == rows
    dt = DeltaTable(out)
    res = dt.to_pyarrow_table(columns=["id", "embedding", "error", "task"])
    assert res.num_rows == rows
    assert len(set(res.column("id").to_pylist())) == rows
    assert res.column("error").null_count == rows
    assert set(res.column("task").to_pylist()) == {"embed"}
    assert all(len(v) == 32 for v in res.column("embedding").to_pylist())  # tiny BERT hidden size
    assert dt.metadata().configuration.get("delta.enableChangeDataFeed") == "true"
    version = dt.version()

    r2 = run_notebook(path, nb_env)
    assert r2.returncode == 0, r2.stdout[-4000:]
    assert "wrote the demo table" not in r2.stdout
    assert "units_committed=0" in r2.stdout
    assert DeltaTable(out).version() == version  # a finished job rerun commits nothing


@pytest.mark.slow
def test_extraction_notebook_writes_typed_columns(tmp_path):
    """The extraction notebook end to end on the demo table with a tiny random seq2seq model: the
    output column is the DDL's struct; a row is a valid value or an error row naming max_new_tokens."""
    from deltalake import DeltaTable
    from structured_models import make_bytelevel_t5

    out = str(tmp_path / "extracted")
    r = run_notebook(os.path.join(ROOT, "notebooks", "extraction.py"), {
        "SPARK_INFER_DEMO_DIR": str(tmp_path / "demo"), "SPARK_INFER_DEMO_ROWS": "40",
        "SPARK_INFER_OUTPUT": out, "SPARK_INFER_MODEL": make_bytelevel_t5(str(tmp_path / "t5")),
        "SPARK_INFER_DEVICE": "cpu", "SPARK_INFER_CHAT_TEMPLATE": "false", "SPARK_INFER_MAX_NEW_TOKENS": "80",
        "SPARK_INFER_MAX_ERROR_RATE": "1.0",
    })
    assert r.returncode == 0, r.stdout[-4000:]
    assert "price_mentioned" in r.stdout  # the notebook's printSchema / show of the typed fields
    res = DeltaTable(out).to_pyarrow_table(columns=["id", "extracted", "error"])
    assert str(res.schema.field("extracted").type) == (
        "struct<category: string, price_mentioned: bool, colors: list<element: string>>")
    assert res.num_rows == 40
    for value, error in zip(res.column("extracted").to_pylist(), res.column("error").to_pylist(), strict=True):
        assert (value is None) == (error is not None)
        assert error is None or "max_new_tokens=80 reached" in error


@pytest.mark.slow
def test_notebook_exits_with_the_config_error_code(tmp_path):
    """A bad widget value: the notebook exits with the job's code 2 and writes nothing."""
    out = str(tmp_path / "out")
    r = run_notebook(os.path.join(ROOT, "notebooks", "embeddings_to_delta.py"), {
        "SPARK_INFER_INPUT": str(tmp_path / "in"), "SPARK_INFER_OUTPUT": out,
        "SPARK_INFER_MODEL": str(tmp_path / "no-such-model"),
    }, timeout=300)
    assert r.returncode == 2, r.stdout[-4000:]
    assert not os.path.exists(out)


def test_airflow_dag_example_compiles_and_runs_score_py():
    src = read(DAG)
    tree = ast.parse(src, DAG)
    compile(tree, DAG, "exec")
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "airflow.providers.apache.spark.operators.spark_submit" in imported
    assert "jobs/score.py" in src and '"--config"' in src
    assert re.search(r"\"retries\": [1-9]", src)
    for code in ("0", "2", "3", "4"):
        assert re.search(rf"^\s+{code}\s+\S", src, re.M), f"exit code {code} not documented"
