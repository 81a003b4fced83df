"""The GPU side of the worker runtime, tested on the CPU: tokenize-ahead, one GPU per task, fitting a
model beside others on a shared GPU, per-worker GPU memory in the record. CUDA itself is faked only at
the device module's boundaries (`gpu_free_bytes`, `gpu_peak_bytes`, `cuda_available`, `device_capability`)."""

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
    monkeypatch.setattr(device_mod, "device_capability", lambda device: (8, 0))  # an Ampere GPU: bfloat16
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


# -- GPU clusters never fall back to CPU silently; precision follows the GPU that scores --------------------


def test_precision_follows_the_gpu_that_scores():
    from spark_infer.errors import DeviceMismatchError
    from spark_infer.runtime.device import resolve_precision

    assert resolve_precision("auto", "cpu", None) == "float32"
    assert resolve_precision("auto", "cuda:0", (8, 0)) == "bfloat16"  # A100
    assert resolve_precision("auto", "cuda:1", (9, 0)) == "bfloat16"  # H100
    assert resolve_precision("auto", "cuda:0", (8, 6)) == "bfloat16"  # A10, L4 (8.9)
    assert resolve_precision("auto", "cuda:0", (7, 5)) == "float16"  # T4
    assert resolve_precision("auto", "cuda:0", (7, 0)) == "float16"  # V100
    for forced in ("float32", "float16"):
        assert resolve_precision(forced, "cuda:0", (7, 5)) == forced
        assert resolve_precision(forced, "cpu", None) == forced
    assert resolve_precision("bfloat16", "cuda:0", (8, 0)) == "bfloat16"
    with pytest.raises(DeviceMismatchError, match=r"compute capability 7\.5.*8\.0.*float16"):
        resolve_precision("bfloat16", "cuda:0", (7, 5))


def test_a_gpu_runs_worker_without_a_gpu_fails_naming_itself(tiny_bert, monkeypatch):
    import socket

    from spark_infer.errors import DeviceMismatchError

    spec = make_spec("embed", tiny_bert).placed("cuda", "float16")
    monkeypatch.setattr(device_mod, "cuda_available", lambda: False)
    MODEL_CACHE.clear()
    for res, why in [(TaskResources(gpu_addresses=("0",), task_attempt_id=5), "assigned it GPU"),
                     (TaskResources(task_attempt_id=6), "assigned it no GPU")]:
        with pytest.raises(DeviceMismatchError) as err:
            open_runner(spec, RuntimeOptions(), res)
        msg = str(err.value)
        assert "planned for GPUs" in msg and why in msg and "device: cpu" in msg, msg
        assert f"host {socket.gethostname()}" in msg and f"task attempt {res.task_attempt_id}" in msg, msg
    # a CPU run's task that Spark gave a GPU: the plan missed the cluster's GPUs, no silent CPU either
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    with pytest.raises(DeviceMismatchError, match="planned for the CPU.*device: cuda"):
        open_runner(make_spec("embed", tiny_bert).placed("cpu", "float32"), RuntimeOptions(),
                    TaskResources(gpu_addresses=("0",)))
    # an explicit device: cpu scores on the CPU whatever the task holds
    runner = open_runner(make_spec("embed", tiny_bert).placed("cpu", "float32"), RuntimeOptions(device="cpu"),
                         TaskResources(gpu_addresses=("0",)))
    assert runner.device == "cpu"
    MODEL_CACHE.clear()


