"""Classic sessions: a JVM in this process (local, spark-submit, a Databricks dedicated cluster)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

from pyspark import AccumulatorParam, SparkContext
from pyspark.sql import SparkSession

from spark_infer.sessions.base import SessionCapabilities, register_kind


class _CountersParam(AccumulatorParam):
    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:  # noqa: N802
        for k, v in b.items():
            a[k] = a.get(k, 0) + v
        return a


@register_kind
class ClassicSession(SessionCapabilities):
    kind = "classic"

    @classmethod
    def handles(cls, spark: Any) -> bool:
        return isinstance(spark, SparkSession)  # a Connect session is another class

    @property
    def master(self) -> str:
        return self.spark.sparkContext.master or ""

    def default_parallelism(self) -> int:
        return int(self.spark.sparkContext.defaultParallelism)

    def set_log_level(self, level: str) -> None:
        self.spark.sparkContext.setLogLevel(level)

    def delta_available(self) -> bool:
        try:
            jvm = self.spark.sparkContext._jvm
            jvm.java.lang.Class.forName(
                "io.delta.sql.DeltaSparkSessionExtension", True, jvm.Thread.currentThread().getContextClassLoader()
            )
            return True
        except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
            return False

    def enter_stage(self, tag: str, stage: str) -> None:
        # job tags cancel (cancelJobsWithTag works from any thread); a job group counts
        # (the status tracker has no per-tag lookup). Both are this thread's local properties.
        sc = self.spark.sparkContext
        sc.addJobTag(tag)
        sc.setLocalProperty("spark.jobGroup.id", stage)

    def leave_stage(self, tag: str, stage: str) -> None:
        sc = self.spark.sparkContext
        sc.removeJobTag(tag)
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]

    def jobs_in_stage(self, stage: str) -> int | None:
        return len(self.spark.sparkContext.statusTracker().getJobIdsForGroup(stage))

    def cancel_tag(self, tag: str) -> None:
        try:
            self.spark.sparkContext.cancelJobsWithTag(tag)
        except Exception:  # noqa: BLE001 - the JVM may already be going down
            pass

    def counters_accumulator(self) -> Any:
        return self.spark.sparkContext.accumulator({}, _CountersParam())

    def conf_items(self) -> dict[str, str]:
        return dict(self.spark.sparkContext.getConf().getAll())

    def ship_python_file(self, path: str) -> None:
        self.spark.sparkContext.addPyFile(path)


def jvm_running() -> bool:
    """Whether this process already has a Spark JVM (a stopped session keeps its gateway): its
    classpath is fixed, so jars resolved now could not reach it."""
    return SparkContext._gateway is not None


def resolve_packages(packages: str, conf: Mapping[str, str], log_path: str | None) -> str:
    """Resolve Maven `packages` through Spark's own Ivy resolution (spark-submit's, so repositories,
    Ivy settings and proxy options in `conf` apply) in a short-lived JVM that starts no SparkContext;
    its output goes to `log_path` (None: to this process's stdout/stderr). Returns the resolved jars,
    comma-separated, as Spark puts them in `spark.jars`. Raises if the JVM exits (resolution failed)."""
    from pyspark import SparkConf
    from pyspark.java_gateway import launch_gateway

    spark_conf = SparkConf(loadDefaults=False)
    for k, v in {**conf, "spark.jars.packages": packages}.items():
        spark_conf.set(k, v)
    log_file = open(log_path, "w") if log_path else None  # noqa: SIM115 - the JVM writes to it until it exits
    try:
        kwargs = {"stdout": log_file, "stderr": subprocess.STDOUT} if log_file else None
        gateway = launch_gateway(spark_conf, popen_kwargs=kwargs)
        proc = gateway.proc
        try:
            jars = gateway.jvm.java.lang.System.getProperty("spark.jars") or ""
        finally:
            gateway.shutdown()
            proc.stdin.close()  # the gateway JVM exits when its stdin closes
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if log_file:
            log_file.close()
    if not jars:
        raise RuntimeError(f"spark-submit resolved no jars for {packages}")
    return jars
