"""Converted models, made once per model snapshot and machine beside the node-local model cache.

    from spark_infer.backends.convert import converted
    folder = converted(torch_model, "feature-extraction", "openvino-int8", source_dir, names)

Artifacts, each built from the one before it and cached on its own:

* `onnx`: the eager model exported by torch's TorchScript ONNX exporter (eager attention: plain
  MatMul/Softmax, dynamic batch and sequence axes), `model.onnx`;
* `openvino-fp32`: that file converted by OpenVINO (`model.xml`/`.bin`, fp32 weights kept);
* `openvino-int8`: the same conversion with int8 weights (`nncf.compress_weights`, INT8_ASYM): data-free,
  so every machine makes the same model.

The cache key hashes the snapshot's files (path, size, modification time: a cached download never
changes, a local folder that is edited gets a new key), the task's kind, the artifact, the recipe
version and the versions of every library that takes part, so an upgrade converts again rather than
loading a file an older exporter wrote. Concurrent workers of one machine wait on a file lock and
convert once (`local_cache.build_once`); each conversion appends a line to `<key>.conversions`.
A conversion that fails raises `ConversionError` with the exporter's message and leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

from spark_infer.backends import BackendError
from spark_infer.local_cache import build_log, build_once, cache_dir

log = logging.getLogger("spark_infer")

#: bumped when the export recipe changes (a new key: machines convert again)
RECIPE = 1
#: what each artifact is built from, and the libraries whose version is in its key
_ARTIFACTS = {
    "onnx": (None, ("torch", "transformers", "onnx")),
    "openvino-fp32": ("onnx", ("torch", "transformers", "onnx", "openvino")),
    "openvino-int8": ("onnx", ("torch", "transformers", "onnx", "openvino", "nncf")),
}
#: the output each kind of model gives the backends (the transformers output field)
OUTPUTS = {"feature-extraction": "last_hidden_state", "sequence-classification": "logits"}
MODEL_FILE = {"onnx": "model.onnx", "openvino-fp32": "model.xml", "openvino-int8": "model.xml"}


class ConversionError(BackendError):
    """Exporting or converting the model failed (on a worker: the task fails; nothing falls back)."""


def artifact_for(backend: str, precision: str) -> str:
    """The converted artifact a backend loads for a precision (OpenVINO's bf16 is the fp32 IR run
    with a bf16 inference hint)."""
    if backend == "onnx":
        return "onnx"
    return "openvino-int8" if precision == "int8" else "openvino-fp32"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def snapshot_files_key(source_dir: str) -> str:
    """The snapshot's files as the key sees them: relative path, size, modification time."""
    rows = []
    for root, dirs, files in os.walk(source_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(root, name)
            st = os.stat(path)
            rows.append(f"{os.path.relpath(path, source_dir)}\0{st.st_size}\0{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def conversion_key(source_dir: str, kind: str, artifact: str, input_names: Sequence[str],
                   files_key: str | None = None) -> tuple[str, str]:
    """(cache key, marker JSON) of a converted artifact: what it depends on, hashed to name its folder.
    `files_key` is `snapshot_files_key(source_dir)` when the caller has it already."""
    spec = {"snapshot": files_key or snapshot_files_key(source_dir), "kind": kind, "artifact": artifact,
            "recipe": RECIPE, "inputs": list(input_names),
            "versions": {lib: _version(lib) for lib in _ARTIFACTS[artifact][1]}}
    marker = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(marker.encode()).hexdigest()[:32], marker


def converted(model: Any, kind: str, artifact: str, source_dir: str, input_names: Sequence[str],
              files_key: str | None = None) -> str:
    """The path of `artifact` (`model.onnx` / `model.xml`) for `model` (a loaded transformers model of
    the snapshot in `source_dir`), converting once per machine when no finished copy is cached (the
    artifact it is built from is made first, only then)."""
    files_key = files_key or snapshot_files_key(source_dir)
    key, marker = conversion_key(source_dir, kind, artifact, input_names, files_key)
    parent = _ARTIFACTS[artifact][0]

    def build(into: str) -> None:
        t0 = time.monotonic()
        source = converted(model, kind, parent, source_dir, input_names, files_key) if parent else None
        try:
            if source is None:
                export_onnx(model, kind, input_names, os.path.join(into, MODEL_FILE[artifact]))
            else:
                _openvino_ir(source, os.path.join(into, MODEL_FILE[artifact]), int8=artifact == "openvino-int8")
        except BackendError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the exporter raised, named in one error
            raise ConversionError(f"converting the model to {artifact} failed: {type(exc).__name__}: {exc}"[:2000]) \
                from exc
        log.info("event=model_converted artifact=%s kind=%s seconds=%.1f", artifact, kind, time.monotonic() - t0)

    folder = build_once(cache_dir("converted"), key, build, marker=marker, log_name="conversions",
                        note=f"{artifact} {source_dir}")
    return os.path.join(folder, MODEL_FILE[artifact])


def conversions(source_dir: str, kind: str, artifact: str, input_names: Sequence[str]) -> list[str]:
    """This machine's conversion records of one artifact (one line per conversion)."""
    return build_log(cache_dir("converted"), conversion_key(source_dir, kind, artifact, input_names)[0],
                     "conversions")


def export_onnx(model: Any, kind: str, input_names: Sequence[str], path: str) -> None:
    """`model` (transformers, fp32, eval) exported with dynamic batch and sequence axes; its output
    is the `OUTPUTS[kind]` field. The model runs eager attention while it is traced (SDPA's mask
    shortcuts are data-dependent branches a trace would freeze)."""
    import torch

    output = OUTPUTS[kind]
    names = list(input_names)

    class _Outputs(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            return self.inner(**dict(zip(names, args, strict=True)), return_dict=True)[output]

    # two rows, one padded: the trace sees a real mask (an all-ones mask may be skipped by the model)
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 8, 9, 10, 11, 12, 3]], dtype=torch.long)
    example = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
    before = getattr(model.config, "_attn_implementation", None)
    if before not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    try:
        dims = {0: "batch", 1: "sequence"}
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
            torch.onnx.export(_Outputs(model).eval(), tuple(example[n] for n in names), path, input_names=names,
                              output_names=[output], dynamic_axes={**{n: dims for n in names}, output: dims},
                              opset_version=17, dynamo=False)
    finally:
        if before not in (None, "eager") and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation(before)


def _openvino_ir(onnx_path: str, xml_path: str, int8: bool) -> None:
    import openvino as ov

    ir = ov.convert_model(onnx_path)
    if int8:
        try:
            import nncf
        except ImportError:
            raise BackendError("precision='int8' on backend openvino needs nncf: pip install "
                               "'spark-infer[openvino]'") from None
        # nncf prints a statistics table and a progress bar to stdout (a task's log, not ours)
        logging.getLogger("nncf").setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ir = nncf.compress_weights(ir, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(ir, xml_path, compress_to_fp16=False)
