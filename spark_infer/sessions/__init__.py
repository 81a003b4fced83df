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
import time
from collections.abc import Mapping
from typing import Any

from filelock import FileLock
from pyspark.sql import SparkSession

from spark_infer.delta_jars import (
    DELTA_CONFS,
    DELTA_PACKAGE,
    RESOLUTION_CONFS,
    local_delta_jars,
    remember_resolved_jars,
    resolution_failed,
    resolution_lock,
    resolution_log,
    resolved_jars,
    verbose,
)
from spark_infer.errors import ConfigError
from spark_infer.local_cache import cache_dir, data_dir
from spark_infer.sessions.base import SessionCapabilities, registered_kinds

__all__ = ["SessionCapabilities", "active_session", "build_session", "capabilities", "quiet", "session_kinds"]

log = logging.getLogger("spark_infer")
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _discovered = True


def session_kinds() -> list[str]:
    """The names of the session kinds this installation knows (`classic`, `connect`, `serverless`)."""
    _discover()
    return [k.kind for k in registered_kinds()]


def capabilities(spark: SparkSession, kind: str | None = None) -> SessionCapabilities:
    """The capabilities of `spark`: of the kind named (`kind`, e.g. "serverless"), else the first
    kind that recognises the session (a platform's restricted kind before the general one)."""
    _discover()
    kinds = sorted(registered_kinds(), key=lambda k: k.priority)
    if kind and kind != "auto":
        named = next((k for k in kinds if k.kind == kind), None)
        if named is None:
            raise ConfigError(f"config field 'session_kind': unknown kind {kind!r} (one of: auto, "
                              f"{', '.join(k.kind for k in kinds)})")
        if not named.compatible(spark):
            raise ConfigError(f"config field 'session_kind': a {type(spark).__module__}.{type(spark).__name__} "
                              f"cannot be used as a {kind!r} session")
        return named(spark)
    for k in kinds:
        if k.handles(spark):
            return k(spark)
    raise TypeError(f"unsupported Spark session type {type(spark).__module__}.{type(spark).__name__}")


def active_session() -> Any:
    """The session this process is using (classic or Spark Connect), or None."""
    active = SparkSession.getActiveSession()
    # a Connect session is active only once its module was imported (importing it costs half a second)
    if active is None and "pyspark.sql.connect.session" in sys.modules:
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
    warehouse_dir: str | None = None,
) -> Any:
    """Get or create a session with Delta Lake.

        spark = build_session("nightly", master="local[2]")          # classic, Delta jars added
        spark = build_session("nightly", remote="sc://host:15002")   # Spark Connect

    From plain Python the Delta jars are added with `spark.jars`: delta_jars / $SPARK_INFER_DELTA_JARS,
    else the jars resolved on an earlier start, else Delta's Maven package resolved once by Spark's Ivy
    in a short-lived JVM whose output goes to a log file (see `spark_infer.delta_jars`; the first start
    prints one line, a failure the log's tail and path). The JVM starts quietly: a log4j2 file that
    keeps Spark's startup notices off the terminal (NativeCodeLoader, log4j profile, plan truncation,
    and for local masters the hostname notices); $SPARK_INFER_VERBOSE=1 keeps Spark's own defaults, and
    a log4j configuration of the user's own (in JVM options or $SPARK_CONF_DIR) always wins.

    Nothing is left in the working directory: unless the user set `spark.sql.warehouse.dir` (in
    `conf`, spark-defaults.conf or submit options), Spark's warehouse (default `./spark-warehouse`) is
    `warehouse_dir`, else `<user data dir>/spark-warehouse` (`~/.local/share/spark-infer` on Linux, see
    `spark_infer.local_cache.data_dir`), and Derby's home (`derby.log`, `metastore_db` of a Hive
    catalog) is `<user data dir>/derby`.

    With `remote` (or $SPARK_REMOTE) the session is a Spark Connect client: the server owns its
    classpath, so nothing is added and only runtime confs apply. When a session already runs (a
    notebook, Databricks, spark-submit) it is reused as is; the job checks Delta's presence on it.
    """
    active = active_session()
    if active is not None:
        return active
    remote = remote or (os.environ.get("SPARK_REMOTE") if not os.environ.get("PYSPARK_GATEWAY_PORT") else None)
    if remote:
        return _connect(app_name, remote, conf or {}, warehouse_dir, delta_jars)
    effective_master = master or os.environ.get("MASTER") or (
        "local[*]" if not os.environ.get("PYSPARK_GATEWAY_PORT") else "")
    if pins_worker_python(effective_master):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    elif not os.environ.get("PYSPARK_GATEWAY_PORT") and not os.environ.get("MASTER"):
        builder = builder.master("local[*]")
    user_conf = dict(conf or {})
    defaults = _session_defaults(effective_master)
    from spark_infer.sessions.classic import jvm_running  # classic pyspark only: not for a Connect client

    under_submit = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))
    starts_jvm = not under_submit and not jvm_running()
    merged = {**defaults, **user_conf}
    if not under_submit:
        # spark-submit's own --conf values are not visible here, and ours would replace them
        merged = {**_no_litter_confs(user_conf, warehouse_dir), **merged}
    if starts_jvm:
        java_opts = _startup_java_options(user_conf, effective_master)
        if java_opts is not None:
            merged["spark.driver.extraJavaOptions"] = java_opts  # the user's options plus ours
    for k, v in merged.items():
        builder = builder.config(k, v)
    user_jars = user_conf.get("spark.jars")
    if under_submit:
        # the JVM is already up: jar confs set here would be silently ignored
        spark = builder.getOrCreate()
    else:
        # a JVM this process started before keeps its classpath: no resolution for it, but known
        # jars still reach the executors
        jars = _delta_jars_for_new_jvm(user_conf, delta_jars) if starts_jvm else local_delta_jars(delta_jars)
        all_jars = ",".join(j for j in (user_jars, jars) if j)
        spark = (builder.config("spark.jars", all_jars) if all_jars else builder).getOrCreate()
    quiet(spark)
    return spark


