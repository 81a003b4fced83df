"""How rows are pushed through a model: options that never change outputs, so are not fingerprinted."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from spark_infer.errors import ConfigError


class RuntimeOptions(BaseModel):
    """Micro-batching, device and error handling of the worker runtime (one object end to end).

        from spark_infer.runtime.options import RuntimeOptions
        RuntimeOptions(batch_size=32, device="cpu")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, ge=1, description="max rows per model call (micro-batch)")
    token_budget: int | None = Field(
        default=None, ge=1, description="max padded tokens per micro-batch (rows x longest row)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: the task's GPU if CUDA works, else CPU; cuda: fail without a GPU"
    )
    on_error: Literal["null", "fail"] = Field(
        default="null", description="null: a row that raises gets a null output and its error; fail: fail the task"
    )
    prefetch: Literal["auto", "on", "off"] = Field(
        default="auto", description="encode the next Arrow batch while the model runs this one (auto: on GPUs)"
    )

    @field_validator("on_error", mode="before")
    @classmethod
    def _yaml_null(cls, v: Any) -> Any:
        # `on_error: null` unquoted in YAML is None: the user meant the option's value "null"
        return "null" if v is None else v

    @classmethod
    def fields(cls) -> set[str]:
        return set(cls.model_fields)

    @classmethod
    def build(cls, **options: Any) -> RuntimeOptions:
        """RuntimeOptions from keyword options; ConfigError naming the option on a bad value."""
        try:
            return cls(**options)
        except ValidationError as exc:
            raise ConfigError(format_validation(exc, prefix="option")) from None


def format_validation(exc: ValidationError, prefix: str) -> str:
    """One line per pydantic error, naming the option and the value given."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "?"
        val = err.get("input")
        if err["type"] == "extra_forbidden":
            parts.append(f"{prefix} {loc!r} is not a known field (value {val!r})")
        else:
            parts.append(f"{prefix} {loc}={val!r}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
