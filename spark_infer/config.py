"""The job's configuration: one validated object from a YAML/TOML file plus command-line flags.

Every later stage reads this object; none parses arguments or the environment on its own. Errors
name the field and value (and suggest the closest known field for a misspelling).
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spark_infer.errors import ConfigError
from spark_infer.runtime.options import RuntimeOptions
from spark_infer.tasks import get_task, task_names

#: columns the job adds to every output row (besides the task's output and `error`)
LINEAGE_COLUMNS = (
    "model", "model_fingerprint", "task", "run_id", "input_version", "input_state", "input_files", "scored_at",
)
BUCKET_COLUMN = "bucket"


class JobConfig(BaseModel):
    """Everything one scoring run needs; see README "The scoring job" for each field.

        from spark_infer import JobConfig
        cfg = JobConfig(input="/data/products", output="/data/emb", batch_size=32)   # cfg.runtime.batch_size

    The runtime options (`batch_size`, `token_budget`, `device`, `on_error`) are written at the top
    level, like every other field, and live in `cfg.runtime`: the one `RuntimeOptions` object the
    workers get.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str = Field(description="input Delta table: a path or a catalog table name")
    output: str = Field(description="output Delta table: a path or a catalog table name")
    task: str = "embed"
    model: str | None = Field(default=None, description="model reference; default: the packaged MiniLM")
    model_revision: str | None = Field(default=None, description="hub revision / registry version to pin")
    text_col: str = "text"
    id_col: str = "id"
    partition_by: list[str] | None = Field(
        default=None, description="unit columns; default: the input table's partition columns"
    )
    buckets: int = Field(default=8, ge=1, le=10_000, description="id buckets for an unpartitioned input")
    output_col: str | None = Field(default=None, description="name of the prediction column")
    task_options: dict[str, Any] = Field(default_factory=dict)
    max_length: int | None = Field(default=None, ge=1, description="task option max_length, for short")
    # runtime (how, not what): written flat in files and flags, gathered here
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)
    arrow_batch_size: int = Field(default=4096, ge=1, description="spark.sql.execution.arrow.maxRecordsPerBatch")
    score_partitions: int | None = Field(
        default=None, ge=1, description="Spark tasks per unit (default: the cluster's parallelism)"
    )
    gpus_per_task: float | None = Field(
        default=None, gt=0, description="GPUs per scoring task (0.25 = four tasks share a GPU); needs a cluster"
    )
    cpus_per_task: int | None = Field(default=None, ge=1, description="CPU cores per scoring task")
    concurrent_units: int = Field(default=2, ge=1, le=64, description="commit groups scored and committed at once")
    group_rows: int = Field(default=100_000, ge=1, description="rows per commit group (a bigger unit is one group)")
    group_units: int = Field(default=1_000, ge=1, le=10_000, description="units per commit group, at most")
    rows_per_file: int = Field(default=100_000, ge=1, description="output rows per file, at most")
    optimize: bool = Field(default=False, description="compact the output's files after a run that wrote")
    max_error_rate: float = Field(
        default=0.1, ge=0, le=1, description="largest share of error rows a unit may have and still be committed"
    )
    output_format: str = Field(default="delta", description="output sink (spark_infer/sinks/)")
    # incremental behaviour
    on_model_change: Literal["rescore", "new_only"] = "rescore"
    on_orphan: Literal["delete", "keep"] = Field(
        default="delete", description="output units whose input unit is gone: delete their rows, or keep them"
    )
    rescore_errors: bool = Field(default=False, description="rescore units whose output holds error rows")
    txn_retention: str = Field(
        default="interval 7 days", pattern=r"^interval \d+ (second|minute|hour|day|week)s?$",
        description="how long the output keeps each commit group's transaction id (delta.setTransactionRetentionDuration)",
    )
    change_data_feed: bool = False
    dry_run: bool = False
    # spark
    job_name: str = "spark-infer"
    master: str | None = None
    remote: str | None = Field(
        default=None, description="Spark Connect URL (sc://host:port; Databricks Connect); default: $SPARK_REMOTE"
    )
    py_files: list[str] = Field(
        default_factory=list, description=".py/.zip files the workers must import (a custom predictor's code)"
    )
    spark_conf: dict[str, str] = Field(default_factory=dict)
    delta_jars: str | None = Field(default=None, description="comma-separated local Delta jars (air-gapped)")
    summary_json: str | None = Field(default=None, description="run record JSON (default: a temp-dir file)")
    runs_table: str | None = Field(
        default=None, description="Delta table of run records (default: the output's path/name + '_runs')"
    )
    record_runs: bool = True
    progress_interval_s: float = Field(default=30.0, ge=0, description="heartbeat progress lines; 0 = off")

    @property
    def runs_table_ref(self) -> str:
        return self.runs_table or self.output.rstrip("/") + "_runs"

    @model_validator(mode="before")
    @classmethod
    def _gather_runtime(cls, data: Any) -> Any:
        # flat `batch_size: 32` (files, flags) and nested `runtime: {...}` (model_dump) both work
        if isinstance(data, dict):
            flat = {k: data[k] for k in RuntimeOptions.fields() if k in data}
            if flat:
                nested = data.get("runtime")
                base = nested.model_dump() if isinstance(nested, RuntimeOptions) else dict(nested or {})
                data = {k: v for k, v in data.items() if k not in flat}
                data["runtime"] = {**base, **flat}
        return data

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        names = task_names()
        if v not in names:
            raise ValueError(f"unknown task; known tasks: {', '.join(names)}")
        return v

    @field_validator("gpus_per_task")
    @classmethod
    def _gpu_amount(cls, v: float | None) -> float | None:
        if v is not None and v > 1:
            raise ValueError(
                "spark-infer scores on one GPU per task (a second GPU would idle): use 1, or a fraction "
                "(0.5 = two tasks share a GPU), and more tasks for more GPUs; sharding one model over several "
                "GPUs is not supported"
            )
        return v

    @field_validator("spark_conf", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): str(x).lower() if isinstance(x, bool) else str(x) for k, x in v.items()}
        return v

    @field_validator("py_files")
    @classmethod
    def _files_exist(cls, v: list[str]) -> list[str]:
        missing = [f for f in v if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"no such file(s) {missing}")
        if any(not f.endswith((".py", ".zip", ".egg")) for f in v):
            raise ValueError("only .py, .zip and .egg files can be shipped to the workers")
        return [os.path.abspath(f) for f in v]

    @model_validator(mode="after")
    def _distinct(self) -> JobConfig:
        if self.input.rstrip("/") == self.output.rstrip("/"):
            raise ValueError("output must differ from input")
        amount = self.spark_conf.get("spark.task.resource.gpu.amount")
        if amount is not None:
            try:
                many = float(amount) > 1
            except ValueError:
                many = False
            if many:
                raise ValueError(f"spark_conf spark.task.resource.gpu.amount={amount}: spark-infer scores on one GPU "
                                 "per task; set gpus_per_task (at most 1) instead")
        return self

    @property
    def prediction_col(self) -> str:
        return self.output_col or get_task(self.task).default_output_col

    def task_option_values(self) -> dict[str, Any]:
        opts = dict(self.task_options)
        if self.max_length is not None:
            opts.setdefault("max_length", self.max_length)
        return opts


