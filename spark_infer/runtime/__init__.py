"""The worker-side runtime: model cache, device choice, micro-batching. No Spark session, Delta or CLI.

`score_stream` is what both Spark shells (the Arrow UDF and the mapInArrow function) call: it takes
the task's resources, gets the model from the per-process cache and scores each batch of inputs.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_infer.errors import ModelDoesNotFit, SystemicScoringError
from spark_infer.log import render_message
from spark_infer.runtime.batching import Runner, is_sticky_device_error, plan_micro_batches
from spark_infer.runtime.cache import MODEL_CACHE, ModelCache
from spark_infer.runtime.device import (
    TaskResources,
    choose_device,
    gpu_free_bytes,
    gpu_peak_bytes,
    planned_device,
    set_threads,
    task_resources,
    worker_precision,
)
from spark_infer.runtime.metrics import new_counters
from spark_infer.runtime.options import RuntimeOptions
from spark_infer.runtime.spec import ModelSpec, make_spec

if TYPE_CHECKING:
    from spark_infer.tasks.base import Task

__all__ = [
    "MODEL_CACHE",
    "ModelCache",
    "ModelSpec",
    "Runner",
    "RuntimeOptions",
    "TaskResources",
    "choose_device",
    "make_spec",
    "open_runner",
    "plan_micro_batches",
    "score_stream",
    "worker_records",
]


def open_runner(
    spec: ModelSpec,
    runtime: RuntimeOptions,
    resources: TaskResources | None = None,
    counters: Counter[str] | None = None,
    cache: ModelCache = MODEL_CACHE,
) -> Runner:
    """A Runner for one task: device from the task's resources, model from the process cache."""
    global _device_broken
    if _device_broken:
        # an earlier task left this process's accelerator in a sticky error state (CUDA cannot
        # recover inside a process): end the process, so Spark starts a fresh Python worker
        print(render_message(f"spark-infer: exiting Python worker {os.getpid()}: {_device_broken}"), file=sys.stderr,
              flush=True)
        os._exit(70)
    if resources is None:
        resources = task_resources()
    set_threads(resources)
    device = planned_device(spec.device_kind, runtime.device, resources, planned=f"{spec.device_kind} in {spec.dtype}")
    # the precision is the fingerprinted one, checked against this device (bfloat16 needs 8.0+); a spec
    # not fixed to a device (a UDF's) resolves `auto` here, from this device
    precision, capability = worker_precision(spec.dtype, device, resources, option=spec.dtype_option)
    scored = spec if precision == spec.dtype else dataclasses.replace(spec, dtype=precision)
    counters = counters if counters is not None else new_counters()
    task, loaded = cache.get(spec.cache_key(device), lambda: _load_if_it_fits(scored, device))
    if loaded:
        counters["model_loads"] += 1
        # per (worker process, device): how the GPU placement tests count loads
        counters[f"{PLACEMENT_PREFIX}load|{os.getpid()}|{device}"] += 1
    # per (host, worker process, device): what each worker scored on and in which precision (tasks)
    counters[f"{PLACEMENT_PREFIX}{WORKER_RECORD}|{socket.gethostname()}|{os.getpid()}|{device}|{capability}|"
             f"{precision}"] += 1
    runner = Runner(task, runtime.batch_size, runtime.token_budget, runtime.on_error, counters)
    runner.device = device
    runner.resources = resources
    return runner


#: weight files whose sizes estimate a model's memory
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth")
#: bytes of one parameter by precision; weights are stored in float32 unless a model says otherwise
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def model_bytes(spec: ModelSpec) -> int:
    """An estimate of the memory the model's weights take on the device, from the snapshot's files:
    the stored size, halved when float32 weights are loaded in 16 bits (a lower bound: activations
    and the CUDA context come on top)."""
    stored = sum(size for rel, size in spec.snapshot.manifest if rel.endswith(_WEIGHTS))
    return stored * _BYTES.get(spec.dtype, 4) // 4


def _load_if_it_fits(spec: ModelSpec, device: str) -> Task:
    """Load the task, but fail at once when its weights cannot fit in the GPU's free memory (tasks
    sharing a GPU at gpus_per_task < 1 each hold a copy): a clear error instead of an OOM loop."""
    free = gpu_free_bytes(device)
    need = model_bytes(spec)
    if free is not None and need > free:
        gib = 1 << 30
        raise ModelDoesNotFit(
            f"model {spec.reference!r} needs at least {need / gib:.2f} GiB on {device} in {spec.dtype}, but only "
            f"{free / gib:.2f} GiB are free (each task sharing this GPU holds its own copy: with gpus_per_task="
            f"1/N, N copies must fit). Use fewer tasks per GPU (a larger gpus_per_task), a smaller dtype, or a "
            "larger GPU"
        )
    return spec.load(device)


