"""spark-submit without Delta on the classpath: relaunch with `--packages` (or `--jars`).

Under spark-submit the JVM starts before the script runs, so `spark.jars.packages` set in the
script's session builder is silently ignored. The job detects the missing classes and starts
spark-submit again with the same master, deploy mode and confs plus Delta's package (or local jars
from $SPARK_INFER_DELTA_JARS / `delta_jars`), then exits with its exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys

from spark_infer.delta_jars import delta_flags
from spark_infer.log import event
from spark_infer.sessions import SessionCapabilities

RELAUNCH_ENV = "SPARK_INFER_RELAUNCHED"
_SKIP_CONFS = {
    "spark.app.id", "spark.app.startTime", "spark.app.submitTime", "spark.driver.host", "spark.driver.port",
    "spark.executor.id", "spark.app.initial.jar.urls", "spark.repl.local.jars", "spark.master",
    "spark.submit.deployMode", "spark.app.name", "spark.jars.packages", "spark.jars", "spark.submit.pyFiles",
    "spark.files", "spark.sql.extensions", "spark.sql.catalog.spark_catalog",
}


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (its JVM is our parent)."""
    return bool(os.environ.get("PYSPARK_GATEWAY_PORT")) and "DATABRICKS_RUNTIME_VERSION" not in os.environ


def relaunch_command(caps: SessionCapabilities, script: str, args: list[str],
                     delta_jars: str | None = None) -> list[str]:
    """The spark-submit command line that reruns `script args` with Delta added."""
    conf = caps.conf_items()
    spark_home = os.environ.get("SPARK_HOME")
    submit = os.path.join(spark_home, "bin", "spark-submit") if spark_home else "spark-submit"
    cmd = [submit, "--master", conf.get("spark.master", "local[*]")]
    if conf.get("spark.submit.deployMode"):
        cmd += ["--deploy-mode", conf["spark.submit.deployMode"]]
    if conf.get("spark.app.name"):
        cmd += ["--name", conf["spark.app.name"]]
    flags = delta_flags(delta_jars)
    if conf.get("spark.jars.packages") and "--packages" in flags:
        i = flags.index("--packages")
        flags[i + 1] = f"{conf['spark.jars.packages']},{flags[i + 1]}"
    elif conf.get("spark.jars.packages"):
        cmd += ["--packages", conf["spark.jars.packages"]]
    if conf.get("spark.jars") and "--jars" in flags:
        i = flags.index("--jars")
        flags[i + 1] = f"{conf['spark.jars']},{flags[i + 1]}"
    elif conf.get("spark.jars"):
        cmd += ["--jars", conf["spark.jars"]]
    for key in ("spark.submit.pyFiles", "spark.files"):
        if conf.get(key):
            cmd += ["--py-files" if key == "spark.submit.pyFiles" else "--files", conf[key]]
    cmd += flags
    for k, v in sorted(conf.items()):
        if k not in _SKIP_CONFS and not k.startswith("spark.driver.extraJavaOptions"):
            cmd += ["--conf", f"{k}={v}"]
    return [*cmd, os.path.abspath(script), *args]


def relaunch_with_delta(caps: SessionCapabilities, args: list[str], delta_jars: str | None = None) -> int:
    """Stop this session, rerun the job under spark-submit with Delta, return its exit code."""
    cmd = relaunch_command(caps, sys.argv[0], args, delta_jars)
    caps.spark.stop()
    env = dict(os.environ, **{RELAUNCH_ENV: "1"})
    for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(k, None)
    event("relaunch", reason="delta_missing", flags=" ".join(delta_flags(delta_jars)))
    return subprocess.call(cmd, env=env)
