"""The worker-side runtime: model cache, device choice, micro-batching. No Spark session, Delta or CLI.

`score_stream` is what both Spark shells (the Arrow UDF and the mapInArrow function) call: it takes
the task's resources, gets the model from the per-process cache and scores each batch of inputs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa

from spark_infer.runtime.batching import Runner, plan_micro_batches
from spark_infer.runtime.cache import MODEL_CACHE, ModelCache
from spark_infer.runtime.device import TaskResources, choose_device, set_threads, task_resources
from spark_infer.runtime.metrics import new_counters
from spark_infer.runtime.options import RuntimeOptions
from spark_infer.runtime.spec import ModelSpec, make_spec

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
]


def open_runner(
    spec: ModelSpec,
    runtime: RuntimeOptions,
    resources: TaskResources | None = None,
    counters: Counter[str] | None = None,
    cache: ModelCache = MODEL_CACHE,
) -> Runner:
    """A Runner for one task: device from the task's resources, model from the process cache."""
    if resources is None:
        resources = task_resources()
    set_threads(resources)
    device = choose_device(runtime.device, resources)
    counters = counters if counters is not None else new_counters()
    task, loaded = cache.get(spec.cache_key(device), lambda: spec.load(device))
    if loaded:
        counters["model_loads"] += 1
        # per (worker process, device): how the GPU placement tests count loads
        counters[f"{PLACEMENT_PREFIX}load|{os.getpid()}|{device}"] += 1
    runner = Runner(task, runtime.batch_size, runtime.token_budget, runtime.on_error, counters)
    runner.device = device
    runner.resources = resources
    return runner


#: counters whose key starts with this describe task placement, not volumes (kept apart in reports)
PLACEMENT_PREFIX = "placement|"


def _record_task(counters: Counter[str], runner: Runner, started_ns: int) -> None:
    res = runner.resources
    if res.task_attempt_id is None:
        return
    counters[
        f"{PLACEMENT_PREFIX}task|{res.task_attempt_id}|{os.getpid()}|{','.join(res.gpu_addresses)}|"
        f"{runner.device}|{started_ns}|{time.time_ns()}"
    ] = 1


def score_stream(
    spec: ModelSpec,
    runtime: RuntimeOptions,
    batches: Iterable[Sequence[Any]],
    counters: Counter[str] | None = None,
) -> Iterator[tuple[pa.Array, pa.Array]]:
    """Score each batch of inputs; yields (outputs, errors) per batch, in input order."""
    runner: Runner | None = None
    offset = 0
    started = time.time_ns()
    counters = counters if counters is not None else Counter()
    try:
        for inputs in batches:
            if runner is None:  # load lazily: an empty partition never loads a model
                runner = open_runner(spec, runtime, counters=counters)
            yield runner.run(inputs, row_offset=offset)
            offset += len(inputs)
    finally:
        if runner is not None:
            _record_task(counters, runner, started)
