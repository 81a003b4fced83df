"""The PySpark versions spark-infer declares (the `spark` extra's range) are the ones it runs on: the
highest is what this suite runs on, the lowest runs a real job in a virtual environment of its own
(classic local session, Delta's jars for that Spark line), and without any PySpark the import says
what to install instead of failing somewhere deep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib

import pytest
from jobutil import ROOT, env, rows_for, run, summary

SCHEMA = "id long, category string, text string"


def spark_extra() -> dict[str, str]:
    """{package: specifier} of pyproject's `spark` extra."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["spark"]
    out = {}
    for req in extra:
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*(.*)$", req)
        out[m[1].lower()] = m[2]
    return out


def lowest(spec: str) -> str:
    return re.search(r">=\s*([0-9.]+)", spec)[1]


def test_the_range_is_declared_and_the_suite_runs_on_its_highest_line():
    from importlib import metadata

    from packaging.specifiers import SpecifierSet

    from spark_infer.delta_jars import DELTA_PACKAGE, DELTA_PACKAGES, NEWEST_SPARK_LINE

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    # a hard pin would replace a Databricks runtime's PySpark and clash with databricks-connect:
    # PySpark and delta-spark are an extra, with a range
    assert not [d for d in project["dependencies"] if re.match(r"^(pyspark|delta-spark)\b", d)]
    spec = SpecifierSet(spark_extra()["pyspark"])
    assert "==" not in str(spec) and lowest(str(spec)) == "4.0.1"
    # every Spark line the range allows has its Delta jars; the newest known line is the range's top
    lines = {f"4.{minor}" for minor in range(10) if any(v in spec for v in (f"4.{minor}.1", f"4.{minor}.0"))}
    assert lines == set(DELTA_PACKAGES), (lines, DELTA_PACKAGES)
    assert max(lines) == NEWEST_SPARK_LINE
    installed = metadata.version("pyspark")
    assert installed in spec and installed.startswith(NEWEST_SPARK_LINE + ".")  # this suite: the highest
    assert DELTA_PACKAGE == DELTA_PACKAGES[NEWEST_SPARK_LINE] or os.environ.get("SPARK_INFER_DELTA_PACKAGE")


def test_without_pyspark_importing_spark_infer_says_what_to_install(tmp_path):
    """A Python with no PySpark at all (a bare virtual environment; the package itself from the source
    tree): the import fails at once, naming the extra and the Databricks ways."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    for code in ("import spark_infer", "from spark_infer import run_job"):
        r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120,
                           env={"PATH": os.environ["PATH"], "PYTHONPATH": ROOT})
        assert r.returncode == 1, (code, r.stdout, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: spark-infer needs PySpark 4.0.1 or newer"), r.stderr
        assert "pip install 'spark-infer[spark]'" in last and "%pip install spark-infer" in last


def lowest_venv() -> str:
    """A virtual environment over this Python's packages with the range's lowest PySpark in it (made
    once per machine and version; pip's cache makes a new one quick)."""
    version = lowest(spark_extra()["pyspark"])
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spark-infer-tests")
    venv = os.path.join(folder, f"venv-pyspark-{version}")
    py = os.path.join(venv, "bin", "python")
    done = os.path.join(venv, ".complete")
    if os.path.exists(done):
        return py
    from filelock import FileLock

    os.makedirs(folder, exist_ok=True)
    with FileLock(venv + ".lock"):
        if not os.path.exists(done):
            _make_venv(venv, version)
    return py


def _make_venv(venv: str, version: str) -> None:
    import shutil

    done = os.path.join(venv, ".complete")
    tmp = f"{venv}.{os.getpid()}.tmp"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", tmp], check=True, timeout=300)
    tmp_py = os.path.join(tmp, "bin", "python")
    r = subprocess.run([tmp_py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"pyspark=={version}"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the scripts of a venv name its folder: make it again in place once it has its final name
    shutil.rmtree(venv, ignore_errors=True)
    os.replace(tmp, venv)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True, timeout=300)
    with open(done, "w") as f:
        f.write(version)


@pytest.mark.slow
def test_the_lowest_pyspark_runs_a_real_incremental_job(tmp_path, tiny_bert):
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    py = lowest_venv()
    want = lowest(spark_extra()["pyspark"])
    probe = subprocess.run([py, "-c", "import pyspark, delta, spark_infer.delta_jars as d; "
                                      "print(pyspark.__version__, d.DELTA_PACKAGE)"],
                           capture_output=True, text=True, timeout=120, env={**env(), "PYTHONPATH": ROOT})
    assert probe.stdout.split() == [want, "io.delta:delta-spark_4.0_2.13:4.4.0"], probe.stdout + probe.stderr

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 8) + rows_for("toys", 100, 6)

    def write(rs, mode="error"):
        write_deltalake(inp, pa.table({"id": pa.array([r[0] for r in rs], pa.int64()), "category": [r[1] for r in rs],
                                       "text": [r[2] for r in rs]}), partition_by=["category"], mode=mode)

    write(rows)
    e = env()
    # this PySpark's own JVM and jars: none of the suite's (its class-data archive is of PySpark 4.2's)
    for k in ("SPARK_HOME", "SPARK_SUBMIT_OPTS", "SPARK_INFER_DELTA_PACKAGE", "SPARK_INFER_DELTA_JARS"):
        e.pop(k, None)
    e.update(PYSPARK_PYTHON=py, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
             SPARK_SUBMIT_OPTS="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dspark.ui.enabled=false")

    def job(name: str) -> dict:
        js = str(tmp_path / f"{name}.json")
        r = run([py, "-m", "spark_infer", "score", "--master", "local[2]", "--input", inp, "--output", out,
                 "--model", tiny_bert, "--summary-json", js, "--progress-interval", "0"], env_vars=e, timeout=600)
        assert r.returncode == 0, r.stdout[-6000:]
        return summary(js)

    first = job("first")
    assert sorted(first["units_committed"]) == ["category=books", "category=toys"]
    assert DeltaTable(out).to_pyarrow_table().num_rows == len(rows)
    write(rows_for("garden", 200, 5), mode="append")
    second = job("second")
    assert second["units_committed"] == ["category=garden"] and second["plan"]["units_done"] == 2
    assert DeltaTable(out).to_pyarrow_table().num_rows == len(rows) + 5