#: counters whose key starts with this describe task placement, not volumes (kept apart in reports)
PLACEMENT_PREFIX = "placement|"
#: set when a sticky device error was seen in this process (see open_runner)
_device_broken: str = ""


#: placement records `worker|<host>|<pid>|<device>|<compute capability>|<precision>` -> tasks
WORKER_RECORD = "worker"


def pinned_device(spec: ModelSpec, device: str, resources: TaskResources | None = None) -> str:
    """`device` (what `choose_device` picked), held to the device kind the driver fingerprinted (outputs
    differ by device and precision, so no row may be scored on another kind than its fingerprint says):
    DeviceMismatchError for a GPU run's worker without a GPU (see `device.planned_device`)."""
    kept = planned_device(spec.device_kind, "cuda" if device.startswith("cuda") else "cpu",
                          resources or TaskResources(), planned=f"{spec.device_kind} in {spec.dtype}",
                          has_cuda=device.startswith("cuda"))
    return device if kept.startswith("cuda") else kept


def worker_records(counters: dict[str, int]) -> list[dict[str, Any]]:
    """The `worker|...` placement records of `counters`: one dict per (host, Python worker, device) with
    its compute capability, precision and number of tasks."""
    out = []
    for key, tasks in counters.items():
        if key.startswith(f"{PLACEMENT_PREFIX}{WORKER_RECORD}|"):
            host, pid, device, capability, precision = key[len(PLACEMENT_PREFIX):].split("|")[1:]
            out.append({"host": host, "pid": int(pid), "device": device, "capability": capability,
                        "precision": precision, "tasks": int(tasks)})
    return sorted(out, key=lambda w: (w["host"], w["pid"], w["device"]))


def _record_task(counters: Counter[str], runner: Runner, started_ns: int) -> None:
    res = runner.resources
    peak = gpu_peak_bytes(runner.device)
    if peak is not None:  # the most this worker held on its GPU (a max: one key per task attempt)
        counters[f"{PLACEMENT_PREFIX}gpu_mem|{os.getpid()}|{runner.device}|{res.task_attempt_id}"] = peak
    if res.task_attempt_id is None:
        return
    counters[
        f"{PLACEMENT_PREFIX}task|{res.task_attempt_id}|{os.getpid()}|{','.join(res.gpu_addresses)}|"
        f"{runner.device}|{started_ns}|{time.time_ns()}"
    ] = 1


def prefetches(runtime: RuntimeOptions, runner: Runner) -> bool:
    """Whether to encode the next batch while the model runs: on GPUs (the CPU would idle), not on
    CPUs (encoding and the model compete for the same cores), never for tasks that use their
    tokenizer during predict (generation's stop strings)."""
    if runtime.prefetch == "off" or not getattr(runner.task, "prefetch_safe", True):
        return False
    return runtime.prefetch == "on" or runner.device.startswith("cuda")


def _look_ahead(runner: Runner, first: Sequence[Any], rest: Iterator[Sequence[Any]]
                ) -> Iterator[tuple[pa.Array, pa.Array]]:
    """A bounded one-batch look-ahead: batch k+1 is encoded in a thread while batch k runs."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-infer-encode") as pool:
        offset = len(first)
        pending = pool.submit(runner.prepare, first, 0)
        while pending is not None:
            prepared = pending.result()
            following = next(rest, None)
            pending = None
            if following is not None:
                pending = pool.submit(runner.prepare, following, offset)
                offset += len(following)
            yield runner.finish(prepared)


def score_stream(
    spec: ModelSpec,
    runtime: RuntimeOptions,
    batches: Iterable[Sequence[Any]],
    counters: Counter[str] | None = None,
) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Score each batch of inputs; yields (outputs, errors) per batch, in input order."""
    runner: Runner | None = None
    started = time.time_ns()
    counters = counters if counters is not None else Counter()
    it = iter(batches)
    try:
        first = next(it, None)
        if first is None:
            return  # an empty partition never loads a model
        runner = open_runner(spec, runtime, counters=counters)
        if prefetches(runtime, runner):
            yield from _look_ahead(runner, first, it)
        else:
            offset = 0
            for inputs in itertools.chain([first], it):
                yield runner.run(inputs, row_offset=offset)
                offset += len(inputs)
    except SystemicScoringError as exc:
        if runner is not None:
            # a model that cannot score anything is not kept for the next task
            MODEL_CACHE.evict(spec.cache_key(runner.device))
            if is_sticky_device_error(exc.__cause__):
                global _device_broken
                _device_broken = f"sticky device error: {exc.__cause__}"[:500]
        raise
    finally:
        if runner is not None:
            _record_task(counters, runner, started)
