"""The GPU side of the worker runtime, tested on the CPU: tokenize-ahead, one GPU per task, fitting a
model beside others on a shared GPU, per-worker GPU memory in the record. CUDA itself is faked only at
the device module's boundaries (`gpu_free_bytes`, `gpu_peak_bytes`, `cuda_available`)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from spark_infer.errors import ConfigError, ModelDoesNotFit
from spark_infer.runtime import (
    MODEL_CACHE,
    RuntimeOptions,
    TaskResources,
    choose_device,
    open_runner,
    score_stream,
)
from spark_infer.runtime import device as device_mod
from spark_infer.runtime.spec import make_spec
from spark_infer.tasks.base import Encoding, Task, TaskOptions

TEXTS = [f"good great product number {i}" + " fine" * (i % 7) for i in range(300)]


def batches(n: int = 5, size: int = 60):
    return [TEXTS[i * size:(i + 1) * size] for i in range(n)]


@pytest.mark.parametrize("prefetch", ["on", "off"])
def test_tokenize_ahead_gives_the_same_outputs(tiny_bert, prefetch):
    spec = make_spec("embed", tiny_bert)
    base = Counter()
    want = [o.to_pylist() for o, _ in score_stream(spec, RuntimeOptions(prefetch="off", batch_size=16), batches(),
                                                    base)]
    got_counters = Counter()
    got = [o.to_pylist() for o, _ in score_stream(spec, RuntimeOptions(prefetch=prefetch, batch_size=16),
                                                   batches(), got_counters)]
    assert len(got) == len(want) == 5
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.array(g), np.array(w))
    for k in ("rows", "tokens", "padded_tokens", "micro_batches", "scored_rows"):
        assert got_counters[k] == base[k], k


class SlowTask(Task):
    """Encoding and predicting each take a while; records when and on which thread each ran."""

    name = "slow_test"
    log: list[tuple[str, int, float, float]] = []

    def __init__(self) -> None:
        super().__init__("", TaskOptions(), "cpu")
        self.batch = 0

    @classmethod
    def output_type_for(cls, options):
        return pa.int64()

    def encode(self, values):
        t0 = time.perf_counter()
        time.sleep(0.15)
        self.log.append(("encode", threading.get_ident(), t0, time.perf_counter()))
        return Encoding(ids=[[1]] * len(values))

    def predict(self, encoding, idx):
        t0 = time.perf_counter()
        time.sleep(0.15)
        self.log.append(("predict", threading.get_ident(), t0, time.perf_counter()))
        return pa.array([1] * len(idx), pa.int64())


def test_the_next_batch_is_encoded_while_the_model_runs_one_ahead_at_most(monkeypatch):
    from spark_infer import runtime

    spec = make_spec("embed", None)
    task = SlowTask()
    SlowTask.log = []
    MODEL_CACHE.clear()
    monkeypatch.setattr(runtime, "_load_if_it_fits", lambda spec, device: task)
    pulled: list[float] = []

    def source():
        for b in [["a"] * 4] * 4:
            pulled.append(time.perf_counter())
            yield b

    t0 = time.perf_counter()
    outs = list(score_stream(spec, RuntimeOptions(prefetch="on", batch_size=64), source()))
    ahead = time.perf_counter() - t0
    assert len(outs) == 4 and all(o.to_pylist() == [1, 1, 1, 1] for o, _ in outs)
    encodes = [e for e in SlowTask.log if e[0] == "encode"]
    predicts = [e for e in SlowTask.log if e[0] == "predict"]
    main = threading.get_ident()
    assert all(e[1] != main for e in encodes) and all(p[1] == main for p in predicts)
    # encode k+1 overlaps predict k ...
    assert any(e[2] < p[3] and p[2] < e[3] for e in encodes for p in predicts)
    # ... and never runs further ahead: when predict k starts, at most batch k+1 was pulled
    for k, p in enumerate(predicts):
        assert sum(1 for t in pulled if t < p[2]) <= k + 2
    SlowTask.log = []
    MODEL_CACHE.clear()
    t0 = time.perf_counter()
    list(score_stream(spec, RuntimeOptions(prefetch="off", batch_size=64), [["a"] * 4] * 4))
    serial = time.perf_counter() - t0
    assert ahead < serial * 0.85, (ahead, serial)
    MODEL_CACHE.clear()


def test_prefetch_auto_is_on_for_gpus_only(tiny_bert):
    from spark_infer.runtime import prefetches

    runner = open_runner(make_spec("embed", tiny_bert), RuntimeOptions(), TaskResources())
    assert runner.device == "cpu" and not prefetches(RuntimeOptions(), runner)
    runner.device = "cuda:0"
    assert prefetches(RuntimeOptions(), runner) and not prefetches(RuntimeOptions(prefetch="off"), runner)
    runner.task.prefetch_safe = False  # e.g. generation: its stop strings decode during predict
    assert not prefetches(RuntimeOptions(prefetch="on"), runner)


def test_more_than_one_gpu_per_task_is_refused(tmp_path):
    from spark_infer.config import build_config

    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match="one GPU per task"):
        build_config(overrides={**base, "gpus_per_task": 2})
    with pytest.raises(ConfigError, match="spark.task.resource.gpu.amount"):
        build_config(overrides={**base, "spark_conf": {"spark.task.resource.gpu.amount": "2"}})
    assert build_config(overrides={**base, "gpus_per_task": 0.25}).resources.gpus_per_task == 0.25
    # a task given two addresses anyway (a cluster default) fails instead of idling one
    with pytest.raises(RuntimeError, match="holds 2 GPUs"):
        choose_device("auto", TaskResources(gpu_addresses=("0", "1")), has_cuda=True)


def test_a_model_that_cannot_fit_beside_others_fails_at_once(tiny_bert, monkeypatch):
    from spark_infer import runtime

    spec = make_spec("embed", tiny_bert, device_kind="cuda")
    need = runtime.model_bytes(spec)
    assert 0 < need < 10 << 20  # bfloat16: half of the stored float32 weights
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(runtime, "gpu_free_bytes", lambda device: need // 3)
    MODEL_CACHE.clear()
    with pytest.raises(ModelDoesNotFit, match="gpus_per_task"):
        open_runner(spec, RuntimeOptions(), TaskResources(gpu_addresses=("0",)))
    monkeypatch.setattr(runtime, "gpu_free_bytes", lambda device: need * 10)
    monkeypatch.setattr(spec.__class__, "load", lambda self, device: runtime.MODEL_CACHE)  # stands in for a model
    assert runtime._load_if_it_fits(spec, "cuda:0") is runtime.MODEL_CACHE
    MODEL_CACHE.clear()


def test_each_tasks_gpu_peak_memory_reaches_the_counters(tiny_bert, monkeypatch):
    from spark_infer import runtime

    monkeypatch.setattr(runtime, "gpu_peak_bytes", lambda device: 123_456_789)
    counters = Counter()
    runner = open_runner(make_spec("embed", tiny_bert), RuntimeOptions(), TaskResources(task_attempt_id=7), counters)
    runtime._record_task(counters, runner, time.time_ns())
    keys = [k for k in counters if k.startswith("placement|gpu_mem|")]
    assert len(keys) == 1 and keys[0].endswith("|7") and counters[keys[0]] == 123_456_789
