"""Device choice for a scoring task: Spark's GPU assignment -> torch device, and thread layout.

Knows nothing about Spark beyond the plain list of addresses handed in; `task_resources()` is the
single place that asks PySpark's TaskContext, and it degrades to "no GPU" outside a task.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger("spark_infer")

_warned_fallback = False


@dataclass(frozen=True)
class TaskResources:
    """What the scheduler gave the current task: GPU addresses and CPU cores."""

    gpu_addresses: tuple[str, ...] = ()
    cpus: int | None = None
    task_attempt_id: int | None = None


def task_resources() -> TaskResources:
    """Resources of the running Spark task, or empty resources outside one."""
    try:
        from pyspark import TaskContext
    except ImportError:  # pragma: no cover - pyspark is a dependency
        return TaskResources()
    ctx = TaskContext.get()
    if ctx is None:
        return TaskResources()
    gpus: tuple[str, ...] = ()
    res = ctx.resources().get("gpu")
    if res is not None:
        gpus = tuple(str(a) for a in res.addresses)
    try:
        cpus = int(ctx.cpus())
    except Exception:  # noqa: BLE001 - older/odd contexts
        cpus = None
    return TaskResources(gpu_addresses=gpus, cpus=cpus, task_attempt_id=int(ctx.taskAttemptId()))


def cuda_available() -> bool:
    """The one boundary tests fake: is CUDA usable in this process?"""
    import torch

    return torch.cuda.is_available()


def gpu_index(address: str, visible_devices: str | None = None) -> int:
    """Map a Spark GPU address to a torch CUDA ordinal.

    When CUDA_VISIBLE_DEVICES is set, CUDA renumbers the visible devices from 0, so address "3" with
    CUDA_VISIBLE_DEVICES="2,3" is `cuda:1` (the mapping Spark's TorchDistributor uses).
    """
    if visible_devices is None:
        visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible_devices:
        visible = [v.strip() for v in visible_devices.split(",") if v.strip()]
        if address in visible:
            return visible.index(address)
        raise ValueError(
            f"GPU address {address!r} assigned by Spark is not in CUDA_VISIBLE_DEVICES={visible_devices!r}"
        )
    return int(address)


def choose_device(option: str, resources: TaskResources, has_cuda: bool | None = None) -> str:
    """Pick the torch device string for a task.

    option: "auto" (GPU if one is assigned and CUDA works, else CPU), "cpu", or "cuda" (a GPU is
    required; fails with a clear message otherwise).
    """
    global _warned_fallback
    option = option.lower()
    if option == "cpu":
        return "cpu"
    if option not in ("auto", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {option!r}")
    if has_cuda is None:
        has_cuda = cuda_available()
    if len(resources.gpu_addresses) > 1:
        raise RuntimeError(
            f"this Spark task holds {len(resources.gpu_addresses)} GPUs {list(resources.gpu_addresses)}: spark-infer "
            "scores on one GPU per task (the others would idle); ask for one (gpus_per_task=1, or "
            "spark.task.resource.gpu.amount=1) and run more tasks"
        )
    if resources.gpu_addresses:
        if has_cuda:
            return f"cuda:{gpu_index(resources.gpu_addresses[0])}"
        if option == "cuda":
            raise RuntimeError(
                f"device=cuda: Spark assigned GPU {list(resources.gpu_addresses)} but CUDA is not "
                "available in this Python worker (CPU-only torch build or no driver)"
            )
        if not _warned_fallback:
            _warned_fallback = True
            log.warning(
                "event=device_fallback gpus=%s reason=cuda_unavailable device=cpu",
                ",".join(resources.gpu_addresses),
            )
        return "cpu"
    if option == "cuda":
        if not has_cuda:
            raise RuntimeError("device=cuda but CUDA is not available in this Python worker")
        return "cuda:0"
    # auto without an assignment: a single-GPU laptop/driver still uses its GPU.
    return "cuda:0" if has_cuda else "cpu"


def set_threads(resources: TaskResources) -> None:
    """Give torch as many intra-op threads as the task has cores.

    Spark runs one Python worker per concurrent task; if each used torch's default (all cores) the
    workers would oversubscribe the machine. Outside a task nothing is changed.
    """
    if not resources.cpus:
        return
    import torch

    if torch.get_num_threads() != resources.cpus:
        torch.set_num_threads(resources.cpus)


def gpu_free_bytes(device: str) -> int | None:
    """Free memory on a CUDA device (None for the CPU): the boundary the memory tests fake."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def gpu_peak_bytes(device: str) -> int | None:
    """The most memory this process allocated on a CUDA device so far (None for the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return int(torch.cuda.max_memory_allocated(torch.device(device)))
