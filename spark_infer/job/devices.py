"""Where a run scores, decided before it is fingerprinted: the device kind, the GPUs each scoring task
asks for, and the precision (outputs differ by both, so the fingerprint carries both).

The device kind comes from the session's GPU confs (`resources.plan_devices`); a GPU run's `dtype:
auto` is resolved from the GPUs that will score: the driver's own on a local master, else the
executors' as a small Spark job shaped like the scoring stage reports them (`resources.probe_precision`):
the driver cannot see the executors' GPUs. Workers then score in exactly that precision or fail.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from spark_infer.log import event
from spark_infer.resources import (
    ClusterGpus,
    DevicePlan,
    one_precision,
    plan_devices,
    probe_precision,
    scoring_profile,
)
from spark_infer.runtime import device as device_mod
from spark_infer.runtime.spec import resolved_dtype
from spark_infer.sessions import active_session

if TYPE_CHECKING:
    from spark_infer.config import JobConfig
    from spark_infer.job.session import JobSession
    from spark_infer.report import RunSummary
    from spark_infer.runtime.spec import ModelSpec

#: probe tasks at most (each holds a GPU share for a moment)
PROBE_TASKS = 64


def known_local(cfg: JobConfig, session: JobSession) -> bool:
    """True when the run's master is a local one, known without starting Spark (what `build_session`
    would pick); False where a session exists or must be asked (cheap, or about to start anyway)."""
    res = cfg.resources
    if session.spark is not None or active_session() is not None:
        return False
    submitted = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))  # spark-submit: its master, ask the session
    if res.remote or (os.environ.get("SPARK_REMOTE") and not submitted):
        return False
    return _is_local(res.master or os.environ.get("MASTER") or ("" if submitted else "local[*]"))


def _is_local(master: str) -> bool:
    return master.startswith("local") and not master.startswith("local-cluster")


def place(cfg: JobConfig, spec: ModelSpec, session: JobSession, summary: RunSummary) -> tuple[ModelSpec, DevicePlan]:
    """`spec` fixed to the device kind and precision the run scores in, and the run's device plan."""
    res, device = cfg.resources, cfg.runtime.device
    local = known_local(cfg, session)
    cluster, master, remote = ClusterGpus(), "local[*]" if local else "", False
    if not local and device != "cpu" and not res.gpus_per_task:  # the cluster's GPUs decide: ask the session
        caps = _caps(session)
        cluster, master, remote = ClusterGpus.from_conf(caps.gpu_conf()), caps.master, caps.remote
    plan = plan_devices(device, res.gpus_per_task, res.cpus_per_task, master, remote, cluster,
                        device_mod.cuda_available)
    option = spec.dtype_option
    precision = resolved_dtype(option, plan.kind)
    if plan.kind == "cuda" and option in ("auto", "bfloat16"):  # what the GPUs that score support
        precision = _gpu_precision(cfg, session, summary, plan, option, local)
    if plan.kind == "cuda":  # a CPU run says so in its record only (device_kind, precision)
        event("device_planned", device=plan.kind, precision=precision, gpus_per_task=plan.gpus_per_task,
              reason=plan.reason)
    placed = spec.placed(plan.kind, precision)
    summary.device_kind, summary.precision, summary.backend = plan.kind, placed.precision, placed.backend
    return placed, plan


def _caps(session: JobSession):
    session.open()
    return session.caps


def _gpu_precision(cfg: JobConfig, session: JobSession, summary: RunSummary, plan: DevicePlan, option: str,
                   local: bool) -> str:
    """What `option` (auto, or bfloat16: is it supported?) means on the GPUs that will score."""
    if local or _is_local(_caps(session).master):  # the driver's machine scores: its own GPU
        if not device_mod.cuda_available():
            return resolved_dtype(option, "cuda")  # device: cuda without a GPU: the workers fail as planned
        return device_mod.resolve_precision(option, "cuda:0", device_mod.device_capability("cuda:0"))
    t0 = time.monotonic()
    caps = session.caps
    profile = scoring_profile(caps, plan.gpus_per_task, cfg.resources.cpus_per_task)
    tasks = max(1, min(PROBE_TASKS, caps.default_parallelism()))
    with session.stage("gpu_probe"):
        reports = probe_precision(caps, profile, cfg.runtime.device, option, tasks)
    precision = one_precision(reports)
    summary.durations_s["gpu_probe"] = round(time.monotonic() - t0, 3)
    event("gpu_probe", tasks=len(reports), precision=precision,
          gpus=";".join(sorted({f"{r['host']}|{r['device']}|{r['capability']}" for r in reports})))
    return precision
