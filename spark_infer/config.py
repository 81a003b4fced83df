"""The job's configuration: one validated object from a YAML/TOML file plus command-line flags.

Every later stage reads this object; none parses arguments or the environment on its own. A config
file is grouped in sections a user recognises (see docs/configuration.md):

    input:     {table: /data/products, id_col: id, text_col: text}
    model:     {ref: /models/minilm, task: embed, options: {max_length: 256}}
    output:    {table: /data/product_embeddings}
    runtime:   {batch_size: 64, device: auto}          # how rows go through the model
    resources: {gpus_per_task: 1, concurrent_groups: 2} # where and how wide it runs
    commit:    {group_rows: 100000, max_error_rate: 0.1}
    report:    {progress_interval_s: 30}

Every field also has a flat name (`input: /data/products`, `batch_size: 64`, `concurrent_units: 2`),
which is what the command-line flags and earlier config files use. Errors name the field as it was
written (and suggest the closest known field for a misspelling).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spark_infer.errors import ConfigError
from spark_infer.runtime.options import RuntimeOptions
from spark_infer.tasks import get_task, task_names

#: columns the job adds to every output row (besides the task's output and `error`)
LINEAGE_COLUMNS = (
    "model", "model_fingerprint", "task", "run_id", "input_version", "input_state", "input_files", "input_row_state",
    "scored_at",
)
BUCKET_COLUMN = "bucket"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSection(_Section):
    """What to score: a Delta table and the columns that identify rows and units."""

    table: str = Field(description="input Delta table: a path or a catalog table name")
    id_col: str = "id"
    text_col: str = "text"
    partition_by: list[str] | None = Field(
        default=None, description="unit columns; default: the input table's partition columns"
    )
    buckets: int = Field(default=8, ge=1, le=10_000, description="id buckets for an unpartitioned input")
    change_feed: bool = Field(
        default=True,
        description="find the changed rows of changed units in the input's Change Data Feed where it is enabled "
                    "(delta.enableChangeDataFeed), instead of hashing every row of those units; false: always hash",
    )


class ModelSection(_Section):
    """What scores it: a task and a model (with the options that change outputs)."""

    ref: str | None = Field(default=None, description="model reference; default: the packaged MiniLM")
    revision: str | None = Field(default=None, description="hub revision / registry version to pin")
    task: str = "embed"
    options: dict[str, Any] = Field(default_factory=dict, description="task options")
    max_length: int | None = Field(default=None, ge=1, description="task option max_length, for short")

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        names = task_names()
        if v not in names:
            raise ValueError(f"unknown task; known tasks: {', '.join(names)}")
        return v


class OutputSection(_Section):
    """Where results go, and how its files are laid out."""

    table: str = Field(description="output Delta table: a path or a catalog table name")
    column: str | None = Field(default=None, description="name of the prediction column (default: the task's)")
    format: str = Field(default="delta", description="output sink (spark_infer/sinks/)")
    rows_per_file: int = Field(default=100_000, ge=1, description="output rows per file, at most")
    optimize: bool = Field(default=False, description="compact the output's files after a run that wrote")
    change_data_feed: bool = False


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(text: str) -> int:
    """`1g`, `512m`, `1.5GiB`, `1073741824` -> bytes (powers of 1024, as Spark's sizes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"{text!r} is not a size (write it like 1g, 512m or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


class ResourcesSection(_Section):
    """Where the job runs and how wide: the Spark session, GPUs/CPUs per task, groups in flight."""

    master: str | None = None
    remote: str | None = Field(
        default=None, description="Spark Connect URL (sc://host:port; Databricks Connect); default: $SPARK_REMOTE"
    )
    gpus_per_task: float | None = Field(
        default=None, gt=0, description="GPUs per scoring task (0.25 = four tasks share a GPU); needs a cluster"
    )
    cpus_per_task: int | None = Field(default=None, ge=1, description="CPU cores per scoring task")
    tasks_per_group: int | None = Field(
        default=None, ge=1, description="Spark tasks that score one commit group (default: the cluster's parallelism)"
    )
    concurrent_groups: int = Field(default=2, ge=1, le=64, description="commit groups scored and committed at once")
    arrow_batch_size: int = Field(default=4096, ge=1, description="spark.sql.execution.arrow.maxRecordsPerBatch")
    spark_conf: dict[str, str] = Field(default_factory=dict)
    session_kind: Literal["auto", "classic", "connect", "serverless"] = Field(
        default="auto",
        description="what the session allows: auto (detected), or serverless (no persist, allow-listed confs, "
                    "UDF memory cap) when detection cannot tell",
    )
    udf_memory_limit: int | None = Field(
        default=None, ge=1,
        description="bytes a UDF may use on the workers (default: the platform's cap: 1 GiB on serverless)",
    )
    delta_jars: str | None = Field(default=None, description="comma-separated local Delta jars (air-gapped)")
    py_files: list[str] = Field(
        default_factory=list, description=".py/.zip files the workers must import (a custom predictor's code)"
    )

    @field_validator("udf_memory_limit", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v) if isinstance(v, str) else v

    @field_validator("gpus_per_task")
    @classmethod
    def _one_gpu_at_most(cls, v: float | None) -> float | None:
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

    @field_validator("spark_conf")
    @classmethod
    def _gpu_amount_at_most_one(cls, v: dict[str, str]) -> dict[str, str]:
        amount = v.get("spark.task.resource.gpu.amount")
        if amount is not None:
            try:
                many = float(amount) > 1
            except ValueError:
                many = False
            if many:
                raise ValueError(f"spark.task.resource.gpu.amount={amount}: spark-infer scores on one GPU per "
                                 "task; set gpus_per_task (at most 1) instead")
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


class CommitSection(_Section):
    """What is written together, and what may be written."""

    group_rows: int = Field(default=100_000, ge=1, description="rows per commit group (a bigger unit is one group)")
    group_units: int = Field(default=1_000, ge=1, le=10_000, description="units per commit group, at most")
    max_error_rate: float = Field(
        default=0.1, ge=0, le=1, description="largest share of error rows a unit may have and still be committed"
    )
    incremental: Literal["row", "unit"] = Field(
        default="row",
        description="what a changed unit costs: row (score its new and changed rows, drop its deleted rows, keep "
                    "the rest, by each row's input_row_state) or unit (score the whole unit again)",
    )
    on_model_change: Literal["rescore", "new_only"] = "rescore"
    on_orphan: Literal["delete", "keep"] = Field(
        default="delete", description="output units whose input unit is gone: delete their rows, or keep them"
    )
    max_orphan_share: float = Field(
        default=0.5, ge=0, le=1,
        description="largest share of the output's units one run may delete as orphans without allow_mass_delete "
                    "(an input that has no units at all never deletes without it)",
    )
    allow_mass_delete: bool = Field(
        default=False, description="delete orphaned units beyond max_orphan_share, or when the input has no units"
    )
    rescore_errors: bool = Field(default=False, description="rescore units whose output holds error rows")
    staging: Literal["auto", "persist", "table"] = Field(
        default="auto",
        description="where a group's scored rows wait for their check and commit: persist (executors' disks), "
                    "table (a staging Delta table; durable, and what serverless needs); auto: persist where "
                    "the session can, else table",
    )
    staging_schema: str | None = Field(
        default=None,
        description="catalog.schema for staging tables (default: the output's schema for a catalog-named output, "
                    "else the session's current schema)",
    )
    claims: bool = Field(
        default=True,
        description="claim units in <output>_claims before scoring them, so runs that overlap on the output share "
                    "its units instead of scoring them twice",
    )
    claim_ttl_s: float = Field(
        default=600.0, ge=5,
        description="seconds a run's claims last unless renewed (its heartbeat renews them every third): how long a "
                    "killed run on another host blocks its units",
    )
    on_claimed: Literal["wait", "exit"] = Field(
        default="wait",
        description="units another live run holds: wait for that run, then score what it did not commit (wait), "
                    "or end with exit 6 naming it once the free units are done (exit)",
    )
    txn_retention: str = Field(
        default="interval 7 days", pattern=r"^interval \d+ (second|minute|hour|day|week)s?$",
        description="how long the output keeps each commit group's transaction id (delta.setTransactionRetentionDuration)",
    )


class ReportSection(_Section):
    """What a run tells: progress lines and its record."""

    summary_json: str | None = Field(default=None, description="run record JSON (default: a temp-dir file)")
    runs_table: str | None = Field(
        default=None, description="Delta table of run records (default: the output's path/name + '_runs')"
    )
    record_runs: bool = True
    progress_interval_s: float = Field(default=30.0, ge=0, description="heartbeat progress lines; 0 = off")


#: the sections of a config file, by name
SECTIONS: dict[str, type[BaseModel]] = {
    "input": InputSection, "model": ModelSection, "output": OutputSection, "runtime": RuntimeOptions,
    "resources": ResourcesSection, "commit": CommitSection, "report": ReportSection,
}
#: a section written as one value stands for this field (`input: /data/in`, `model: /models/x`)
SCALAR_SECTIONS = {"input": "table", "output": "table", "model": "ref"}
#: flat names (command-line flags, earlier config files) -> (section, field)
FLAT: dict[str, tuple[str, str]] = {
    **{f: ("input", f) for f in ("id_col", "text_col", "partition_by", "buckets", "change_feed")},
    "task": ("model", "task"), "model_revision": ("model", "revision"), "task_options": ("model", "options"),
    "max_length": ("model", "max_length"),
    "output_col": ("output", "column"), "output_format": ("output", "format"),
    **{f: ("output", f) for f in ("rows_per_file", "optimize", "change_data_feed")},
    **{f: ("runtime", f) for f in RuntimeOptions.model_fields},
    **{f: ("resources", f) for f in ResourcesSection.model_fields},
    "score_partitions": ("resources", "tasks_per_group"), "concurrent_units": ("resources", "concurrent_groups"),
    **{f: ("commit", f) for f in CommitSection.model_fields},
    **{f: ("report", f) for f in ReportSection.model_fields},
}
#: dict-valued fields whose entries merge across a file and its overrides
_MERGED = {("model", "options"), ("resources", "spark_conf")}


def sectioned(data: Mapping[str, Any], written: dict[tuple[str, ...], str] | None = None) -> dict[str, Any]:
    """`data` (flat names, sections, or both; `-` or `_` in names) as a dict of sections.

    `written`, when given, collects how each field was named (`batch_size` or `runtime.batch_size`),
    so that errors name it the way the user wrote it.
    """
    written = {} if written is None else written
    out: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key in SECTIONS:
            if isinstance(value, BaseModel):
                value = value.model_dump()
            if isinstance(value, Mapping):
                fields = {str(k).replace("-", "_"): v for k, v in value.items()}
                written.update({(key, f): f"{key}.{f}" for f in fields})
            elif key in SCALAR_SECTIONS:
                fields = {SCALAR_SECTIONS[key]: value}
                written[(key, SCALAR_SECTIONS[key])] = key
            else:
                out[key] = value  # not a mapping: pydantic names the section and the value
                continue
            section = out.setdefault(key, {})
            if isinstance(section, dict):
                section.update(fields)
        elif key in FLAT:
            sec, field = FLAT[key]
            section = out.setdefault(sec, {})
            if isinstance(section, dict):
                section[field] = value
            written[(sec, field)] = key
        else:
            out[key] = value  # a top-level field, or an unknown one that validation names
    return out


class JobConfig(_Section):
    """Everything one scoring run needs, in sections; see docs/configuration.md for each field.

        from spark_infer import JobConfig
        cfg = JobConfig(input="/data/products", output="/data/emb", batch_size=32)
        cfg.input.table, cfg.runtime.batch_size, cfg.resources.concurrent_groups

    Flat names (`input="/data/in"`, `batch_size=32`, `concurrent_units=2`) and sections
    (`input={"table": "/data/in"}`, `runtime={"batch_size": 32}`) are both accepted. `runtime` is the
    one `RuntimeOptions` object the workers get.
    """

    job_name: str = "spark-infer"
    input: InputSection
    model: ModelSection = Field(default_factory=ModelSection)
    output: OutputSection
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)
    resources: ResourcesSection = Field(default_factory=ResourcesSection)
    commit: CommitSection = Field(default_factory=CommitSection)
    report: ReportSection = Field(default_factory=ReportSection)
    dry_run: bool = False

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        return sectioned(data) if isinstance(data, Mapping) else data

    @model_validator(mode="after")
    def _distinct(self) -> JobConfig:
        if self.input.table.rstrip("/") == self.output.table.rstrip("/"):
            raise ValueError("output must differ from input")
        return self

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def prediction_col(self) -> str:
        return self.output.column or get_task(self.model.task).default_output_col

    @property
    def runs_table_ref(self) -> str:
        return self.report.runs_table or self.output.table.rstrip("/") + "_runs"

    def task_option_values(self) -> dict[str, Any]:
        opts = dict(self.model.options)
        if self.model.max_length is not None:
            opts.setdefault("max_length", self.model.max_length)
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


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Sectioned `overrides` over sectioned `base`: field by field, None meaning "not given"; task
    options and Spark confs merge entry by entry."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in SECTIONS and isinstance(value, dict) and isinstance(out.get(key), dict):
            section = out[key]
            for field, v in value.items():
                if v is None:
                    continue
                if (key, field) in _MERGED and isinstance(v, dict) and isinstance(section.get(field), dict):
                    section[field] = {**section[field], **v}
                else:
                    section[field] = v
        else:
            out[key] = value
    return out


