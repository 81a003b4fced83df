"""Delta Lake's jars and confs for Spark sessions started from plain Python (and spark-submit relaunches).

From plain Python the JVM is started by us, so Delta's jars can be added with `spark.jars`: local jars
($SPARK_INFER_DELTA_JARS / `delta_jars`), else the jars an earlier start resolved, else Maven
coordinates resolved once by Spark's own Ivy resolution in a short-lived JVM whose output goes to a
log file in the cache (`resolution_log`), not to the terminal: the first start prints one line
(`spark-infer: downloading Delta Lake jars (once) ...`). $SPARK_INFER_VERBOSE=1, or the `spark_infer`
logger at DEBUG, shows Ivy's and Spark's startup output as they come instead. Under spark-submit or
Databricks the JVM already runs and these settings would be ignored (see `launch.py`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import deque
from urllib.parse import unquote, urlparse

from spark_infer.errors import SinkUnavailable
from spark_infer.local_cache import cache_dir

#: Delta Lake's jar for each Spark line the `[spark]` extra allows (pyspark>=4.0.1,<4.3), all of
#: Delta 4.4.0, matching the pip delta-spark 4.4.x API: Delta publishes one build per Spark line
#: (`delta-spark_<spark>_2.13`; the 4.0 one is built against Spark 4.0.1). 4.4.1's jars are not on
#: Maven Central (checked 2026-11-29: 404 for every artifact name, 4.4.0 is the newest published).
DELTA_PACKAGES = {
    "4.0": "io.delta:delta-spark_4.0_2.13:4.4.0",
    "4.1": "io.delta:delta-spark_4.1_2.13:4.4.0",
    "4.2": "io.delta:delta-spark_4.2_2.13:4.4.0",
}
#: the Spark line whose jar is used when the running PySpark's version is not known or newer
NEWEST_SPARK_LINE = "4.2"


def pyspark_version() -> str | None:
    """The installed PySpark's version (from its package metadata, else its own module), or None."""
    from importlib import metadata

    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:  # a runtime's own PySpark (Databricks) has no pip metadata
        try:
            from pyspark.version import __version__

            return str(__version__)
        except ImportError:
            return None


def delta_package(spark_version: str | None = None) -> str:
    """Delta's Maven package for a Spark version (default: the installed PySpark's); the newest line's
    for versions it does not know; $SPARK_INFER_DELTA_PACKAGE wins."""
    override = os.environ.get("SPARK_INFER_DELTA_PACKAGE")
    if override:
        return override
    version = spark_version or pyspark_version() or ""
    line = ".".join(version.split(".")[:2])
    return DELTA_PACKAGES.get(line, DELTA_PACKAGES[NEWEST_SPARK_LINE])


#: the package for the PySpark installed here (decided once, when the module is imported)
DELTA_PACKAGE = delta_package()
DELTA_CONFS = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}
#: env var naming comma-separated local Delta jars for air-gapped machines (no Ivy download)
DELTA_JARS_ENV = "SPARK_INFER_DELTA_JARS"
#: set to 0 to resolve Delta's package through Ivy at every start (no reuse of a resolution)
REUSE_ENV = "SPARK_INFER_REUSE_RESOLVED_JARS"
#: set to 1 to see Ivy's resolution and Spark's startup output in the terminal
VERBOSE_ENV = "SPARK_INFER_VERBOSE"
#: the user's confs that decide how a package resolves (repositories, Ivy settings, proxies in JVM options)
RESOLUTION_CONFS = ("spark.jars.repositories", "spark.jars.ivy", "spark.jars.ivySettings", "spark.jars.excludes",
                    "spark.driver.extraJavaOptions")


#: a Java stack frame line ("\tat org.apache...(File.scala:12)", "\t... 5 more")
_FRAME = re.compile(r"^\s+(at \S+\(.*\)|\.\.\. \d+ more)\s*$")


class DeltaJarsUnavailable(SinkUnavailable):
    """Delta Lake's jars could not be resolved (no network, a proxy, a repository refusing)."""


def verbose() -> bool:
    """Whether the user asked to see Spark's and Ivy's own output ($SPARK_INFER_VERBOSE or DEBUG logging)."""
    flag = os.environ.get(VERBOSE_ENV, "").strip().lower()
    return flag not in ("", "0", "false", "no") or logging.getLogger("spark_infer").isEnabledFor(logging.DEBUG)


def local_delta_jars(delta_jars: str | None = None) -> str | None:
    """Comma-separated local jars to use instead of an Ivy resolution: given ones, else the jars an
    earlier start resolved for DELTA_PACKAGE (Ivy takes 3-4 s per start even from its cache)."""
    return delta_jars or os.environ.get(DELTA_JARS_ENV) or resolved_jars()


def _resolution_file(package: str, suffix: str = ".txt") -> str:
    return os.path.join(cache_dir("jars"), hashlib.sha256(package.encode()).hexdigest()[:16] + suffix)


def resolution_log(package: str = DELTA_PACKAGE) -> str:
    """The log file of the latest Ivy resolution of `package` (overwritten by the next one)."""
    return _resolution_file(package, ".ivy.log")


def resolution_lock(package: str = DELTA_PACKAGE) -> str:
    """The lock file that lets one process at a time resolve `package` (Ivy's cache is not safe for
    concurrent writers, and the others then reuse the result)."""
    return _resolution_file(package, ".lock")


def log_tail(path: str, lines: int = 15) -> list[str]:
    """The last `lines` non-blank lines of a log file, Java stack frames left out (the message above
    them is what a user can act on); [] if it cannot be read."""
    try:
        with open(path, errors="replace") as f:
            return list(deque((line.rstrip() for line in f if line.strip() and not _FRAME.match(line)),
                              maxlen=lines))
    except OSError:
        return []


def resolution_failed(package: str, log_path: str | None, cause: BaseException) -> DeltaJarsUnavailable:
    """The error for a failed resolution: what failed, the log's last lines and path, what to do."""
    tail = log_tail(log_path) if log_path else []
    shown = "".join(f"\n    {line}" for line in tail)
    where = f"\n  last lines of {log_path}:{shown}\n  full log: {log_path}" if log_path else ""
    return DeltaJarsUnavailable(
        f"could not download Delta Lake's jars ({package}) through Spark's Ivy resolution "
        f"({type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else 'no detail'})"
        f"{where}\n  offline or behind a proxy: put the jars on this machine and name them in "
        f"${DELTA_JARS_ENV} (or `delta_jars`); another Maven repository: spark.jars.repositories or "
        f"spark.jars.ivySettings; ${VERBOSE_ENV}=1 shows Ivy's output as it runs")


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
