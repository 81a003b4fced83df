"""The one place Spark sessions are created (Delta jars and confs, quiet logs, Python workers)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

log = logging.getLogger("spark_infer")

#: The jar matching the pip delta-spark 4.4.1 API. 4.4.1's jar is not on Maven Central (checked
#: 2026-11-29: 404 for every artifact name, 4.4.0 is the newest published), so the 4.4.0 jar built
#: for Spark 4.2 is used; override with $SPARK_INFER_DELTA_PACKAGE.
DELTA_PACKAGE = os.environ.get("SPARK_INFER_DELTA_PACKAGE", "io.delta:delta-spark_4.2_2.13:4.4.0")
DELTA_CONFS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
#: env var naming comma-separated local Delta jars for air-gapped machines (no Ivy download)
DELTA_JARS_ENV = "SPARK_INFER_DELTA_JARS"


def delta_available(spark: SparkSession) -> bool:
    """True when Delta's classes are on the driver's classpath."""
    try:
        jvm = spark.sparkContext._jvm
        jvm.java.lang.Class.forName(
            "io.delta.sql.DeltaSparkSessionExtension", True, jvm.Thread.currentThread().getContextClassLoader()
        )
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def build_session(
    app_name: str = "spark-infer",
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    delta_jars: str | None = None,
) -> SparkSession:
    """Get or create a session with Delta Lake.

    From plain Python the Delta jars are added with `spark.jars` (delta_jars / $SPARK_INFER_DELTA_JARS)
    or resolved by Ivy through `configure_spark_with_delta_pip`. When a session already runs (a
    notebook, Databricks, spark-submit) it is reused as is; the job checks `delta_available` on it.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT") and not os.environ.get("MASTER"):
        builder = builder.master("local[*]")
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # Delta's idempotent writes (txnAppId/txnVersion) need no extra conf; keep retention sane
        "spark.sql.shuffle.partitions": str(max(2, os.cpu_count() or 2)),
        **DELTA_CONFS,
    }
    effective_master = master or os.environ.get("MASTER") or ("local[*]" if not os.environ.get("PYSPARK_GATEWAY_PORT") else "")
    if effective_master.startswith("local"):
        # Delta rebuilds table state with 50 shuffle partitions by default: on a laptop or CI box
        # that is most of a small commit's time (5.3 s -> 1.3 s per unit commit measured on 2 cores)
        defaults["spark.databricks.delta.snapshotPartitions"] = str(max(2, os.cpu_count() or 2))
    for k, v in {**defaults, **(conf or {})}.items():
        builder = builder.config(k, v)
    jars = delta_jars or os.environ.get(DELTA_JARS_ENV)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # under spark-submit the JVM is already up: jar confs set here would be silently ignored
        spark = builder.getOrCreate()
    elif jars:
        spark = builder.config("spark.jars", jars).getOrCreate()
    else:
        # what delta's configure_spark_with_delta_pip does, with a jar version that exists
        spark = builder.config("spark.jars.packages", DELTA_PACKAGE).getOrCreate()
    quiet(spark)
    return spark


def quiet(spark: SparkSession, level: str = "WARN") -> None:
    """Spark's own log noise down to warnings (users raise it with SPARK_INFER_SPARK_LOG_LEVEL)."""
    spark.sparkContext.setLogLevel(os.environ.get("SPARK_INFER_SPARK_LOG_LEVEL", level))
