"""What to run: a validated, picklable (task, model snapshot, options) with its fingerprint.

Built once on the driver (options validated, model resolved to an immutable snapshot and
fingerprinted) and shipped to the workers, which find the snapshot's files locally and load the
task through the model cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from spark_infer.errors import ConfigError
from spark_infer.models import ModelSnapshot, resolve_model
from spark_infer.runtime.options import format_validation
from spark_infer.tasks import get_task

if TYPE_CHECKING:
    import pyarrow as pa

    from spark_infer.tasks.base import Task, TaskOptions


@dataclass(frozen=True)
class ModelSpec:
    """A task bound to a model snapshot and options; hashable, picklable, fingerprinted.

        from spark_infer.runtime.spec import make_spec
        spec = make_spec("embed", None, normalize=True)     # packaged MiniLM; spec.fingerprint
    """

    task: str
    snapshot: ModelSnapshot
    options_json: str
    fingerprint: str
    #: where rows are scored ("cpu", "cuda"; "any" when the caller did not fix it, e.g. a UDF) and
    #: the resolved precision: both change outputs, so both are fingerprinted
    device_kind: str = "any"
    dtype: str = "auto"
    #: what the task had to assume about the model at plan time (recorded with the run)
    assumed: tuple[str, ...] = ()
    #: the backend the transformer runs on (`backend: auto` resolved on the driver; see
    #: `spark_infer.backends`): fingerprinted only with a reduced precision
    backend: str = "torch"

    # The task class and parsed options are looked up once per process and kept in __dict__ under
    # `_cached_*`; they are not pickled (workers look them up again, from their own installation).
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_cached_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @property
    def task_class(self) -> type[Task]:
        cls = self.__dict__.get("_cached_task_cls")
        if cls is None:
            cls = self.__dict__["_cached_task_cls"] = get_task(self.task)
        return cls

    @property
    def reference(self) -> str:
        """The model as the user named it (absolute for folders): the lineage column's value."""
        return self.snapshot.reference

    @property
    def options(self) -> TaskOptions:
        opts = self.__dict__.get("_cached_options")
        if opts is None:
            opts = self.__dict__["_cached_options"] = self.task_class.Options.model_validate_json(self.options_json)
        return opts

    def output_type(self) -> pa.DataType:
        return self.task_class.output_type_for(self.options)

    def input_columns(self) -> list[str] | None:
        """Columns read per row as a dict (templates, feature columns), or None for one text column."""
        return self.task_class.input_columns(self.options)

    @property
    def default_output_col(self) -> str:
        return self.task_class.default_output_col

    def cache_key(self, device: str) -> tuple[str, ...]:
        return (self.task, self.snapshot.identity, self.fingerprint, self.options_json, self.backend, device)

    @property
    def dtype_option(self) -> str:
        """The precision the user asked for (`auto` unless forced); `dtype` is what it resolved to."""
        return getattr(self.options, "dtype", "auto")

    def placed(self, device_kind: str, dtype: str) -> ModelSpec:
        """This spec fixed to score on `device_kind` in `dtype` (a resolved precision), fingerprinted so."""
        if device_kind not in ("any", "cpu", "cuda"):
            raise ConfigError(f"device_kind={device_kind!r}: expected any, cpu or cuda")
        backend = self.backend
        if device_kind == "cuda" and backend != "torch":
            backend = _resolved_backend(self.options, device_kind, None)  # auto: torch; named: a ConfigError
        return ModelSpec(task=self.task, snapshot=self.snapshot, options_json=self.options_json,
                         fingerprint=_fingerprint(self.task, self.options_json, self.snapshot, device_kind, dtype,
                                                  backend),
                         device_kind=device_kind, dtype=dtype, assumed=self.assumed, backend=backend)

    @property
    def precision(self) -> str:
        """The reduced precision asked for (bf16, int8), or the resolved dtype ("float32", ...)."""
        asked = getattr(self.options, "precision", "auto")
        return self.dtype if asked in ("auto", "fp32") else asked

    def load(self, device: str) -> Task:
        """Instantiate the task on `device` (the worker calls this through the model cache)."""
        options = self.options
        if self.dtype != "auto" and getattr(options, "dtype", None) != self.dtype:
            options = options.model_copy(update={"dtype": self.dtype})
        if hasattr(options, "backend"):
            backend = self.backend
            if device.startswith("cuda") and backend != "torch":
                # a UDF planned on a CPU driver scoring on a GPU worker: fp32 `auto` means torch there
                # (the same outputs within 1e-4, and no backend in the fingerprint); anything else fails
                from spark_infer.backends import BackendError, effective_precision

                if options.backend != "auto" or effective_precision(options.precision) != "fp32":
                    raise BackendError(f"backend={backend!r} (precision {options.precision}) runs on CPUs, but "
                                       f"this task scores on {device}: use backend torch, or device cpu")
                backend = "torch"
            options = options.model_copy(update={"backend": backend})
        return self.task_class(self.snapshot.local_dir(), options, device)