def read_config_file(path: str) -> dict[str, Any]:
    """YAML (.yaml/.yml/.json) or TOML (.toml) into a dict."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            if path.endswith(".toml"):
                data = tomllib.load(f)
            else:
                data = yaml.safe_load(f)
    except (yaml.YAMLError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path!r} is not valid {'TOML' if path.endswith('.toml') else 'YAML'}: "
                          f"{exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of fields, got {type(data).__name__}")
    return data


def build_config(file: str | None = None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Merge a config file with overrides (flags win) and validate; ConfigError on any problem."""
    data: dict[str, Any] = read_config_file(file) if file else {}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k in ("task_options", "spark_conf") and isinstance(v, dict):
            data[k] = {**(data.get(k) or {}), **v}
        else:
            data[k] = v
    try:
        return JobConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc)) from None


def format_errors(exc: ValidationError) -> str:
    known = [k for k in JobConfig.model_fields if k != "runtime"] + sorted(RuntimeOptions.fields())
    msgs = []
    for err in exc.errors():
        # runtime options are written at the top level: name them as written
        loc = ".".join(str(x) for x in err["loc"]).removeprefix("runtime.")
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(loc, known, n=1)
            msgs.append(f"unknown config field {loc!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif err["type"] == "missing":
            msgs.append(f"config field {loc!r} is required")
        else:
            shown = json.dumps(val, default=str) if not isinstance(val, dict) else "{...}"
            msgs.append(f"config field {loc!r}={shown}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(msgs)
