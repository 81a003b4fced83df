"""spark-infer: batch inference on Apache Spark.

    from spark_infer import predict_udf
    embed = predict_udf(task="embed")            # packaged all-MiniLM-L6-v2
    df.withColumn("embedding", embed("text"))
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["predict_udf", "predict_frame", "make_spec", "run_job", "__version__"]


def __getattr__(name: str):
    # Lazy: importing spark_infer on a worker must not import pyspark.sql machinery it does not use.
    if name in ("predict_udf", "predict_frame"):
        from spark_infer import udf

        return getattr(udf, name)
    if name == "run_job":
        from spark_infer.job import run_job

        return run_job
    if name == "make_spec":
        from spark_infer.runtime.spec import make_spec

        return make_spec
    raise AttributeError(name)
