"""Where scoring runs: the cluster's GPUs, a task-only ResourceProfile for the scoring stage, and the
precision a GPU run scores in.

Only the scoring stage (the mapInArrow over the model) asks for GPUs; reading and writing Delta run
without them. Task-only profiles work without dynamic allocation on standalone, YARN and Kubernetes.
`local[N]` cannot schedule GPUs (tasks asking for them never start), so no profile is attached there.

`plan_devices` decides, from the session's GPU confs (`SessionCapabilities.gpu_conf`), whether a run
scores on GPUs and what each scoring task asks for; `probe_precision` asks the executors which precision
`dtype: auto` means on their GPUs (the driver cannot see them), so the fingerprint carries it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spark_infer.errors import ConfigError
from spark_infer.log import event
from spark_infer.sessions import SessionCapabilities

DISCOVERY_SCRIPT = os.path.join(os.path.dirname(__file__), "resources_data", "get_gpus_resources.sh")


def _amount(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


@dataclass(frozen=True)
class ClusterGpus:
    """What a session shows of its cluster's GPUs (a hidden conf is unknown, not absent)."""

    #: `spark.executor.resource.gpu.amount`: GPUs per executor
    executor: float | None = None
    #: `spark.task.resource.gpu.amount`: every task's GPU share by default (Databricks sets it)
    task: float | None = None
    #: a Databricks GPU runtime (`spark.databricks.clusterUsageTags.sparkVersion` names one)
    gpu_runtime: bool = False

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> ClusterGpus:
        version = conf.get("spark.databricks.clusterUsageTags.sparkVersion") or ""
        return cls(executor=_amount(conf.get("spark.executor.resource.gpu.amount")),
                   task=_amount(conf.get("spark.task.resource.gpu.amount")),
                   gpu_runtime="gpu" in version.lower())

    @property
    def tasks_hold_gpus(self) -> bool:
        """Every task already holds a GPU (the cluster's default task amount; Databricks GPU runtimes)."""
        return bool(self.task) or self.gpu_runtime

    @property
    def executors_have_gpus(self) -> bool:
        return bool(self.executor) or self.tasks_hold_gpus


@dataclass(frozen=True)
class DevicePlan:
    """Where a run scores: the device kind (fingerprinted) and the GPUs each scoring task asks for in
    its ResourceProfile (None: no GPU request; the cluster's default, or none)."""

    kind: str
    gpus_per_task: float | None
    reason: str


def plan_devices(device: str, gpus_per_task: float | None, cpus_per_task: int | None, master: str, remote: bool,
                 cluster: ClusterGpus, driver_has_cuda: Callable[[], bool]) -> DevicePlan:
    """Pure: where a run with `device` (auto, cpu, cuda) scores, and what its scoring tasks ask for.

    An explicit `device: cpu` is the only way to score on CPUs on a GPU cluster: with `device: auto` and
    `gpus_per_task` unset, a cluster whose executors have GPUs scores on them, each scoring task asking
    for one GPU unless the cluster's default already gives it one. A Spark Connect session cannot attach
    a profile: there the cluster's default task GPU amount must give tasks their GPUs."""
    if device == "cpu":
        return DevicePlan("cpu", gpus_per_task, "device_cpu")
    if gpus_per_task:
        return DevicePlan("cuda", gpus_per_task, "gpus_per_task")
    if master.startswith("local") and not master.startswith("local-cluster"):
        # the driver's machine is the worker: its GPU (local masters schedule none, so no profile)
        if device == "cuda" or driver_has_cuda():
            return DevicePlan("cuda", None, "local_gpu")
        return DevicePlan("cpu", None, "local_no_gpu")
    if cluster.tasks_hold_gpus:
        # every task holds a GPU already; a profile asking for CPUs must ask for that GPU too
        share = cluster.task or 1.0
        return DevicePlan("cuda", share if cpus_per_task and not remote else None, "cluster_task_gpus")
    if cluster.executors_have_gpus:
        if remote:
            raise ConfigError(
                "the cluster's executors have GPUs (spark.executor.resource.gpu.amount) but its tasks hold none "
                "(spark.task.resource.gpu.amount is unset) and a Spark Connect session cannot ask for them: set "
                "spark.task.resource.gpu.amount on the cluster to score on its GPUs, or device: cpu to score on "
                "CPUs"
            )
        return DevicePlan("cuda", 1.0, "cluster_executor_gpus")
    if device == "cuda":
        return DevicePlan("cuda", None, "device_cuda")
    return DevicePlan("cpu", None, "no_cluster_gpus")


def probe_precision(caps: SessionCapabilities, profile: Any, option: str, dtype: str, tasks: int) -> list[dict]:
    """Ask `tasks` Spark tasks shaped like the scoring stage's (its `profile`) which device, compute
    capability and precision they score a GPU run in (`dtype`: the option, `auto`). One small Spark job;
    a task without a GPU fails it with the scoring task's own error."""
    from pyspark.sql.types import StringType, StructField, StructType

    names = ("host", "pid", "gpus", "device", "capability", "precision")
    schema = StructType([StructField(n, StringType()) for n in names])

    def report(batches):
        import pyarrow as pa

        from spark_infer.runtime.device import task_device_report

        for _ in batches:
            pass
        row = task_device_report("cuda", option, dtype)
        yield pa.RecordBatch.from_pylist([row], schema=pa.schema([(n, pa.string()) for n in names]))

    df = caps.spark.range(0, tasks, 1, tasks)
    probe = df.mapInArrow(report, schema, profile=profile) if profile is not None else df.mapInArrow(report, schema)
    return [r.asDict() for r in probe.collect()]


def one_precision(reports: list[dict]) -> str:
    """The one precision every probed GPU resolved to; ConfigError naming them when they differ."""
    found = {r["precision"] for r in reports}
    if len(found) == 1:
        return found.pop()
    seen = sorted({f"{r['host']} {r['device']} (compute capability {r['capability']}): {r['precision']}"
                   for r in reports})
    raise ConfigError(
        f"dtype auto resolves differently on this cluster's GPUs ({'; '.join(seen)}): the cluster mixes GPU "
        "generations; set dtype float16 or float32 explicitly (model.options.dtype, --option dtype=float16)"
    )


def scoring_profile(caps: SessionCapabilities, gpus_per_task: float | None, cpus_per_task: int | None):
    """A ResourceProfile with the task's GPU/CPU request, or None where none can or need apply."""
    if not gpus_per_task and not cpus_per_task:
        return None
    if caps.remote:
        from spark_infer.errors import ConfigError

        raise ConfigError(
            "config fields 'gpus_per_task'/'cpus_per_task' need a classic session: a Spark Connect session "
            "(Databricks serverless or standard compute) cannot attach resource profiles; run on a dedicated "
            "GPU cluster instead"
        )
    master = caps.master
    if master.startswith("local") and not master.startswith("local-cluster"):
        event("resource_profile_skipped", master=master, reason="local_masters_cannot_schedule_gpus",
              gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task)
        return None
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    treqs = TaskResourceRequests()
    if cpus_per_task:
        treqs.cpus(int(cpus_per_task))
    if gpus_per_task:
        treqs.resource("gpu", float(gpus_per_task))
    return ResourceProfileBuilder().require(treqs).build


def main() -> None:
    """`spark-infer-gpu-discovery`: print the path of the bundled GPU discovery script."""
    print(DISCOVERY_SCRIPT)
