"""spark-infer: batch inference on Apache Spark.

    from spark_infer import predict_udf
    df.withColumn("embedding", predict_udf("embed")("text"))      # packaged all-MiniLM-L6-v2

The whole incremental job is one call:

    from spark_infer import run_job
    summary = run_job({"input": "/data/products", "output": "/data/emb"})   # summary.exit_code == 0

Public API: `predict_udf`, `predict_frame`, `ScoringMetrics`, `run_job`, `JobConfig`, `RunSummary`,
`ConfigError`, `ExitCode`, `make_spec`. Everything else is internal and may change.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

#: what to do when PySpark is missing (it is the `spark` extra, not a dependency: see pyproject.toml)
PYSPARK_HINT = (
    "spark-infer needs PySpark 4.0.1 or newer (below 4.3), and none is installed in this Python "
    f"({sys.executable}). Locally and on clusters you set up: pip install 'spark-infer[spark]' "
    "(PySpark and delta-spark). On a Databricks runtime (17.x or newer) `%pip install spark-infer` uses the "
    "runtime's own PySpark: do not install another. With Databricks Connect, databricks-connect provides it: "
    "do not install pyspark beside it."
)


def _require_pyspark() -> None:
    """Fail at import, with what to install, when no PySpark is importable (a cheap check: nothing is
    imported). A PySpark older than 4.0, as its package metadata tells, is refused the same way."""
    if importlib.util.find_spec("pyspark") is None:
        raise ImportError(PYSPARK_HINT)
    from importlib import metadata

    try:
        version = metadata.version("pyspark")
    except metadata.PackageNotFoundError:  # a runtime's own PySpark (Databricks) has no pip metadata
        return
    if int(version.split(".", 1)[0]) < 4:
        raise ImportError(f"spark-infer needs PySpark 4.0.1 or newer (below 4.3); this Python has PySpark "
                          f"{version}: pip install 'spark-infer[spark]' (or a Databricks runtime 17.x or newer)")


_require_pyspark()

__all__ = [
    "ConfigError", "ExitCode", "JobConfig", "RunSummary", "ScoringMetrics", "__version__", "make_spec",
    "predict_frame", "predict_udf", "run_job",
]

if TYPE_CHECKING:
    from spark_infer.config import JobConfig
    from spark_infer.errors import ConfigError
    from spark_infer.report import RunSummary
    from spark_infer.run import ExitCode, run_job
    from spark_infer.runtime.spec import make_spec
    from spark_infer.udf import ScoringMetrics, predict_frame, predict_udf

# Lazy: importing spark_infer on a worker must not import the job's Spark and Delta machinery.
_WHERE = {
    "predict_udf": "spark_infer.udf", "predict_frame": "spark_infer.udf", "ScoringMetrics": "spark_infer.udf",
    "run_job": "spark_infer.run",
    "ExitCode": "spark_infer.run", "JobConfig": "spark_infer.config", "RunSummary": "spark_infer.report",
    "ConfigError": "spark_infer.errors", "make_spec": "spark_infer.runtime.spec",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'spark_infer' has no attribute {name!r}")
