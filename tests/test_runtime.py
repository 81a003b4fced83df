"""Unit tests of the worker runtime (no Spark): batching, order restore, errors, OOM backoff, cache,
device choice, model loading through the cache, and output parity with reference implementations."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest
import torch

from spark_infer.errors import ConfigError
from spark_infer.runtime import (
    ModelCache,
    RuntimeOptions,
    TaskResources,
    choose_device,
    make_spec,
    open_runner,
    plan_micro_batches,
    score_stream,
)
from spark_infer.runtime.batching import RowError, Runner
from spark_infer.runtime.device import gpu_index
from spark_infer.runtime.metrics import COUNTER_NAMES
from spark_infer.tasks.base import Encoding, Task, TaskOptions

# ------------------------------------------------------------------------------------------------
# plan_micro_batches
# ------------------------------------------------------------------------------------------------


def _check_plan(lengths: list[int], max_rows: int, budget: int | None) -> list[np.ndarray]:
    batches = plan_micro_batches(lengths, max_rows, budget)
    flat = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    # every index exactly once
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_rows
        longest = max(lengths[i] for i in b)
        if budget is not None and len(b) > 1:
            assert len(b) * longest <= budget, (b, [lengths[i] for i in b], budget)
    # ascending by length, within and across batches
    seq = [lengths[i] for i in flat]
    assert seq == sorted(seq)
    return batches


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("max_rows,budget", [(1, None), (3, None), (8, None), (4, 40), (16, 64), (64, 7)])
def test_plan_micro_batches_random(seed: int, max_rows: int, budget: int | None) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(0, 30) for _ in range(rng.randint(0, 60))]
    _check_plan(lengths, max_rows, budget)


def test_plan_micro_batches_exact_cuts() -> None:
    lengths = [5, 1, 3, 2, 4, 100]
    batches = _check_plan(lengths, max_rows=2, budget=None)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 4], [0, 5]]
    # budget 8: [1,2] -> 2*2=4 ok, +3 -> 3*3=9 > 8 -> cut; [3,4] -> 2*4=8 fits exactly; +5 -> 15
    batches = _check_plan(lengths, max_rows=10, budget=8)
    assert [[lengths[i] for i in b] for b in batches] == [[1, 2], [3, 4], [5], [100]]


def test_plan_micro_batches_long_row_alone() -> None:
    lengths = [3, 3, 500, 3, 3]
    batches = _check_plan(lengths, max_rows=8, budget=20)
    assert [b.tolist() for b in batches] == [[0, 1, 3, 4], [2]]
    # several rows each over the budget: each is its own batch, none dropped
    batches = _check_plan([50, 60, 70], max_rows=8, budget=10)
    assert [b.tolist() for b in batches] == [[0], [1], [2]]


def test_plan_micro_batches_rejects_zero_rows() -> None:
    with pytest.raises(ValueError):
        plan_micro_batches([1, 2], 0, None)
    assert plan_micro_batches([], 4, 10) == []


# ------------------------------------------------------------------------------------------------
# fake tasks for the Runner
# ------------------------------------------------------------------------------------------------


class WordTask(Task):
    """encode = whitespace split; predict = the row's original text joined back (string output)."""

    name = "fake-words"

    def __init__(self) -> None:
        super().__init__("/nowhere", TaskOptions(), "cpu")
        self.calls: list[list[int]] = []

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return pa.string()

    def encode(self, values: Sequence[str]) -> Encoding:
        return Encoding(ids=[v.split() for v in values], extra={"texts": list(values)})

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        self.calls.append([int(i) for i in idx])
        return pa.array([" ".join(encoding.ids[i]) for i in idx], type=pa.string())


class LengthTask(WordTask):
    """predict = number of characters of the original text (int64)."""

    name = "fake-length"

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return pa.int64()

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        self.calls.append([int(i) for i in idx])
        return pa.array([len(encoding.extra["texts"][i]) for i in idx], type=pa.int64())


