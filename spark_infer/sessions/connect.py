"""Spark Connect sessions: Databricks serverless and standard (shared) compute, Databricks Connect, and
`SparkSession.builder.remote("sc://...")`. No JVM in this process: everything goes through the
DataFrame/SQL API the server answers.

What differs from a classic session: no accumulators (worker counters travel as metric rows and
come back through the job's own aggregation, or an `Observation`), cancellation through operation
tags (`addTag` / `interruptTag`), code shipped to the workers with `addArtifacts`, and no
classpath to change from here (Delta must be installed on the server).
"""

from __future__ import annotations

import threading
from typing import Any

from spark_infer.sessions.base import SessionCapabilities, register_kind

#: a path no table lives at: reading it tells whether the server knows the `delta` source
_PROBE = "/__spark_infer_probe__/no_table_here"


def is_connect_session(spark: Any) -> bool:
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the Connect client extras are not installed: not a Connect session
        return False
    return isinstance(spark, ConnectSession)


@register_kind
class ConnectSessionKind(SessionCapabilities):
    kind = "connect"
    remote = True

    def __init__(self, spark: Any) -> None:
        super().__init__(spark)
        self._parallelism: int | None = None
        self._progress: dict[str, tuple[int, int]] = {}
        self._progress_lock = threading.Lock()
        self._handler = None

    @classmethod
    def handles(cls, spark: Any) -> bool:
        return is_connect_session(spark)

    @property
    def master(self) -> str:
        try:
            return self.spark.conf.get("spark.master", "") or ""
        except Exception:  # noqa: BLE001 - some servers hide it (Databricks serverless)
            return ""

    def default_parallelism(self) -> int:
        if self._parallelism is None:
            value = None
            try:
                value = self.spark.conf.get("spark.default.parallelism", None)
            except Exception:  # noqa: BLE001
                value = None
            if value:
                self._parallelism = int(value)
            else:
                # a range gets the default parallelism's partitions: count them on the server
                from pyspark.sql import functions as F

                self._parallelism = int(
                    self.spark.range(0, 10_000).select(F.spark_partition_id().alias("p")).distinct().count())
        return max(1, self._parallelism)

    def set_log_level(self, level: str) -> None:
        """The server's log level is the server's business: nothing to set from a client."""

    def delta_available(self) -> bool:
        try:
            if "DeltaSparkSessionExtension" in (self.spark.conf.get("spark.sql.extensions", "") or ""):
                return True
        except Exception:  # noqa: BLE001 - a server may hide its static confs: probe instead
            pass
        try:
            self.spark.read.format("delta").load(_PROBE).schema  # noqa: B018 - analysis is the probe
        except Exception as exc:  # noqa: BLE001
            condition = getattr(exc, "getCondition", lambda: None)() or ""
            return "DATA_SOURCE_NOT_FOUND" not in condition and "DATA_SOURCE_NOT_FOUND" not in str(exc)
        return True

    def enter_stage(self, tag: str, stage: str) -> None:
        self.spark.addTag(tag)  # per thread, like classic job tags

    def leave_stage(self, tag: str, stage: str) -> None:
        self.spark.removeTag(tag)

    def cancel_tag(self, tag: str) -> None:
        try:
            self.spark.interruptTag(tag)
        except Exception:  # noqa: BLE001 - the server may be going away
            pass

    def observation(self, name: str) -> Any:
        from pyspark.sql.connect.observation import Observation

        return Observation(name)

    def ship_python_file(self, path: str) -> None:
        self.spark.addArtifacts(path, pyfile=True)

    # -- progress ---------------------------------------------------------------------------------
    def watch_tasks(self) -> Any:
        """A callable giving (tasks done, tasks) of this session's operations in flight, from the
        server's progress reports; call `stop_watching()` when done."""
        def handler(stages=None, inflight_tasks=None, operation_id=None, done=None, **_: Any) -> None:
            total = sum(s.num_tasks for s in stages or [])
            finished = sum(s.num_completed_tasks for s in stages or [])
            with self._progress_lock:
                if done:
                    self._progress.pop(operation_id, None)
                else:
                    self._progress[operation_id] = (finished, total)

        self._handler = handler
        self.spark.registerProgressHandler(handler)

        def now() -> tuple[int, int]:
            with self._progress_lock:
                return (sum(d for d, _ in self._progress.values()), sum(t for _, t in self._progress.values()))

        return now

    def stop_watching(self) -> None:
        if self._handler is not None:
            try:
                self.spark.removeProgressHandler(self._handler)
            except Exception:  # noqa: BLE001
                pass
            self._handler = None