def build_config(file: str | None = None, overrides: Mapping[str, Any] | None = None, *,
                 base: Mapping[str, Any] | None = None) -> JobConfig:
    """Merge a config file (or `base` fields) with overrides (flags win) and validate; ConfigError
    naming the field on any problem."""
    written: dict[tuple[str, ...], str] = {}
    data = sectioned(read_config_file(file) if file else base or {}, written)
    data = merge(data, sectioned(overrides or {}, written))
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, written)) from None


def known_fields() -> list[str]:
    """Every name a config field can be written as: top-level, flat and `section.field`."""
    top = [k for k in JobConfig.model_fields if k not in SECTIONS]
    dotted = [f"{s}.{f}" for s, cls in SECTIONS.items() for f in cls.model_fields]
    return [*top, *SECTIONS, *FLAT, *dotted]


def format_errors(exc: ValidationError, written: Mapping[tuple[str, ...], str] | None = None) -> str:
    written = written or {}
    msgs = []
    for err in exc.errors():
        loc = tuple(str(x) for x in err["loc"])
        # name the field the way it was written: `batch_size`, not `runtime.batch_size`
        name = written.get(loc[:2]) if len(loc) >= 2 else None
        name = ".".join([name, *loc[2:]]) if name else ".".join(loc)
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(name, known_fields(), n=1)
            msgs.append(f"unknown config field {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        elif err["type"] == "missing":
            msgs.append(f"config field {name!r} is required")
        elif not name:
            msgs.append(err["msg"].removeprefix("Value error, "))
        else:
            shown = json.dumps(val, default=str) if not isinstance(val, dict) else "{...}"
            msgs.append(f"config field {name!r}={shown}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(msgs)
