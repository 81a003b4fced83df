"""Device choice for a scoring task: Spark's GPU assignment -> torch device, and thread layout.

Knows nothing about Spark beyond the plain list of addresses handed in; `task_resources()` is the
single place that asks PySpark's TaskContext, and it degrades to "no GPU" outside a task.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

from spark_infer.errors import DeviceMismatchError

log = logging.getLogger("spark_infer")

#: bfloat16 needs compute capability 8.0 (Ampere) or newer; `dtype: auto` is float16 on older GPUs
BF16_MIN_CAPABILITY = (8, 0)

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


#: device nodes one of which a GPU driver that torch.cuda can use creates (NVIDIA, WSL2's, ROCm's)
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def cuda_available() -> bool:
    """The one boundary tests fake: is CUDA usable in this process? On Linux without any GPU driver's
    device node the answer is no without importing torch (seconds of a CPU run's no-op)."""
    if sys.platform.startswith("linux") and not any(os.path.exists(p) for p in GPU_DEVICE_NODES):
        return False
    import torch

    return torch.cuda.is_available()


def device_capability(device: str) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for the CPU: the boundary tests fake."""
    if not device.startswith("cuda"):
        return None
    import torch

    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return int(major), int(minor)


def resolve_precision(dtype: str, device: str, capability: tuple[int, int] | None) -> str:
    """The precision a model runs in on `device` (pure): `auto` is float32 on the CPU, bfloat16 on a GPU
    of compute capability 8.0+ (Ampere and newer) and float16 on an older one (T4 7.5, V100 7.0). An
    explicit dtype is kept, but bfloat16 on a GPU without it fails (DeviceMismatchError)."""
    if not device.startswith("cuda"):
        return "float32" if dtype == "auto" else dtype
    bf16 = capability is not None and tuple(capability) >= BF16_MIN_CAPABILITY
    if dtype == "auto":
        return "bfloat16" if bf16 else "float16"
    if dtype == "bfloat16" and not bf16:
        have = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        raise DeviceMismatchError(
            f"dtype=bfloat16 on {device} of compute capability {have}: bfloat16 needs 8.0 or newer (Ampere); "
            "use dtype float16 (or float32) on this GPU"
        )
    return dtype


def worker_label(resources: TaskResources) -> str:
    """Where this code runs, for error messages: host, Python worker and task attempt."""
    where = f"host {socket.gethostname()} (Python worker {os.getpid()}"
    if resources.task_attempt_id is not None:
        where += f", task attempt {resources.task_attempt_id}"
    return where + ")"


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


def planned_device(kind: str, option: str, resources: TaskResources, planned: str = "",
                   has_cuda: bool | None = None) -> str:
    """`choose_device`, held to the device kind the run was planned and fingerprinted for.

    kind "any" (a UDF): whatever `choose_device` picks. "cuda": a GPU is required; a worker without
    one fails the task with an error naming it (never a silent CPU fallback). "cpu": a GPU that
    `device=auto` finds is left alone, but a task Spark assigned a GPU fails (the plan missed the
    cluster's GPUs). `planned` describes the plan in messages ("cuda in float16")."""
    if has_cuda is None:
        has_cuda = cuda_available()
    if kind == "cuda" and not has_cuda:
        given = (f"Spark assigned it GPU {list(resources.gpu_addresses)} but CUDA is not available in this Python "
                 "worker (a CPU-only torch build, or no driver)" if resources.gpu_addresses
                 else "Spark assigned it no GPU and CUDA is not available in this Python worker")
        raise DeviceMismatchError(
            f"this run was planned for GPUs (scoring on {planned or 'cuda'}), but {worker_label(resources)} has "
            f"none: {given}. The task fails rather than writing CPU rows under a GPU fingerprint; to score "
            "on CPU on this cluster, set device: cpu (runtime.device, --device cpu)"
        )
    device = choose_device("cuda" if kind == "cuda" and option == "auto" else option, resources, has_cuda)
    if kind == "cuda" and not device.startswith("cuda"):
        raise DeviceMismatchError(f"device={option} in a run planned for GPUs ({planned or 'cuda'})")
    if kind == "cpu" and device.startswith("cuda"):
        if resources.gpu_addresses:
            raise DeviceMismatchError(
                f"Spark assigned GPU {list(resources.gpu_addresses)} to this task on {worker_label(resources)}, "
                "but the run was planned for the CPU (the session did not show the cluster's GPUs): set "
                "device: cuda to score on the GPUs, or device: cpu to score on CPUs"
            )
        return "cpu"  # device=auto found a GPU the job did not plan for: score as fingerprinted
    return device


def worker_precision(dtype: str, device: str, resources: TaskResources, option: str = "") -> tuple[str, str]:
    """(precision, compute capability "8.0" or "") this worker scores in on `device`: `resolve_precision`
    over the device's capability, its errors naming the worker. `option` is the dtype the user asked
    for when `dtype` is what the driver resolved it to (a message then says how to fix a mixed cluster)."""
    capability = device_capability(device)
    try:
        precision = resolve_precision(dtype, device, capability)
    except DeviceMismatchError as exc:
        hint = ""
        if option == "auto" and dtype != "auto":
            hint = (f" (the run resolved dtype auto to {dtype} from the cluster's other GPUs: the cluster mixes GPU "
                    "generations; set dtype float16 or float32 explicitly)")
        raise DeviceMismatchError(f"{worker_label(resources)}: {exc}{hint}") from None
    return precision, ("" if capability is None else f"{capability[0]}.{capability[1]}")


def task_device_report(kind: str, option: str, dtype: str) -> dict[str, str]:
    """What the running Spark task would score on: host, Python worker, GPU addresses, device, compute
    capability and precision (the driver's probe of a GPU run's precision). Raises like a scoring task
    would where the task cannot score as planned."""
    res = task_resources()
    device = planned_device(kind, option, res, planned=kind)
    precision, capability = worker_precision(dtype, device, res)
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "gpus": ",".join(res.gpu_addresses),
            "device": device, "capability": capability, "precision": precision}


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
