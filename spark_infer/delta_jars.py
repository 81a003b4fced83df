"""Delta Lake's jars and confs for Spark sessions started from plain Python (and spark-submit relaunches).

From plain Python the JVM is started by us, so Delta's jars can be added: local jars
($SPARK_INFER_DELTA_JARS / `delta_jars`), or Maven coordinates resolved by Ivy. Under spark-submit or
Databricks the JVM already runs and these settings would be ignored (see `launch.py`).
"""

from __future__ import annotations

import os

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


def local_delta_jars(delta_jars: str | None = None) -> str | None:
    """Comma-separated local jars to use instead of an Ivy resolution, if any were given."""
    return delta_jars or os.environ.get(DELTA_JARS_ENV) or None


def delta_flags(delta_jars: str | None = None) -> list[str]:
    """spark-submit flags that put Delta on a new JVM's classpath."""
    jars = local_delta_jars(delta_jars)
    flags = ["--jars", jars] if jars else ["--packages", DELTA_PACKAGE]
    for k, v in DELTA_CONFS.items():
        flags += ["--conf", f"{k}={v}"]
    return flags