class BadRowTask(LengthTask):
    """predict raises ValueError when any row in the micro-batch contains BAD."""

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        texts = encoding.extra["texts"]
        bad = [texts[i] for i in idx if "BAD" in texts[i]]
        if bad:
            raise ValueError(f"cannot score {bad[0]!r}")
        return super().predict(encoding, idx)


class BadEncodeTask(LengthTask):
    """encode raises TypeError whenever the values contain the string POISON."""

    def encode(self, values: Sequence[str]) -> Encoding:
        if any("POISON" in v for v in values):
            raise TypeError("poisoned input")
        return super().encode(values)


class OomTask(LengthTask):
    """CUDA OOM whenever a micro-batch has more than `limit` rows, or holds the text `always`."""

    def __init__(self, limit: int = 4, always: str | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.always = always
        self.sizes: list[int] = []

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        self.sizes.append(len(idx))
        if len(idx) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        if self.always is not None and any(encoding.extra["texts"][i] == self.always for i in idx):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return super().predict(encoding, idx)


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [" ".join(rng.choice(words) + str(k) for k in range(rng.randint(1, 25))) + f" #{i}"
            for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Runner: order restore, nulls, empty strings
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size,budget", [(1, None), (3, None), (7, 40), (64, None), (5, 1), (100, 200)])
def test_runner_restores_input_order(batch_size: int, budget: int | None) -> None:
    texts = _texts(37, seed=batch_size)
    task = WordTask()
    runner = Runner(task, batch_size=batch_size, token_budget=budget)
    out, err = runner.run(texts)
    assert out.type == pa.string()
    assert out.to_pylist() == texts
    assert err.to_pylist() == [None] * len(texts)
    # the model really saw length-sorted micro-batches of at most batch_size rows
    assert all(len(c) <= batch_size for c in task.calls)
    seen = [i for c in task.calls for i in c]
    assert sorted(seen) == list(range(len(texts)))
    lens = [len(texts[i].split()) for i in seen]
    assert lens == sorted(lens)
    if batch_size < len(texts):
        assert len(task.calls) > 1

    lt = LengthTask()
    out2, _ = Runner(lt, batch_size=batch_size, token_budget=budget).run(texts)
    assert out2.to_pylist() == [len(t) for t in texts]


def test_runner_nulls_and_empty_strings() -> None:
    inputs = ["one two three", None, "", "four", None, "five six", ""]
    runner = Runner(LengthTask(), batch_size=2)
    out, err = runner.run(inputs)
    assert out.to_pylist() == [13, None, 0, 4, None, 8, 0]
    assert err.to_pylist() == [None] * 7
    c = runner.counters
    assert c["rows"] == 7
    assert c["null_rows"] == 2
    assert c["scored_rows"] == 5
    assert c["error_rows"] == 0
    assert c["tokens"] == 3 + 0 + 1 + 2 + 0


def test_runner_all_null_and_empty_batch() -> None:
    task = LengthTask()
    runner = Runner(task)
    out, err = runner.run([None, None, None])
    assert out.type == pa.int64()
    assert out.to_pylist() == [None, None, None]
    assert err.to_pylist() == [None, None, None]
    out, err = runner.run([])
    assert len(out) == 0 and len(err) == 0
    assert task.calls == []
    assert runner.counters["null_rows"] == 3
    assert runner.counters["scored_rows"] == 0


def test_runner_counts_accumulate_over_runs() -> None:
    runner = Runner(LengthTask(), batch_size=4)
    runner.run(["a b", "c"])
    runner.run(["d e f", None, "g"])
    c = runner.counters
    assert set(COUNTER_NAMES) <= set(c)
    assert (c["rows"], c["null_rows"], c["scored_rows"], c["tokens"]) == (5, 1, 4, 7)
    assert c["micro_batches"] == 2
    # padded tokens: batch1 ["c","a b"] -> 2*2, batch2 ["g","d e f"] -> 2*3
    assert c["padded_tokens"] == 4 + 6


def test_runner_rejects_bad_on_error() -> None:
    with pytest.raises(ValueError, match="on_error"):
        Runner(LengthTask(), on_error="ignore")


def test_runner_wrong_output_count_is_an_error() -> None:
    class Short(LengthTask):
        def predict(self, encoding, idx):
            return pa.array([1], type=pa.int64())

    with pytest.raises(RuntimeError, match="returned 1 outputs for 3 rows"):
        Runner(Short(), batch_size=8).run(["a", "b", "c"])


# ------------------------------------------------------------------------------------------------
# Runner: error rows
# ------------------------------------------------------------------------------------------------


def test_runner_predict_error_rows_null() -> None:
    inputs = ["good one", "a BAD row", "fine", None, "also BAD here", "last good"]
    runner = Runner(BadRowTask(), batch_size=8)
    out, err = runner.run(inputs)
    assert out.to_pylist() == [8, None, 4, None, None, 9]
    errs = err.to_pylist()
    assert errs[0] is None and errs[2] is None and errs[3] is None and errs[5] is None
    assert "ValueError" in errs[1] and "cannot score 'a BAD row'" in errs[1]
    assert "ValueError" in errs[4] and "cannot score 'also BAD here'" in errs[4]
    c = runner.counters
    assert c["error_rows"] == 2
    assert c["scored_rows"] == 3
    assert c["null_rows"] == 1
    assert c["rows"] == 6


def test_runner_on_error_fail_names_row() -> None:
    runner = Runner(BadRowTask(), batch_size=8, on_error="fail")
    with pytest.raises(RowError, match=r"row 2\b.*cannot score"):
        runner.run(["x", "y", "BAD z", "w"])
    # row_offset shifts the reported row number (position in the task's whole input)
    runner = Runner(BadRowTask(), batch_size=8, on_error="fail")
    with pytest.raises(RowError, match=r"row 12\b"):
        runner.run(["x", "BAD"], row_offset=11)


def test_runner_encode_error_only_spoils_that_row() -> None:
    inputs = ["alpha", "beta POISON", None, "gamma delta"]
    runner = Runner(BadEncodeTask(), batch_size=8)
    out, err = runner.run(inputs)
    assert out.to_pylist() == [5, None, None, 11]
    errs = err.to_pylist()
    assert errs[0] is None and errs[2] is None and errs[3] is None
    assert errs[1] is not None and "TypeError" in errs[1] and "poisoned input" in errs[1]
    assert runner.counters["error_rows"] == 1
    assert runner.counters["scored_rows"] == 2

    # a single bad value alone in a batch
    out, err = Runner(BadEncodeTask()).run(["POISON"])
    assert out.to_pylist() == [None]
    assert "poisoned input" in err.to_pylist()[0]

    with pytest.raises(RowError, match=r"row 1\b.*poisoned"):
        Runner(BadEncodeTask(), on_error="fail").run(["ok", "POISON"])


# ------------------------------------------------------------------------------------------------
# Runner: OOM backoff
# ------------------------------------------------------------------------------------------------


def test_runner_oom_backoff_scores_everything_and_stays_lowered() -> None:
    texts = _texts(30, seed=3)
    task = OomTask(limit=4)
    runner = Runner(task, batch_size=16)
    out, err = runner.run(texts)
    assert out.to_pylist() == [len(t) for t in texts]
    assert err.to_pylist() == [None] * 30
    assert runner.counters["oom_backoffs"] > 0
    assert runner.counters["scored_rows"] == 30
    assert runner.counters["error_rows"] == 0
    assert runner.batch_size <= 4
    lowered = runner.batch_size

    # the next Arrow batch on the same runner starts at the lowered size: no new OOM
    task.sizes.clear()
    backoffs = runner.counters["oom_backoffs"]
    texts2 = _texts(20, seed=4)
    out2, err2 = runner.run(texts2)
    assert out2.to_pylist() == [len(t) for t in texts2]
    assert runner.counters["oom_backoffs"] == backoffs
    assert max(task.sizes) <= lowered
    assert runner.batch_size == lowered


def test_runner_oom_single_row_is_error() -> None:
    texts = [f"row {i} " + "w " * i for i in range(10)]
    poison = texts[6]
    runner = Runner(OomTask(limit=100, always=poison), batch_size=8)
    out, err = runner.run(texts)
    expected = [len(t) for t in texts]
    expected[6] = None
    assert out.to_pylist() == expected
    errs = err.to_pylist()
    assert [i for i, e in enumerate(errs) if e is not None] == [6]
    assert "OOM" in errs[6] and "out of memory" in errs[6]
    assert runner.counters["error_rows"] == 1
    assert runner.counters["scored_rows"] == 9
    assert runner.counters["oom_backoffs"] > 0


def test_runner_runtime_error_with_oom_text_counts_as_oom() -> None:
    class MsgOom(LengthTask):
        def predict(self, encoding, idx):
            if len(idx) > 2:
                raise RuntimeError("HIP out of memory. Tried to allocate 2 GiB")
            return super().predict(encoding, idx)

    runner = Runner(MsgOom(), batch_size=8)
    texts = ["a", "b b", "c c c", "d", "e e", "f"]
    out, err = runner.run(texts)
    assert out.to_pylist() == [len(t) for t in texts]
    assert runner.counters["oom_backoffs"] >= 1
    assert runner.batch_size <= 2


# ------------------------------------------------------------------------------------------------
# ModelCache
# ------------------------------------------------------------------------------------------------


class Closable:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_cache_loads_once_per_key() -> None:
    cache = ModelCache(capacity=2)
    calls: Counter[str] = Counter()

    def loader(name):
        def f():
            calls[name] += 1
            return Closable(name)
        return f

    m1, loaded1 = cache.get("a", loader("a"))
    m2, loaded2 = cache.get("a", loader("a"))
    m3, loaded3 = cache.get("a", loader("a"))
    assert (loaded1, loaded2, loaded3) == (True, False, False)
    assert m1 is m2 is m3
    assert calls["a"] == 1
    assert cache.loads["a"] == 1
    b, loaded_b = cache.get("b", loader("b"))
    assert loaded_b and b.name == "b"
    assert len(cache) == 2 and "a" in cache and "b" in cache


def test_cache_lru_eviction_closes_model() -> None:
    cache = ModelCache(capacity=2)
    a, _ = cache.get("a", lambda: Closable("a"))
    b, _ = cache.get("b", lambda: Closable("b"))
    cache.get("a", lambda: Closable("a2"))  # touch a: b is now least recently used
    c, _ = cache.get("c", lambda: Closable("c"))
    assert b.closed and not a.closed and not c.closed
    assert "b" not in cache and "a" in cache and "c" in cache
    # b comes back as a fresh load
    b2, loaded = cache.get("b", lambda: Closable("b2"))
    assert loaded and b2.name == "b2" and cache.loads["b"] == 2
    assert a.closed  # a was least recently used after c
    cache.clear()
    assert len(cache) == 0 and c.closed and b2.closed


def test_cache_capacity_validation_and_no_close_attr() -> None:
    with pytest.raises(ValueError):
        ModelCache(capacity=0)
    cache = ModelCache(capacity=1)
    cache.get("x", lambda: 42)
    v, loaded = cache.get("y", lambda: 43)  # evicting an object without close() is fine
    assert (v, loaded) == (43, True)


def test_cache_concurrent_get_loads_once() -> None:
    cache = ModelCache(capacity=2)
    calls = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def slow_loader():
        with lock:
            calls.append(1)
        time.sleep(0.2)
        return Closable("shared")

    results: list = [None] * 8

    def worker(k: int) -> None:
        start.wait()
        results[k] = cache.get("key", slow_loader)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1
    models = {id(r[0]) for r in results}
    assert len(models) == 1
    assert sum(r[1] for r in results) == 1  # exactly one caller reports the load
    assert cache.loads["key"] == 1


# ------------------------------------------------------------------------------------------------
# device choice
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_visible_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_choose_device_assigned_gpu(no_visible_env) -> None:
    assert choose_device("auto", TaskResources(("1",)), has_cuda=True) == "cuda:1"
    assert choose_device("cuda", TaskResources(("0",)), has_cuda=True) == "cuda:0"
    assert choose_device("AUTO", TaskResources(("2",)), has_cuda=True) == "cuda:2"
    # a task given two GPUs would leave one idle: refused, naming the setting to change
    with pytest.raises(RuntimeError, match=r"holds 2 GPUs \['2', '3'\].*gpus_per_task=1"):
        choose_device("auto", TaskResources(("2", "3")), has_cuda=True)


def test_choose_device_visible_devices_mapping(monkeypatch) -> None:
    assert gpu_index("3", visible_devices="2,3") == 1
    assert gpu_index("2", visible_devices=" 2 , 3 ") == 0
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        gpu_index("0", visible_devices="2,3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert choose_device("auto", TaskResources(("3",)), has_cuda=True) == "cuda:1"


def test_choose_device_cpu_paths(no_visible_env) -> None:
    assert choose_device("auto", TaskResources(), has_cuda=False) == "cpu"
    assert choose_device("auto", TaskResources(("0",)), has_cuda=False) == "cpu"
    for res in (TaskResources(), TaskResources(("0",))):
        for has in (True, False):
            assert choose_device("cpu", res, has_cuda=has) == "cpu"
    # auto without an assignment still uses a local GPU
    assert choose_device("auto", TaskResources(), has_cuda=True) == "cuda:0"


def test_choose_device_cuda_required(no_visible_env) -> None:
    with pytest.raises(RuntimeError, match=r"device=cuda.*GPU \['1'\].*CUDA is not available"):
        choose_device("cuda", TaskResources(("1",)), has_cuda=False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        choose_device("cuda", TaskResources(), has_cuda=False)
    with pytest.raises(ValueError, match="tpu"):
        choose_device("tpu", TaskResources(), has_cuda=False)


# ------------------------------------------------------------------------------------------------
# open_runner + real tiny models
# ------------------------------------------------------------------------------------------------


def test_open_runner_reuses_cached_model(tiny_bert: str) -> None:
    cache = ModelCache()
    spec = make_spec("embed", tiny_bert)
    rt = RuntimeOptions(device="cpu", batch_size=4)
    counters: Counter[str] = Counter()
    r1 = open_runner(spec, rt, resources=TaskResources(), counters=counters, cache=cache)
    r2 = open_runner(spec, rt, resources=TaskResources(), counters=counters, cache=cache)
    assert r1.task is r2.task
    assert counters["model_loads"] == 1
    assert cache.loads[spec.cache_key("cpu")] == 1
    assert r2.batch_size == 4 and r2.counters is counters

    # an equal spec built again (same folder, same options) hits the same entry
    spec_again = make_spec("embed", tiny_bert)
    assert spec_again == spec
    open_runner(spec_again, rt, resources=TaskResources(), counters=counters, cache=cache)
    assert counters["model_loads"] == 1

    # a different option is a different model entry
    spec2 = make_spec("embed", tiny_bert, normalize=False)
    assert spec2.fingerprint != spec.fingerprint
    r3 = open_runner(spec2, rt, resources=TaskResources(), counters=counters, cache=cache)
    assert r3.task is not r1.task
    assert counters["model_loads"] == 2
    assert cache.loads[spec2.cache_key("cpu")] == 1
    assert sum(cache.loads.values()) == 2

    out, err = r1.run(["good movie", None, "bad phone battery"])
    vals = out.to_pylist()
    assert vals[1] is None and err.to_pylist() == [None, None, None]
    assert len(vals[0]) == 32 and np.isclose(np.linalg.norm(vals[0]), 1.0, atol=1e-5)
    out3, _ = r3.run(["good movie"])
    assert not np.isclose(np.linalg.norm(out3.to_pylist()[0]), 1.0, atol=1e-3)


def test_embed_batching_does_not_change_outputs(tiny_bert: str) -> None:
    """Padding / micro-batch composition must not change an embedding."""
    cache = ModelCache()
    spec = make_spec("embed", tiny_bert)
    texts = ["good", "the price of the product is great", "", "bad bad bad bad bad bad bad bad",
             "unknown wörds ✓", "happy customer love fast service"] * 3
    ref, _ = open_runner(spec, RuntimeOptions(device="cpu", batch_size=1), TaskResources(),
                         cache=cache).run(texts)
    for bs, budget in [(64, None), (4, None), (3, 12)]:
        out, _ = open_runner(spec, RuntimeOptions(device="cpu", batch_size=bs, token_budget=budget),
                             TaskResources(), cache=cache).run(texts)
        np.testing.assert_allclose(np.array(out.to_pylist()), np.array(ref.to_pylist()), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# embed parity with sentence-transformers (packaged MiniLM)
# ------------------------------------------------------------------------------------------------

_LONG = " ".join(
    f"Sentence number {i} talks about distributed data processing, model inference and tables."
    for i in range(40)
)

PARITY_TEXTS = [
    "",
    "Hello world",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Spark runs batch inference over Delta tables.",
    "Machine learning models turn text into vectors.",
    "I loved this movie, the acting was superb!",
    "Terrible customer service, I will never order again.",
    "The battery life of this phone is disappointing.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Le chat est assis sur le tapis.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "emoji test 🚀🔥👍 works?",
    "naïve café résumé façade",
    "1234567890 3.14159 2.71828",
    "SELECT id, text FROM documents WHERE score > 0.5",
    "def f(x):\n    return x * 2",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "ALL CAPS SHOUTING TEXT",
    "repeat repeat repeat repeat repeat repeat repeat",
    "https://example.com/path?query=1&other=two",
    "user@example.org wrote an email",
    "The stock market fell sharply on Monday amid inflation fears.",
    "Photosynthesis converts light energy into chemical energy.",
    "She sells sea shells by the sea shore.",
    "A journey of a thousand miles begins with a single step.",
    "Neural networks approximate functions with layers of weights.",
    "The recipe calls for two cups of flour and one egg.",
    "Quantum computers use qubits instead of bits.",
    "Rain is expected tomorrow afternoon in the north.",
    "The library closes at 8 pm on weekdays.",
    "こんにちは世界、今日はいい天気ですね。",
    "مرحبا بالعالم",
    _LONG,
    _LONG + " And a different ending that is past the truncation point.",
    "short " * 300,
]


def test_embed_parity_with_sentence_transformers(minilm_dir: str) -> None:
    from sentence_transformers import SentenceTransformer

    texts = PARITY_TEXTS
    assert len(texts) >= 40
    counters: Counter[str] = Counter()
    outs = list(score_stream(make_spec("embed"), RuntimeOptions(batch_size=8, device="cpu"),
                             [texts[:17], texts[17:]], counters=counters))
    assert len(outs) == 2
    got = np.array([v for out, _ in outs for v in out.to_pylist()], dtype=np.float64)
    errs = [e for _, err in outs for e in err.to_pylist()]
    assert errs == [None] * len(texts)
    assert got.shape == (len(texts), 384)

    st = SentenceTransformer(minilm_dir, device="cpu")
    ref = st.encode(texts, normalize_embeddings=True, batch_size=16).astype(np.float64)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    bad = [(i, texts[i][:40], c) for i, c in enumerate(cos) if c < 0.9999]
    assert not bad, bad
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    # the three long texts exceed 256 tokens; _LONG and its variant truncate to the same prefix
    assert counters["truncated_rows"] >= 3
    assert counters["rows"] == len(texts) and counters["scored_rows"] == len(texts)
    assert counters["model_loads"] <= 1
    i_long = texts.index(_LONG)
    np.testing.assert_allclose(got[i_long], got[i_long + 1], atol=1e-5)


def test_truncated_rows_counts_only_long_text(tiny_bert: str) -> None:
    cache = ModelCache()
    spec = make_spec("embed", tiny_bert, max_length=8)
    runner = open_runner(spec, RuntimeOptions(device="cpu"), TaskResources(), cache=cache)
    runner.run(["good movie", "the the the the the the the the the the the", "one two three four five six"])
    # CLS + 6 words + SEP = 8 tokens exactly: fits, not truncated
    assert runner.counters["truncated_rows"] == 1


# ------------------------------------------------------------------------------------------------
# classify
# ------------------------------------------------------------------------------------------------

CLS_TEXTS = ["good movie", "terrible service and slow phone", "", "the product is great",
             "i hate this book", "unknown tokens only zzz", "fast fast fast fast", "love the music",
             "sad customer with a bad battery", "the screen of this phone is fine"]


def make_sharp_classifier(path: str, labels=("negative", "neutral", "positive")) -> str:
    """Like tiny_models.make_tiny_classifier but with large random weights, so that outputs differ
    clearly between texts (the fixture's model scores every text ~0.5017 'positive')."""
    from tiny_models import _bert_config, _word_level_tokenizer
    from transformers import BertForSequenceClassification

    os.makedirs(path, exist_ok=True)
    n = _word_level_tokenizer(path)
    cfg = _bert_config(n, num_labels=len(labels), id2label=dict(enumerate(labels)),
                       label2id={lab: i for i, lab in enumerate(labels)}, initializer_range=0.5)
    torch.manual_seed(1)
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sharp_classifier(tmp_path_factory) -> str:
    return make_sharp_classifier(str(tmp_path_factory.mktemp("models") / "sharp-cls"))


def _direct_probs(model_dir: str, texts: list[str], multi_label: bool) -> tuple[list[str], np.ndarray]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[k] for k in range(model.config.num_labels)]
    rows = []
    with torch.no_grad():
        for t in texts:
            logits = model(**tok(t, return_tensors="pt")).logits[0].float()
            rows.append((torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)).numpy())
    return labels, np.array(rows)


@pytest.mark.parametrize("model_fixture", ["tiny_classifier", "sharp_classifier"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_classify_matches_transformers(request, model_fixture: str, multi_label: bool) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    cache = ModelCache()
    spec = make_spec("classify", model_dir, return_all_scores=True, multi_label=multi_label)
    assert spec.output_type() == pa.struct([
        pa.field("label", pa.string()), pa.field("score", pa.float32()),
        pa.field("probabilities", pa.map_(pa.string(), pa.float32())),
    ])
    runner = open_runner(spec, RuntimeOptions(device="cpu", batch_size=3), TaskResources(), cache=cache)
    out, err = runner.run(CLS_TEXTS + [None])
    assert err.to_pylist() == [None] * (len(CLS_TEXTS) + 1)
    rows = out.to_pylist()
    assert rows[-1] is None
    labels, probs = _direct_probs(model_dir, CLS_TEXTS, multi_label)
    for i, row in enumerate(rows[:-1]):
        best = int(np.argmax(probs[i]))
        assert row["label"] == labels[best], (i, CLS_TEXTS[i])
        assert row["score"] == pytest.approx(float(probs[i][best]), abs=1e-5)
        pmap = dict(row["probabilities"])
        assert set(pmap) == set(labels)
        for k, lab in enumerate(labels):
            assert pmap[lab] == pytest.approx(float(probs[i][k]), abs=1e-5)
        if not multi_label:
            assert sum(pmap.values()) == pytest.approx(1.0, abs=1e-5)
    if model_fixture == "sharp_classifier":
        assert len({r["label"] for r in rows[:-1]}) >= 2  # the comparison above discriminates
        if multi_label:
            # sigmoid outputs are independent: they do not sum to 1
            sums = [sum(dict(r["probabilities"]).values()) for r in rows[:-1]]
            assert any(abs(s - 1.0) > 0.05 for s in sums)


def test_classify_without_all_scores(tiny_classifier: str) -> None:
    spec = make_spec("classify", tiny_classifier)
    assert [f.name for f in spec.output_type()] == ["label", "score"]
    runner = open_runner(spec, RuntimeOptions(device="cpu"), TaskResources(), cache=ModelCache())
    out, _ = runner.run(["good movie"])
    row = out.to_pylist()[0]
    assert set(row) == {"label", "score"}
    labels, p = _direct_probs(tiny_classifier, ["good movie"], False)
    assert row["label"] == labels[int(p[0].argmax())]
    assert row["score"] == pytest.approx(float(p[0].max()), abs=1e-6)


# ------------------------------------------------------------------------------------------------
# make_spec validation
# ------------------------------------------------------------------------------------------------


def test_make_spec_unknown_task() -> None:
    with pytest.raises(ConfigError, match="summarize") as ei:
        make_spec("summarize")
    assert "embed" in str(ei.value)  # names the known tasks


def test_make_spec_unknown_option(tiny_bert: str) -> None:
    with pytest.raises(ConfigError, match="poolin"):
        make_spec("embed", tiny_bert, poolin="mean")
    with pytest.raises(ConfigError, match="pooling"):
        make_spec("embed", tiny_bert, pooling="median")
    with pytest.raises(ConfigError, match="max_length"):
        make_spec("embed", tiny_bert, max_length=0)


def test_make_spec_missing_folder(tmp_path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model"):
        make_spec("embed", missing)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    with pytest.raises(ConfigError, match="config.json"):
        make_spec("embed", str(empty))


def test_make_spec_fingerprint_tracks_weights(tmp_path) -> None:
    from tiny_models import make_tiny_bert

    a = make_tiny_bert(str(tmp_path / "a"), seed=0)
    b = make_tiny_bert(str(tmp_path / "b"), seed=1)
    assert make_spec("embed", a).fingerprint != make_spec("embed", b).fingerprint
    assert make_spec("embed", a).fingerprint == make_spec("embed", a).fingerprint


def test_pickle_weights_refused_unless_allowed(tmp_path) -> None:
    from tiny_models import _bert_config, _word_level_tokenizer
    from transformers import BertModel

    path = str(tmp_path / "pickled")
    os.makedirs(path)
    n = _word_level_tokenizer(path)
    torch.manual_seed(0)
    model = BertModel(_bert_config(n)).eval()
    model.save_pretrained(path, safe_serialization=False)
    # transformers 5 writes safetensors even with safe_serialization=False: leave only the pickle
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(path, f))
    torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
    assert not any(f.endswith(".safetensors") for f in os.listdir(path))

    # refused at plan time, from the file names, before any worker loads it
    with pytest.raises(ConfigError, match="allow_pickle"):
        make_spec("embed", path)

    ok = make_spec("embed", path, allow_pickle=True)
    task = ok.load("cpu")
    enc = task.encode(["good movie"])
    got = np.array(task.predict(enc, np.array([0])).to_pylist()[0])
    with torch.no_grad():
        h = model(input_ids=torch.tensor(enc.ids)).last_hidden_state.mean(1)[0]
    ref = torch.nn.functional.normalize(h, dim=0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_relative_model_path_is_made_absolute_for_workers(tiny_bert, monkeypatch):
    import os

    from spark_infer.runtime.spec import make_spec as _make_spec

    parent, name = os.path.split(tiny_bert)
    monkeypatch.chdir(parent)
    spec = _make_spec("embed", name)
    assert spec.reference == tiny_bert
    monkeypatch.chdir("/")
    task = spec.load("cpu")  # a worker in another working directory still finds it
    assert task.model_dir == tiny_bert