def task_options(task: str, **options: Any) -> TaskOptions:
    """The task's validated options; ConfigError naming the task, option and value."""
    try:
        task_cls = get_task(task)
    except ValueError as exc:
        raise ConfigError(f"task={task!r}: {exc}") from None
    try:
        return task_cls.Options(**options)
    except ValidationError as exc:
        raise ConfigError(format_validation(exc, prefix=f"{task} option")) from None


def resolved_dtype(option: str, device_kind: str) -> str:
    """The precision rows are scored in when nothing more is known: `auto` is float32 on CPUs and
    bfloat16 on GPUs (the job resolves a GPU run's `auto` from the GPUs' compute capability instead,
    `device.resolve_precision`, and fixes it with `ModelSpec.placed`)."""
    if option != "auto" or device_kind == "any":
        return option
    return "bfloat16" if device_kind == "cuda" else "float32"


def _fingerprint(task: str, options_json: str, snapshot: ModelSnapshot, device_kind: str, dtype: str,
                 backend: str = "torch") -> str:
    return hashlib.sha256(
        f"{task}\n{_fingerprinted_options(options_json, backend)}\n{snapshot.identity}\n{device_kind}\n{dtype}".encode()
    ).hexdigest()[:24]


def _fingerprinted_options(options_json: str, backend: str) -> str:
    """The options as the fingerprint sees them: fp32 leaves out the backend and the precision (every
    backend gives the eager model's outputs within 1e-4: installing an extra or changing CPU type must
    not rescore a table, and tables written before these options keep their fingerprint); a reduced
    precision puts in both, the backend resolved."""
    opts = json.loads(options_json)
    if "backend" not in opts:
        return options_json
    opts.pop("backend")
    if opts.get("precision") in ("auto", "fp32"):
        opts.pop("precision")
    else:
        opts["backend"] = backend
    return json.dumps(opts, sort_keys=True, separators=(",", ":"))


def _resolved_backend(options: TaskOptions, device_kind: str, files: _SnapshotFiles | None) -> str:
    """`backend` resolved for the run (spark_infer.backends.resolve_backend); ConfigError naming it."""
    if not hasattr(options, "backend"):
        return "torch"
    from spark_infer.backends import BackendError, resolve_backend, transformer_config

    config = transformer_config(files.read) if files is not None else None
    try:
        return resolve_backend(options.backend, options.precision, device_kind, config)
    except BackendError as exc:
        raise ConfigError(f"{exc}") from None


def make_spec(task: str, model: str | None = None, *, revision: str | None = None, device_kind: str = "any",
              **options: Any) -> ModelSpec:
    """Validate the task and its options, resolve the model to a snapshot, and fingerprint them.

        spec = make_spec("classify", "/models/sentiment", return_all_scores=True)

    `device_kind` ("cpu" or "cuda") fixes where rows are scored; the resolved precision is then part
    of the fingerprint, and workers hold to it. Raises ConfigError naming the field and value.
    """
    if device_kind not in ("any", "cpu", "cuda"):
        raise ConfigError(f"device_kind={device_kind!r}: expected any, cpu or cuda")
    opts = task_options(task, **options)
    snapshot = resolve_model(model, revision)
    files = _SnapshotFiles(snapshot)
    assumed = check_model(task, opts, snapshot, files)
    backend = _resolved_backend(opts, device_kind, files)
    options_json = json.dumps(opts.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    dtype = resolved_dtype(getattr(opts, "dtype", "auto"), device_kind)
    return ModelSpec(task=task, snapshot=snapshot, options_json=options_json,
                     fingerprint=_fingerprint(task, options_json, snapshot, device_kind, dtype, backend),
                     device_kind=device_kind, dtype=dtype, assumed=tuple(assumed), backend=backend)


class _SnapshotFiles:
    """A snapshot's files as a task's plan-time check reads them (`tasks.base.ModelFiles`)."""

    def __init__(self, snapshot: ModelSnapshot) -> None:
        self.snapshot = snapshot
        self.names = frozenset(p for p, _ in snapshot.manifest)
        self._read: dict[str, bytes | None] = {}

    def read(self, rel: str) -> bytes | None:
        if rel not in self._read:
            self._read[rel] = self.snapshot.read_file(rel)
        return self._read[rel]


def check_model(task: str, options: TaskOptions, snapshot: ModelSnapshot,
                files: _SnapshotFiles | None = None) -> list[str]:
    """The task's plan-time check of the model's files: ConfigError naming what it cannot run; the
    assumptions it made otherwise."""
    try:
        return get_task(task).check_model(options, files or _SnapshotFiles(snapshot))
    except ValueError as exc:
        raise ConfigError(f"model={snapshot.reference!r} cannot run as task {task!r}: {exc}") from None
