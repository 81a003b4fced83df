"""Stage-level scheduling: a task-only ResourceProfile for the scoring stage.

Only the scoring stage (the mapInArrow over the model) asks for GPUs; reading and writing Delta run
without them. Task-only profiles work without dynamic allocation on standalone, YARN and Kubernetes.
`local[N]` cannot schedule GPUs (tasks asking for them never start), so no profile is attached there.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

log = logging.getLogger("spark_infer")

DISCOVERY_SCRIPT = os.path.join(os.path.dirname(__file__), "resources_data", "get_gpus_resources.sh")


def scoring_profile(spark: SparkSession, gpus_per_task: float | None, cpus_per_task: int | None):
    """A ResourceProfile with the task's GPU/CPU request, or None where none can or need apply."""
    if not gpus_per_task and not cpus_per_task:
        return None
    master = spark.sparkContext.master or ""
    if master.startswith("local") and not master.startswith("local-cluster"):
        print(f"event=resource_profile_skipped master={master} reason=local_masters_cannot_schedule_gpus "
              f"gpus_per_task={gpus_per_task} cpus_per_task={cpus_per_task}", file=sys.stderr, flush=True)
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