def test_a_gpu_worker_scores_in_the_fingerprinted_precision_and_records_it(tiny_bert, monkeypatch):
    from spark_infer import runtime
    from spark_infer.errors import DeviceMismatchError
    from spark_infer.runtime import worker_records
    from spark_infer.runtime.spec import ModelSpec

    loaded: list[tuple[str, str]] = []
    real_load = ModelSpec.load
    monkeypatch.setattr(device_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(device_mod, "device_capability", lambda device: (7, 5))  # a T4
    monkeypatch.setattr(runtime, "gpu_free_bytes", lambda device: None)
    # a CPU-only torch cannot move to cuda:0: load on the CPU, remember what was asked for
    monkeypatch.setattr(ModelSpec, "load", lambda self, device: loaded.append((device, self.dtype))
                        or real_load(self, "cpu"))
    MODEL_CACHE.clear()
    base = make_spec("embed", tiny_bert)
    counters = Counter()
    open_runner(base.placed("cuda", "float16"), RuntimeOptions(), TaskResources(gpu_addresses=("0",)), counters)
    assert loaded == [("cuda:0", "float16")]
    [w] = worker_records(counters)
    assert (w["device"], w["capability"], w["precision"], w["tasks"]) == ("cuda:0", "7.5", "float16", 1)
    # a UDF's spec (no device fixed) resolves auto on the worker, from its GPU: float16 on a T4
    open_runner(base, RuntimeOptions(), TaskResources(gpu_addresses=("1",)), counters)
    assert loaded[-1] == ("cuda:1", "float16")
    # bfloat16 resolved from other GPUs of the cluster: this T4 fails the task instead of scoring otherwise
    with pytest.raises(DeviceMismatchError, match="mixes GPU generations"):
        open_runner(base.placed("cuda", "bfloat16"), RuntimeOptions(), TaskResources(gpu_addresses=("0",)))
    MODEL_CACHE.clear()


def test_the_driver_refuses_a_group_whose_workers_scored_otherwise(tiny_bert):
    from spark_infer.errors import DeviceMismatchError
    from spark_infer.job.checks import check_workers

    spec = make_spec("embed", tiny_bert).placed("cuda", "bfloat16")
    ok = {"rows": 3, "placement|worker|h1|11|cuda:0|8.0|bfloat16": 2, "placement|worker|h2|12|cuda:1|8.0|bfloat16": 1}
    check_workers(ok, spec)
    with pytest.raises(DeviceMismatchError, match="h3.*cuda:0 in float16.*not committed"):
        check_workers({**ok, "placement|worker|h3|13|cuda:0|7.5|float16": 1}, spec)
    with pytest.raises(DeviceMismatchError, match="cpu in float32"):
        check_workers({"placement|worker|h1|11|cpu||float32": 1}, spec)


def test_a_gpu_cluster_plans_cuda_unless_device_cpu():
    from spark_infer.resources import ClusterGpus, plan_devices

    def plan(device="auto", gpus=None, cpus=None, master="spark://m:7077", remote=False, cluster=None,
             driver_cuda=False):
        p = plan_devices(device, gpus, cpus, master, remote, cluster or ClusterGpus(), lambda: driver_cuda)
        return p.kind, p.gpus_per_task

    executors = ClusterGpus.from_conf({"spark.executor.resource.gpu.amount": "1"})
    # executors with GPUs, tasks without by default: each scoring task asks for one
    assert plan(cluster=executors) == ("cuda", 1.0)
    assert plan("cuda", cluster=executors) == ("cuda", 1.0)
    assert plan(gpus=0.5, cluster=executors) == ("cuda", 0.5)
    assert plan("cpu", cluster=executors) == ("cpu", None)  # the only way to score on CPUs there
    # every task holds a GPU already (the cluster's default): no profile unless it asks for CPUs too
    shared = ClusterGpus.from_conf({"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "0.5"})
    assert plan(cluster=shared) == ("cuda", None)
    assert plan(cpus=2, cluster=shared) == ("cuda", 0.5)
    # a Databricks GPU runtime, over Spark Connect (no profile can be attached)
    dbr = ClusterGpus.from_conf({"spark.databricks.clusterUsageTags.sparkVersion": "15.4.x-gpu-ml-scala2.12"})
    assert dbr.gpu_runtime and plan(master="", remote=True, cluster=dbr) == ("cuda", None)
    assert plan(master="", remote=True, cluster=shared) == ("cuda", None)
    with pytest.raises(ConfigError, match=r"spark\.task\.resource\.gpu\.amount.*device: cpu"):
        plan(master="", remote=True, cluster=executors)
    # no GPU the session shows: the CPU; a local master: the driver's machine decides
    assert plan() == ("cpu", None) and plan("cuda") == ("cuda", None)
    assert plan(master="local[4]") == ("cpu", None) and plan(master="local[4]", driver_cuda=True) == ("cuda", None)
    assert plan(master="local-cluster[2,1,1024]", cluster=executors) == ("cuda", 1.0)
    assert ClusterGpus.from_conf({"spark.executor.resource.gpu.amount": "x"}) == ClusterGpus()


def test_a_sessions_gpu_conf_is_read_where_the_session_shows_it():
    from spark_infer.sessions.classic import ClassicSession

    class Conf:
        def __init__(self, values, hidden=()):
            self.values, self.hidden = values, hidden

        def get(self, key, default=None):
            if key in self.hidden:  # a platform refusing to show a conf (Spark Connect may)
                raise RuntimeError(f"[CONFIG_NOT_AVAILABLE] {key}")
            return self.values.get(key, default)

    class Session:
        def __init__(self, conf):
            self.conf = conf

    amounts = {"spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "1"}
    assert ClassicSession(Session(Conf(amounts))).gpu_conf() == amounts
    assert ClassicSession(Session(Conf(amounts, hidden=("spark.executor.resource.gpu.amount",)))).gpu_conf() == {
        "spark.task.resource.gpu.amount": "1"}
    assert ClassicSession(Session(Conf({}))).gpu_conf() == {}


def test_a_cluster_mixing_gpu_generations_needs_an_explicit_dtype():
    from spark_infer.resources import one_precision

    a100 = {"host": "a", "device": "cuda:0", "capability": "8.0", "precision": "bfloat16"}
    t4 = {"host": "b", "device": "cuda:0", "capability": "7.5", "precision": "float16"}
    assert one_precision([a100, dict(a100, host="c")]) == "bfloat16"
    with pytest.raises(ConfigError, match=r"a cuda:0 \(compute capability 8\.0\): bfloat16.*mixes GPU generations"):
        one_precision([a100, t4])
