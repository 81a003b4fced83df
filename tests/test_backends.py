"""CPU backends and precision (spark_infer.backends): every backend x precision against the model's own
library on real text, what is refused at plan time and on a worker, threads, fingerprints, the
conversion cache, and a precision change seen by the job as a model change.

The once-per-node conversion on a two-node standalone cluster is in test_models.py (the S3 test's
cluster, with backend openvino)."""

from __future__ import annotations

import inspect
import os
import sys

import numpy as np
import pytest

from spark_infer.errors import ConfigError
from spark_infer.runtime.spec import make_spec, task_options

#: every combination offered; the refused ones are tested as refusals
OFFERED = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"),
           ("openvino", "int8")]
REFUSED = [("torch", "int8"), ("onnx", "bf16"), ("onnx", "int8")]


def real_texts(n: int = 240) -> list[str]:
    """Real English text that is not in this repository: the standard library's docstrings, of every
    length up to the model's limit (whole docstrings, so some are cut at 256 tokens)."""
    import collections
    import email.message
    import json
    import logging
    import pathlib
    import subprocess
    import threading

    seen, out = set(), []
    for mod in (collections, email.message, json, logging, pathlib, subprocess, threading, os, inspect):
        for _, obj in inspect.getmembers(mod):
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 40 and doc not in seen:
                seen.add(doc)
                out.append(doc)
    assert len(out) >= n, len(out)
    return out[:n]


def _embed(task, texts: list[str]) -> np.ndarray:
    """The task's vectors, micro-batched by length as the runtime does (32 rows a call)."""
    enc = task.encode(texts)
    order = np.argsort([len(r) for r in enc.ids], kind="stable")
    out = np.zeros((len(texts), 0), dtype=np.float32)
    parts = {}
    for i in range(0, len(order), 32):
        idx = order[i: i + 32]
        arr = task.predict(enc, idx)
        parts.update(zip(idx.tolist(), np.asarray(arr.values).reshape(len(idx), -1), strict=True))
    out = np.stack([parts[j] for j in range(len(texts))])
    return out


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return real_texts()


@pytest.fixture(scope="module")
def minilm_reference(texts):
    """What sentence-transformers itself returns for the packaged model, in fp32."""
    from sentence_transformers import SentenceTransformer

    from spark_infer.models import resolve_model

    st = SentenceTransformer(resolve_model(None).local_dir(), device="cpu")
    return st.encode(texts, batch_size=32, convert_to_numpy=True)


