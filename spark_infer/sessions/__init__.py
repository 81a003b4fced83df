"""Spark sessions: building one (with Delta), and the capabilities of whichever one the job runs on.

    from spark_infer.sessions import build_session, capabilities
    spark = build_session("my-app", master="local[2]")      # Delta jars and confs included
    capabilities(spark).default_parallelism()
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Mapping
from typing import Any

from pyspark.sql import SparkSession

from spark_infer.delta_jars import DELTA_CONFS, DELTA_PACKAGE, local_delta_jars, remember_resolved_jars
from spark_infer.sessions.base import SessionCapabilities, registered_kinds

__all__ = ["SessionCapabilities", "active_session", "build_session", "capabilities", "quiet"]

log = logging.getLogger("spark_infer")
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _discovered = True


def capabilities(spark: SparkSession) -> SessionCapabilities:
    """The capabilities of `spark` (classic or Spark Connect)."""
    _discover()
    for kind in registered_kinds():
        if kind.handles(spark):
            return kind(spark)
    raise TypeError(f"unsupported Spark session type {type(spark).__module__}.{type(spark).__name__}")


def active_session() -> Any:
    """The session this process is using (classic or Spark Connect), or None."""
    active = SparkSession.getActiveSession()
    if active is None:
        try:
            from pyspark.sql.connect.session import SparkSession as ConnectSession

            active = ConnectSession.getActiveSession()
        except ImportError:  # no Connect client installed
            active = None
    return active


def build_session(
    app_name: str = "spark-infer",
    master: str | None = None,
    conf: Mapping[str, str] | None = None,
    delta_jars: str | None = None,
    remote: str | None = None,
) -> Any:
    """Get or create a session with Delta Lake.

        spark = build_session("nightly", master="local[2]")          # classic, Delta jars added
        spark = build_session("nightly", remote="sc://host:15002")   # Spark Connect

    From plain Python the Delta jars are added with `spark.jars` (delta_jars / $SPARK_INFER_DELTA_JARS)
    or resolved by Ivy from Maven coordinates. With `remote` (or $SPARK_REMOTE) the session is a Spark
    Connect client: the server owns its classpath, so nothing is added and only runtime confs apply.
    When a session already runs (a notebook, Databricks, spark-submit) it is reused as is; the job
    checks Delta's presence on it.
    """
    active = active_session()
    if active is not None:
        return active
    remote = remote or (os.environ.get("SPARK_REMOTE") if not os.environ.get("PYSPARK_GATEWAY_PORT") else None)
    if remote:
        return _connect(app_name, remote, conf or {})
    effective_master = master or os.environ.get("MASTER") or (
        "local[*]" if not os.environ.get("PYSPARK_GATEWAY_PORT") else "")
    if pins_worker_python(effective_master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT") and not os.environ.get("MASTER"):
        builder = builder.master("local[*]")
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.shuffle.partitions": str(max(2, os.cpu_count() or 2)),
        **DELTA_CONFS,
    }
    if effective_master.startswith("local"):
        # Delta rebuilds table state with 50 shuffle partitions by default: on a laptop or CI box
        # that is most of a small commit's time (5.3 s -> 1.3 s per unit commit measured on 2 cores)
        defaults["spark.databricks.delta.snapshotPartitions"] = str(max(2, os.cpu_count() or 2))
    for k, v in {**defaults, **(conf or {})}.items():
        builder = builder.config(k, v)
    user_jars = (conf or {}).get("spark.jars")
    jars = local_delta_jars(delta_jars)
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        # under spark-submit the JVM is already up: jar confs set here would be silently ignored
        spark = builder.getOrCreate()
    elif jars:
        spark = builder.config("spark.jars", ",".join(j for j in (user_jars, jars) if j)).getOrCreate()
    else:
        # what delta's configure_spark_with_delta_pip does, with a jar version that exists
        spark = builder.config("spark.jars.packages", DELTA_PACKAGE).getOrCreate()
        if not user_jars and not (conf or {}).get("spark.jars.packages"):
            remember_resolved_jars(capabilities(spark).conf_items().get("spark.jars"))
    quiet(spark)
    return spark


def _connect(app_name: str, remote: str, conf: Mapping[str, str]) -> Any:
    """A Spark Connect session (`sc://...`, or `local[N]` for a server started in this process)."""
    builder = SparkSession.builder.remote(remote).appName(app_name)
    if remote.startswith("local") and pins_worker_python(remote):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the local server's workers
        builder = builder.config(map=dict(conf))  # the local server starts with these
        spark = builder.getOrCreate()
    else:
        spark = builder.getOrCreate()
        for k, v in conf.items():  # a remote server takes runtime confs only
            try:
                spark.conf.set(k, v)
            except Exception as exc:  # noqa: BLE001 - static confs belong to the server
                log.warning("event=conf_not_set key=%s reason=%s", k, type(exc).__name__)
    return spark


def pins_worker_python(master: str) -> bool:
    """Whether this process may set the workers' Python to its own interpreter: only for a local or
    embedded session, whose workers run on this machine. On a cluster (client mode included) the
    executors' Python is Spark's own settings' business: this venv's path does not exist there."""
    return master.startswith(("local[", "local-cluster[")) or master == "local"


def quiet(spark: SparkSession, level: str = "WARN") -> None:
    """Spark's own log noise down to warnings (users raise it with SPARK_INFER_SPARK_LOG_LEVEL)."""
    capabilities(spark).set_log_level(os.environ.get("SPARK_INFER_SPARK_LOG_LEVEL", level))
