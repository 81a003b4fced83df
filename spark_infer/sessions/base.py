"""The session seam: what the job needs from a Spark session, whatever kind it is.

Calls that need a JVM handle (`sparkContext`, `_jvm`) live in the classic implementation only; a
Spark Connect session answers the same questions its own way. Adding a session kind = one module
in `spark_infer/sessions/` with a subclass of `SessionCapabilities` decorated `@register_kind`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pyspark.sql import SparkSession

_KINDS: list[type[SessionCapabilities]] = []


def register_kind(cls: type[SessionCapabilities]) -> type[SessionCapabilities]:
    _KINDS.append(cls)
    return cls


def registered_kinds() -> list[type[SessionCapabilities]]:
    return list(_KINDS)


class SessionCapabilities(ABC):
    """What one live session can do, asked without caring how it reaches Spark."""

    kind: ClassVar[str]
    #: True for Spark Connect sessions (no JVM handle in this process)
    remote: ClassVar[bool] = False
    #: kinds with a lower number are asked first whether they `handle` a session (a platform's
    #: restricted kind before the general kind it narrows)
    priority: ClassVar[int] = 100
    #: whether `DataFrame.persist`/`cache` work (serverless compute refuses them)
    can_persist: ClassVar[bool] = True
    #: bytes a Python UDF may use on the workers, where the platform caps it (None: no cap)
    udf_memory_limit: ClassVar[int | None] = None

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    @classmethod
    @abstractmethod
    def handles(cls, spark: Any) -> bool:
        """True when `spark` is a session of this kind."""

    @classmethod
    def compatible(cls, spark: Any) -> bool:
        """True when `spark` can be used as this kind when asked for it by name (`session_kind`)."""
        return cls.handles(spark)

    def conf_settable(self, key: str) -> bool:
        """Whether the session lets a client set the Spark conf `key` (a platform may allow only some)."""
        return True

    @property
    @abstractmethod
    def master(self) -> str:
        """The master URL (`local[2]`, `spark://...`, `yarn`), or '' where the session does not say."""

    @abstractmethod
    def default_parallelism(self) -> int:
        """Tasks the cluster runs at once (how many Spark tasks a unit is split into by default)."""

    @abstractmethod
    def set_log_level(self, level: str) -> None:
        """Spark's own log level, where the session lets a client set it."""

    @abstractmethod
    def delta_available(self) -> bool:
        """True when Delta Lake's data source is on the session's classpath."""

    @abstractmethod
    def enter_stage(self, tag: str, stage: str) -> None:
        """Tag every Spark job this thread starts from now on with `tag` (for `cancel_tag`) and count
        them under `stage` (for `jobs_in_stage`)."""

    @abstractmethod
    def leave_stage(self, tag: str, stage: str) -> None:
        """Undo `enter_stage` for this thread."""

    def jobs_in_stage(self, stage: str) -> int | None:
        """How many Spark jobs ran under `stage`, or None where the session cannot tell."""
        return None

    @abstractmethod
    def cancel_tag(self, tag: str) -> None:
        """Cancel the running jobs tagged `tag` (never raises: the session may be going down)."""

    def counters_accumulator(self) -> Any:
        """A driver-side accumulator of worker counters (dict name -> int), or None where the session
        has none (then counters travel as metric rows)."""
        return None

    def observation(self, name: str) -> Any:
        """A named `Observation` for `DataFrame.observe` on this kind of session."""
        from pyspark.sql.observation import Observation

        return Observation(name)

    def conf_items(self) -> dict[str, str]:
        """The session's Spark confs (for relaunching the same job elsewhere)."""
        return {}

    @abstractmethod
    def ship_python_file(self, path: str) -> None:
        """Make a .py/.zip/.egg importable in the executors' Python workers."""

    def watch_tasks(self) -> Any:
        """A callable giving (tasks done, tasks) of the session's jobs in flight, or None where the
        session reports no progress (classic sessions count rows with an accumulator instead)."""
        return None

    def stop_watching(self) -> None:  # noqa: B027 - nothing to undo unless a kind watches
        """Undo `watch_tasks`."""

    def gpu_conf(self) -> dict[str, str]:
        """What the session shows of its cluster's GPUs: the executor and task GPU amounts
        (`spark.executor.resource.gpu.amount`, `spark.task.resource.gpu.amount`) and a Databricks
        runtime's version (`spark.databricks.clusterUsageTags.sparkVersion`), those it has and lets a
        client read. A conf the session hides (Spark Connect may refuse it) is left out: unknown, not absent."""
        out: dict[str, str] = {}
        for key in ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount",
                    "spark.databricks.clusterUsageTags.sparkVersion"):
            try:
                value = self.spark.conf.get(key, None)
            except Exception:  # noqa: BLE001 - a platform may refuse to show a conf
                continue
            if value is not None:
                out[key] = str(value)
        return out
