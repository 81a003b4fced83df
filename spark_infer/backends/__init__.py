"""How a text model's transformer runs: eager torch, ONNX Runtime or OpenVINO, in fp32, bf16 or int8.

The `embed`, `classify` and `zero_shot` tasks take two options, `backend` and `precision`:

    from spark_infer.udf import predict_udf
    embed = predict_udf("embed", backend="openvino")                    # fp32, same vectors, faster
    fast = predict_udf("embed", backend="openvino", precision="int8")   # opt-in: a model change

| backend \\ precision | fp32 | bf16 | int8 |
|---|---|---|---|
| torch | eager (the reference) | autocast bf16 | refused: dynamic int8 loses too much (min cosine 0.85) |
| onnx | ONNX Runtime, graph optimisations | refused: no bf16 CPU kernels | refused: dynamic int8 misses min cosine 0.99 |
| openvino | OpenVINO, f32 inference hint | bf16 inference hint | int8 weights (data-free) |

* fp32 on any backend gives the eager model's outputs within 1e-4 (parity-tested), so the backend is
  recorded in the run's lineage but not in the model fingerprint: installing the extra, or moving a
  cluster to another CPU type, never rescores a table.
* bf16 and int8 are opt-in reduced precision: the fingerprint carries the precision and the backend,
  and the plan shows a change of either as a model change.
* `backend: auto` (the default) is resolved on the driver: on GPUs torch; on CPUs the fastest exact
  backend installed (`spark-infer[openvino]`, else `spark-infer[onnx]`) for a model it can export,
  else torch. A worker without the planned backend fails its task naming the extra; nothing falls
  back to another backend.
* The converted model is made once per model snapshot and machine beside the node-local model cache
  (`convert.py`), with the task's threads (`runners.py`).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Mapping
from typing import Any

#: the extra that installs a backend, and the module that tells it is installed
EXTRAS = {"onnx": ("onnxruntime", "spark-infer[onnx]"), "openvino": ("openvino", "spark-infer[openvino]")}
#: combinations refused, and why (measured on all-MiniLM-L6-v2: bench/bench_cpu_backends.py)
REFUSED = {
    ("torch", "int8"): "torch's dynamic int8 loses too much (min cosine 0.85 vs fp32); use backend openvino",
    ("onnx", "bf16"): "ONNX Runtime has no bf16 CPU kernels for these models; use backend openvino or torch",
    ("onnx", "int8"): "ONNX Runtime's dynamic int8 misses min cosine 0.99 vs fp32 (0.98); use backend openvino",
}
#: Hugging Face model types whose encoders export (TorchScript ONNX exporter) and run in ONNX Runtime
#: and OpenVINO as the eager model does; another type stays on torch under `auto` and is refused
#: when a backend is asked for by name
EXPORTABLE_MODEL_TYPES = frozenset({
    "albert", "bert", "camembert", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta",
})


class BackendError(ValueError):
    """A backend cannot run this model or precision here (a config error at plan time, a task
    failure on a worker: never a fallback to another backend)."""


def installed(backend: str) -> bool:
    """Whether `backend`'s library is importable in this process (torch always is)."""
    if backend == "torch":
        return True
    module = EXTRAS[backend][0]
    if module in sys.modules:
        return sys.modules[module] is not None  # None: imports of it are blocked
    return importlib.util.find_spec(module) is not None


def require_installed(backend: str) -> None:
    if not installed(backend):
        module, extra = EXTRAS[backend]
        raise BackendError(f"backend={backend!r} needs {module}, which is not installed here: "
                           f"pip install '{extra}' (on the driver and every executor)")


def check_combination(backend: str, precision: str) -> None:
    """BackendError when `backend` does not run `precision` (see the table above)."""
    why = REFUSED.get((backend, precision))
    if why:
        raise BackendError(f"backend={backend!r} with precision={precision!r} is not offered: {why}")


def effective_precision(precision: str) -> str:
    """`auto` is fp32 (on GPUs the torch `dtype` option decides, as before)."""
    return "fp32" if precision == "auto" else precision


def exportable(config: Mapping[str, Any] | None) -> str | None:
    """None when a model of this config.json exports to ONNX / OpenVINO, else why not."""
    kind = (config or {}).get("model_type")
    if kind in EXPORTABLE_MODEL_TYPES:
        return None
    return (f"model_type {kind!r} is not one spark-infer exports (tested: "
            f"{', '.join(sorted(EXPORTABLE_MODEL_TYPES))})")


def resolve_backend(option: str, precision: str, device_kind: str, config: Mapping[str, Any] | None) -> str:
    """The backend a run uses (driver side, before fingerprinting); BackendError naming the option.

    `option` auto: torch on GPUs; otherwise OpenVINO, else ONNX Runtime (fp32 only), when installed
    and the model (its config.json) exports, else torch. A named backend must be installed, run the
    precision, export the model and score on the CPU."""
    precision = effective_precision(precision)
    if option == "auto":
        why = "GPUs" if device_kind == "cuda" else exportable(config)
        if why:
            if precision == "int8":
                raise BackendError(f"precision='int8' runs on backend openvino only, which cannot run this model "
                                   f"here ({why})")
            return "torch"
        for candidate in ("openvino", "onnx"):
            if installed(candidate) and (candidate, precision) not in REFUSED:
                return candidate
        if precision == "int8":
            require_installed("openvino")  # raises: name the extra int8 needs
        return "torch"
    check_combination(option, precision)
    if option != "torch":
        if device_kind == "cuda":
            raise BackendError(f"backend={option!r} runs on CPUs; this run scores on GPUs (device: cuda): "
                               "use backend torch (or auto) there, or device: cpu")
        require_installed(option)
        why = exportable(config)
        if why:
            raise BackendError(f"backend={option!r}: {why}; use backend torch")
    return option


def transformer_config(files_read: Any) -> dict[str, Any] | None:
    """The config.json of the model's transformer (a sentence-transformers folder may keep it in its
    first module's folder), read through `files_read(rel) -> bytes | None`."""
    raw = files_read("config.json")
    if raw is None:
        modules = files_read("modules.json")
        try:
            first = (json.loads(modules) or [{}])[0].get("path") if modules else None
        except (ValueError, AttributeError, IndexError):
            first = None
        if first:
            raw = files_read(f"{first.strip('/')}/config.json")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None