def _session_defaults(master: str) -> dict[str, str]:
    """Confs for a JVM this process starts (classic, or a local Connect server): Delta, quiet, sized."""
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        "spark.sql.shuffle.partitions": str(max(2, os.cpu_count() or 2)),
        **DELTA_CONFS,
    }
    if master.startswith("local"):
        # Delta rebuilds table state with 50 shuffle partitions by default: on a laptop or CI box
        # that is most of a small commit's time (5.3 s -> 1.3 s per unit commit measured on 2 cores)
        defaults["spark.databricks.delta.snapshotPartitions"] = str(max(2, os.cpu_count() or 2))
    return defaults


def _delta_jars_for_new_jvm(conf: Mapping[str, str], delta_jars: str | None) -> str:
    """Local Delta jars for a JVM this process starts: given or remembered ones, else Delta's package
    resolved now, once per machine (one process at a time; the others wait, then reuse its result)."""
    from spark_infer.sessions.classic import resolve_packages

    jars = local_delta_jars(delta_jars)
    if jars:
        return jars
    with FileLock(resolution_lock(DELTA_PACKAGE), timeout=_RESOLUTION_WAIT_S):
        jars = resolved_jars()
        if jars:
            return jars  # another process resolved it while this one waited
        log_path = None if verbose() else resolution_log(DELTA_PACKAGE)
        where = f"; log: {log_path}" if log_path else ""
        print(f"spark-infer: downloading Delta Lake jars (once): {DELTA_PACKAGE}{where} ...",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        resolve_conf = {k: conf[k] for k in RESOLUTION_CONFS if conf.get(k)}
        try:
            jars = resolve_packages(DELTA_PACKAGE, resolve_conf, log_path)
        except Exception as exc:  # noqa: BLE001 - py4j/pyspark raise their own types when the JVM exits
            raise resolution_failed(DELTA_PACKAGE, log_path, exc) from exc
        remember_resolved_jars(jars)
        log.debug("event=delta_jars_resolved package=%s jars=%d seconds=%.1f log=%s", DELTA_PACKAGE,
                  len(jars.split(",")), time.monotonic() - t0, log_path)
        return jars


def _set_outside(key: str) -> bool:
    """Whether `key` is set where Spark reads it besides our builder: submit arguments, a JVM
    system property, or spark-defaults.conf (our builder conf would silently replace those)."""
    for var in ("PYSPARK_SUBMIT_ARGS", "SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS"):
        if key in os.environ.get(var, ""):
            return True
    return any(line.split(None, 1)[0] == key for line in _spark_defaults_lines())


def _spark_conf_dir() -> str | None:
    if os.environ.get("SPARK_CONF_DIR"):
        return os.environ["SPARK_CONF_DIR"]
    try:
        from pyspark.find_spark_home import _find_spark_home

        return os.path.join(_find_spark_home(), "conf")
    except Exception:  # noqa: BLE001 - no SPARK_HOME to be found: no conf dir either
        return None


def _spark_defaults_lines() -> list[str]:
    conf_dir = _spark_conf_dir()
    try:
        with open(os.path.join(conf_dir or "", "spark-defaults.conf")) as f:
            return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except OSError:
        return []


def _no_litter_confs(conf: Mapping[str, str], warehouse_dir: str | None) -> dict[str, str]:
    """Spark's static confs that would otherwise write into the working directory."""
    if "spark.sql.warehouse.dir" in conf or _set_outside("spark.sql.warehouse.dir"):
        return {}
    return {"spark.sql.warehouse.dir": os.path.abspath(warehouse_dir or data_dir("spark-warehouse"))}


def _startup_java_options(conf: Mapping[str, str], master: str) -> str | None:
    """spark.driver.extraJavaOptions for a JVM we start: the user's own plus a quiet log4j2 file and
    Derby's home, or None to leave the conf alone (set in spark-defaults.conf or submit options,
    where ours would replace theirs)."""
    key = "spark.driver.extraJavaOptions"
    if key not in conf and _set_outside(key):
        return None
    user = conf.get(key, "")
    ours = []
    if not verbose() and not _user_log4j(user):
        ours.append(_java_opt("log4j2.configurationFile", _quiet_log4j_file(master.startswith("local"))))
    if "derby.system.home" not in user:
        ours.append(_java_opt("derby.system.home", data_dir("derby")))
    if not ours:
        return None
    return " ".join(o for o in (user, *ours) if o)


def _user_log4j(java_options: str) -> bool:
    """Whether the user configured log4j: in JVM options or a log4j2 file in Spark's conf dir."""
    if any("log4j" in text for text in (java_options, os.environ.get("SPARK_SUBMIT_OPTS", ""),
                                         os.environ.get("JAVA_TOOL_OPTIONS", ""))):
        return True
    conf_dir = _spark_conf_dir()
    if conf_dir is None:
        return False
    return any(os.path.exists(os.path.join(conf_dir, f"log4j2.{ext}"))
               for ext in ("properties", "xml", "yaml", "yml", "json"))


def _java_opt(name: str, value: str) -> str:
    # Spark's launcher splits JVM options like a shell: quote paths with spaces (macOS app folders)
    if any(c in value for c in ' "\\\t'):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"-D{name}={value}"


#: how long a start waits for another process's resolution of Delta's jars (a slow first download)
_RESOLUTION_WAIT_S = 900

#: Spark's own log4j2 defaults (spark-common-utils' log4j2-defaults.properties) at WARN, with the
#: startup notices that tell a user nothing to act on turned down
_QUIET_LOG4J2 = """\
# written by spark-infer for JVMs it starts; set SPARK_INFER_VERBOSE=1 to use Spark's defaults
rootLogger.level = warn
rootLogger.appenderRef.stdout.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.jetty.name = org.sparkproject.jetty
logger.jetty.level = warn
logger.jetty2.name = org.sparkproject.jetty.util.component.AbstractLifeCycle
logger.jetty2.level = error
logger.metastore.name = org.apache.hadoop.hive.metastore.RetryingHMSHandler
logger.metastore.level = fatal
logger.metastore2.name = org.apache.hadoop.hive.metastore.ObjectStore
logger.metastore2.level = error
logger.parquet.name = org.apache.parquet.CorruptStatistics
logger.parquet.level = error
logger.parquet2.name = parquet.CorruptStatistics
logger.parquet2.level = error
# "Unable to load native-hadoop library": the builtin Java classes are used, nothing to fix
logger.nativecode.name = org.apache.hadoop.util.NativeCodeLoader
logger.nativecode.level = error
# "Truncated the string representation of a plan": a debug-print limit, not a problem
logger.stringutils.name = org.apache.spark.util.SparkStringUtils
logger.stringutils.level = error
"""
#: local masters only: "your hostname resolves to a loopback address" and port retries matter to
#: executors on other machines, not to a JVM that is the whole cluster
_QUIET_LOG4J2_LOCAL = """\
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = error
"""


def _quiet_log4j_file(local: bool) -> str:
    """The quiet log4j2 file in the cache (rewritten when its content changes)."""
    text = _QUIET_LOG4J2 + (_QUIET_LOG4J2_LOCAL if local else "")
    path = os.path.join(cache_dir("spark"), f"log4j2-quiet-{'local' if local else 'cluster'}.properties")
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: a concurrent start never reads half a file
    return path


def _connect(app_name: str, remote: str, conf: Mapping[str, str], warehouse_dir: str | None = None,
             delta_jars: str | None = None) -> Any:
    """A Spark Connect session (`sc://...`, or `local[N]` for a server started in this process: with
    Delta, like a classic session this process starts)."""
    builder = SparkSession.builder.remote(remote).appName(app_name)
    if remote.startswith("local") and pins_worker_python(remote):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the local server's workers
        # the local server starts with these (and would otherwise put its warehouse in the cwd)
        jars = ",".join(j for j in (conf.get("spark.jars"), _delta_jars_for_new_jvm(conf, delta_jars)) if j)
        start = {**_session_defaults(remote), **_no_litter_confs(conf, warehouse_dir), **conf, "spark.jars": jars}
        java_opts = _startup_java_options(conf, remote)
        if java_opts is not None:
            start["spark.driver.extraJavaOptions"] = java_opts
        builder = builder.config(map=start)
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