@pytest.mark.parametrize("backend,precision", OFFERED, ids=[f"{b}-{p}" for b, p in OFFERED])
def test_packaged_model_every_backend_and_precision(texts, minilm_reference, backend, precision):
    spec = make_spec("embed", None, device_kind="cpu", backend=backend, precision=precision)
    assert spec.backend == backend
    task = spec.load("cpu")
    if backend != "torch":  # the transformer really runs on the backend, with its converted weights
        assert task.model[0].runner.backend == backend
    got = _embed(task, texts)
    err = float(np.abs(got - minilm_reference).max())
    cos = (got * minilm_reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(minilm_reference, axis=1)
    if precision == "fp32":
        assert err <= 1e-4, err  # the default path's bound: the same vectors on any CPU
    else:
        assert float(cos.min()) >= 0.99, float(cos.min())
        assert err > 1e-5, err  # it did run in reduced precision (not silently in fp32)


@pytest.fixture(scope="module")
def classifier_reference(tiny_classifier, texts):
    return _classify(make_spec("classify", tiny_classifier, device_kind="cpu", backend="torch", precision="fp32",
                               return_all_scores=True, max_length=64), texts)


def _classify(spec, texts) -> np.ndarray:
    task = spec.load("cpu")
    enc = task.encode(texts)
    out = task.predict(enc, np.arange(len(texts)))
    return np.array([[v for _, v in sorted(row)] for row in out.field("probabilities").to_pylist()])


@pytest.mark.parametrize("backend,precision", OFFERED, ids=[f"{b}-{p}" for b, p in OFFERED])
def test_tiny_classifier_every_backend_and_precision(tiny_classifier, texts, classifier_reference, backend,
                                                      precision):
    spec = make_spec("classify", tiny_classifier, device_kind="cpu", backend=backend, precision=precision,
                     return_all_scores=True, max_length=64)
    got = _classify(spec, texts)
    ref = classifier_reference
    assert got.shape == ref.shape
    # a random tiny model's probabilities are nearly tied, so scores are compared, not argmaxes
    bound = 1e-4 if precision == "fp32" else 2e-3
    assert float(np.abs(got - ref).max()) <= bound


def test_zero_shot_runs_its_embedder_on_the_backend(texts):
    labels = ["logging and messages", "files and paths", "threads and processes"]
    specs = {b: make_spec("zero_shot", None, device_kind="cpu", backend=b, labels=labels, return_all_scores=True)
             for b in ("torch", "openvino")}
    got = {}
    for b, spec in specs.items():
        task = spec.load("cpu")
        enc = task.encode(texts[:64])
        got[b] = task.predict(enc, np.arange(64)).to_pylist()
    assert specs["openvino"].fingerprint == specs["torch"].fingerprint  # fp32: the same outputs
    assert [r["label"] for r in got["openvino"]] == [r["label"] for r in got["torch"]]
    diff = max(abs(dict(a["scores"])[k] - dict(b["scores"])[k])
               for a, b in zip(got["openvino"], got["torch"], strict=True) for k in labels)
    assert diff <= 1e-4


# -- what is refused, and where ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,precision", REFUSED, ids=[f"{b}-{p}" for b, p in REFUSED])
def test_combinations_not_offered_are_config_errors_naming_why(backend, precision):
    with pytest.raises(ConfigError, match=f"backend='{backend}' with precision='{precision}' is not offered"):
        task_options("embed", backend=backend, precision=precision)


def test_one_knob_per_meaning_and_generation_keeps_torch():
    with pytest.raises(ConfigError, match="dtype .* or precision, not both"):
        task_options("embed", dtype="bfloat16", precision="bf16")
    with pytest.raises(ConfigError, match="takes precision"):
        task_options("classify", backend="onnx", dtype="float16")
    with pytest.raises(ConfigError, match="backend"):
        task_options("generate", backend="onnx")  # generation runs on torch only


def test_a_named_backend_needs_a_cpu_and_a_model_it_exports(tmp_path):
    from parity_models import make_st_decoder

    with pytest.raises(ConfigError, match="runs on CPUs"):
        make_spec("embed", None, device_kind="cuda", backend="onnx")
    # placed on GPUs later (the job's device plan): auto becomes torch, a named backend is refused
    assert make_spec("embed", None).placed("cuda", "bfloat16").backend == "torch"
    with pytest.raises(ConfigError, match="runs on CPUs"):
        make_spec("embed", None, backend="openvino").placed("cuda", "bfloat16")
    qwen = make_st_decoder(str(tmp_path / "qwen3"))
    with pytest.raises(ConfigError, match="model_type 'qwen3' is not one spark-infer exports"):
        make_spec("embed", qwen, backend="openvino")
    assert make_spec("embed", qwen).backend == "torch"  # auto: a model no backend exports stays on torch


def test_a_missing_extra_is_named_at_plan_time_and_on_a_worker(monkeypatch):
    planned = make_spec("embed", None, device_kind="cpu", backend="openvino", precision="int8")
    monkeypatch.setitem(sys.modules, "openvino", None)  # this process cannot import openvino
    with pytest.raises(ConfigError, match=r"pip install 'spark-infer\[openvino\]'"):
        make_spec("embed", None, backend="openvino")
    assert make_spec("embed", None).backend == "onnx"  # auto: the fastest exact backend installed
    with pytest.raises(ConfigError, match=r"spark-infer\[openvino\]"):
        make_spec("embed", None, precision="int8")  # int8 is OpenVINO's only
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert make_spec("embed", None).backend == "torch"
    # a worker without the backend the driver planned: the task fails naming the extra, never falls back
    from spark_infer.backends import BackendError

    with pytest.raises(BackendError, match=r"pip install 'spark-infer\[openvino\]'"):
        planned.load("cpu")


def test_a_converted_file_that_cannot_load_fails_the_task_naming_the_folder(tiny_classifier, monkeypatch, tmp_path):
    from spark_infer.backends.convert import ConversionError

    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    spec = make_spec("classify", tiny_classifier, device_kind="cpu", backend="onnx")
    spec.load("cpu")
    (onnx_file,) = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache" / "converted") for f in fs
                    if f == "model.onnx"]
    with open(onnx_file, "wb") as f:
        f.write(b"not a model")  # a disk error, a partial copy by hand
    with pytest.raises(ConversionError, match=f"delete {os.path.dirname(onnx_file)} to convert it again"):
        spec.load("cpu")


