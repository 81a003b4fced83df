"""Classic sessions: a JVM in this process (local, spark-submit, a Databricks dedicated cluster)."""

from __future__ import annotations

from typing import Any

from pyspark import AccumulatorParam
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
