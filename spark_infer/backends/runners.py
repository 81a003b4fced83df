"""A converted model loaded in one Python worker: feeds of int64 arrays in, one float32 array out.

    from spark_infer.backends.runners import load_runner
    run = load_runner(model, "feature-extraction", "openvino", "fp32", model_dir, ["input_ids", "attention_mask"])
    hidden = run({"input_ids": ids, "attention_mask": mask})       # (batch, sequence, hidden)

Threads follow the task: a runner uses as many intra-op threads as torch was given for the task
(`runtime.device.set_threads`: the task's CPUs), one stream, no idle spinning, so no backend takes
every core of a shared executor. OpenVINO gets an explicit inference precision (f32, or bf16 when
asked): its CPU default on bf16-capable machines is bf16, which would change fp32 results by CPU type.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from spark_infer.backends import BackendError, require_installed
from spark_infer.backends.convert import ConversionError, artifact_for, converted

log = logging.getLogger("spark_infer")


class Runner:
    """One loaded session of a converted model."""

    backend: str = ""
    precision: str = "fp32"
    #: the graph's input names (a feed lacking one gets zeros: token_type_ids of a single segment)
    input_names: tuple[str, ...] = ()
    threads: int = 1

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = feeds["input_ids"]
        return {n: np.ascontiguousarray(feeds[n], dtype=np.int64) if n in feeds else np.zeros_like(ids)
                for n in self.input_names}


class OnnxRunner(Runner):
    backend = "onnx"

    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle worker threads spin by default, burning the cores of the executor's other tasks
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the arena keeps the largest micro-batch's activations for the life of the worker
        so.enable_cpu_mem_arena = False
        so.log_severity_level = 3
        self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.threads = int(self.session.get_session_options().intra_op_num_threads)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, self._feeds(feeds))[0]


class OpenVinoRunner(Runner):
    backend = "openvino"

    def __init__(self, path: str, threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        hint = "bf16" if precision == "bf16" else "f32"
        self.compiled = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint,
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
        })
        self.request = self.compiled.create_infer_request()
        self.input_names = tuple(p.get_any_name() for p in self.compiled.inputs)
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.precision = precision
        self.inference_precision = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in self.inference_precision.lower():
            log.warning("event=backend_precision backend=openvino asked=bf16 got=%s reason=cpu_without_bf16",
                        self.inference_precision)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        out = self.request.infer(self._feeds(feeds))
        return np.asarray(next(iter(out.values())), dtype=np.float32)


def input_names_for(model: Any, tokenizer: Any) -> list[str]:
    """What the exported graph takes: ids and mask, plus token_type_ids where the tokenizer makes them
    (BERT's segment ids; RoBERTa-like models have none)."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in (getattr(tokenizer, "model_input_names", None) or []):
        names.append("token_type_ids")
    return names


def load_runner(model: Any, kind: str, backend: str, precision: str, source_dir: str,
                input_names: Sequence[str], threads: int) -> Runner:
    """The converted `model` (cached once per machine) loaded with `threads` intra-op threads."""
    if backend not in ("onnx", "openvino"):
        raise BackendError(f"no converted runner for backend {backend!r}")
    require_installed(backend)
    path = converted(model, kind, artifact_for(backend, precision), source_dir, input_names)
    try:
        if backend == "onnx":
            return OnnxRunner(path, threads)
        return OpenVinoRunner(path, threads, precision)
    except Exception as exc:  # noqa: BLE001 - the library's own error, named with the file it could not load
        raise ConversionError(
            f"backend={backend!r} could not load the converted model {path} ({type(exc).__name__}: {exc}"[:1500]
            + f"); delete {os.path.dirname(path)} to convert it again") from exc


def runner_for(model: Any, kind: str, backend: str, precision: str, source_dir: str, tokenizer: Any) -> Runner:
    """`model` (a loaded transformers model of the snapshot in `source_dir`) on `backend`, converted once
    per machine, with the task's threads (torch's count, set from the task's CPUs); the torch weights
    are then released (the backend holds its own copy; the config stays readable)."""
    import torch

    from spark_infer.backends import effective_precision

    runner = load_runner(model.float(), kind, backend, effective_precision(precision), source_dir,
                         input_names_for(model, tokenizer), torch.get_num_threads())
    model.to("meta")
    return runner