# -- threads, fingerprints, the cache -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_threads_follow_the_tasks_cpus(tiny_classifier, backend):
    import torch

    from spark_infer.runtime import RuntimeOptions, open_runner
    from spark_infer.runtime.cache import ModelCache
    from spark_infer.runtime.device import TaskResources

    before = torch.get_num_threads()
    try:
        spec = make_spec("classify", tiny_classifier, device_kind="cpu", backend=backend)
        for cpus in (1, 2):
            runner = open_runner(spec, RuntimeOptions(device="cpu"), TaskResources(cpus=cpus), cache=ModelCache())
            assert runner.task.runner.threads == cpus
    finally:
        torch.set_num_threads(before)


def test_fp32_is_one_fingerprint_on_every_backend_reduced_precision_is_a_model_change():
    fp32 = {make_spec("embed", None, device_kind="cpu", **o).fingerprint
            for o in ({}, {"backend": "torch"}, {"backend": "onnx"}, {"backend": "openvino"},
                      {"backend": "openvino", "precision": "fp32"}, {"precision": "fp32"})}
    assert len(fp32) == 1
    reduced = [make_spec("embed", None, device_kind="cpu", **o)
               for o in ({"backend": "torch", "precision": "bf16"}, {"backend": "openvino", "precision": "bf16"},
                         {"backend": "openvino", "precision": "int8"})]
    prints = {s.fingerprint for s in reduced}
    assert len(prints) == 3 and not prints & fp32
    assert [s.precision for s in reduced] == ["bf16", "bf16", "int8"]


def test_a_snapshot_converts_once_per_machine_and_again_when_its_files_change(tiny_classifier, monkeypatch,
                                                                               tmp_path):
    import shutil

    from spark_infer.backends.convert import conversions

    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    model = str(tmp_path / "cls")
    shutil.copytree(tiny_classifier, model)
    for _ in range(3):  # three workers of one machine, one after the other
        task = make_spec("classify", model, device_kind="cpu", backend="openvino", precision="int8").load("cpu")
    names = list(task.runner.input_names)
    assert len(conversions(model, "sequence-classification", "onnx", names)) == 1
    assert len(conversions(model, "sequence-classification", "openvino-int8", names)) == 1
    with open(os.path.join(model, "config.json"), "a") as f:
        f.write("\n")  # the folder changed: a new snapshot
    make_spec("classify", model, device_kind="cpu", backend="openvino", precision="int8").load("cpu")
    assert len(conversions(model, "sequence-classification", "openvino-int8", names)) == 1  # the new key's


@pytest.mark.slow  # three whole jobs (in this process)
def test_the_job_sees_a_precision_change_as_a_model_change_and_records_the_backend(spark, tmp_path, tiny_bert):
    from jobutil import rows_for

    from spark_infer import run_job

    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 12) + rows_for("music", 100, 9)
    spark.createDataFrame(rows, "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(inp)
    first = run_job({"input": inp, "output": out, "model": tiny_bert, "device": "cpu",
                     "task_options": {"backend": "onnx"}}, spark=spark)
    assert first.exit_code == 0 and len(first.units_committed) == 2, first.error
    same = run_job({"input": inp, "output": out, "model": tiny_bert, "device": "cpu",
                    "task_options": {"backend": "openvino"}}, spark=spark)  # fp32 elsewhere: nothing to rescore
    assert same.exit_code == 0 and same.units_committed == [] and same.model_fingerprint == first.model_fingerprint
    int8 = run_job({"input": inp, "output": out, "model": tiny_bert, "device": "cpu",
                    "task_options": {"precision": "int8"}}, spark=spark)
    assert int8.exit_code == 0 and int8.plan["units_model_changed"] == 2 and len(int8.units_committed) == 2
    assert int8.model_fingerprint != first.model_fingerprint
    runs = {r.run_id: r for r in spark.read.format("delta").load(out + "_runs").collect()}
    assert (runs[first.run_id].backend, runs[first.run_id].precision) == ("onnx", "float32")
    assert (runs[same.run_id].backend, runs[int8.run_id].backend, runs[int8.run_id].precision) == \
        ("openvino", "openvino", "int8")
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows)
    assert {r.model_fingerprint for r in res.select("model_fingerprint").collect()} == {int8.model_fingerprint}
