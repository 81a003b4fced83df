"""Stage-level scheduling: a task-only ResourceProfile for the scoring stage.

Only the scoring stage (the mapInArrow over the model) asks for GPUs; reading and writing Delta run
without them. Task-only profiles work without dynamic allocation on standalone, YARN and Kubernetes.
`local[N]` cannot schedule GPUs (tasks asking for them never start), so no profile is attached there.
"""

from __future__ import annotations

import os

from spark_infer.log import event
from spark_infer.sessions import SessionCapabilities

DISCOVERY_SCRIPT = os.path.join(os.path.dirname(__file__), "resources_data", "get_gpus_resources.sh")


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
