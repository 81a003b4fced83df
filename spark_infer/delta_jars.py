"""Delta Lake's jars and confs for Spark sessions started from plain Python (and spark-submit relaunches).

From plain Python the JVM is started by us, so Delta's jars can be added: local jars
($SPARK_INFER_DELTA_JARS / `delta_jars`), or Maven coordinates resolved by Ivy. Under spark-submit or
Databricks the JVM already runs and these settings would be ignored (see `launch.py`).
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import unquote, urlparse

from spark_infer.local_cache import cache_dir

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
#: set to 0 to resolve Delta's package through Ivy at every start (no reuse of a resolution)
REUSE_ENV = "SPARK_INFER_REUSE_RESOLVED_JARS"


def local_delta_jars(delta_jars: str | None = None) -> str | None:
    """Comma-separated local jars to use instead of an Ivy resolution: given ones, else the jars an
    earlier start resolved for DELTA_PACKAGE (Ivy takes 3-4 s per start even from its cache)."""
    return delta_jars or os.environ.get(DELTA_JARS_ENV) or resolved_jars()


def _resolution_file(package: str) -> str:
    return os.path.join(cache_dir("jars"), hashlib.sha256(package.encode()).hexdigest()[:16] + ".txt")


def _local_path(uri: str) -> str:
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def resolved_jars(package: str = DELTA_PACKAGE) -> str | None:
    """The jars Ivy resolved for `package` on an earlier start, if every one of them is still there."""
    if os.environ.get(REUSE_ENV, "1") in ("0", "false", "False"):
        return None
    try:
        with open(_resolution_file(package)) as f:
            jars = [line.strip() for line in f if line.strip()]
    except OSError:
        return None
    if not jars or not all(os.path.isfile(_local_path(j)) for j in jars):
        return None
    return ",".join(jars)


def remember_resolved_jars(spark_jars: str | None, package: str = DELTA_PACKAGE) -> None:
    """Keep the jar list Spark resolved for `package` (its `spark.jars` after the start)."""
    jars = [j for j in (spark_jars or "").split(",") if j.strip()]
    if not jars or not all(os.path.isfile(_local_path(j)) for j in jars):
        return
    path = _resolution_file(package)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(jars) + "\n")
    os.replace(tmp, path)  # atomic: concurrent starts never read half a list


def delta_flags(delta_jars: str | None = None) -> list[str]:
    """spark-submit flags that put Delta on a new JVM's classpath."""
    jars = local_delta_jars(delta_jars)
    flags = ["--jars", jars] if jars else ["--packages", DELTA_PACKAGE]
    for k, v in DELTA_CONFS.items():
        flags += ["--conf", f"{k}={v}"]
    return flags
