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

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

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
