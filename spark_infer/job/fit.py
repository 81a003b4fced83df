"""Whether the model fits the memory a platform lets a UDF use (serverless compute caps it), decided at
plan time: a model that cannot fit is refused before anything is scored, with the numbers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spark_infer.errors import ConfigError
from spark_infer.log import event
from spark_infer.models.size import weights_in_memory

if TYPE_CHECKING:
    from spark_infer.runtime.spec import ModelSpec

#: what a scoring Python worker holds besides the weights: torch, transformers, pandas/Arrow and the
#: worker itself (measured: ~630 MiB resident after importing them with PyPI's CUDA build of torch,
#: less with a CPU build), plus activations of a batch
WORKER_BASELINE = 512 << 20
#: above this share of the cap the run goes on, with a warning (activations grow with batch size)
WARN_SHARE = 0.8


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB"


def check_fits_udf_memory(spec: ModelSpec, limit: int, where: str) -> int:
    """The estimated bytes a UDF scoring `spec` needs; ConfigError when that is over `limit`."""
    dtype = spec.dtype if spec.dtype in ("float16", "bfloat16", "float64") else "float32"
    weights = weights_in_memory(spec.snapshot, dtype)
    need = weights + WORKER_BASELINE
    if need > limit:
        raise ConfigError(
            f"model={spec.reference!r} needs about {_mib(need)} in a UDF ({_mib(weights)} of weights loaded in "
            f"{dtype} + ~{_mib(WORKER_BASELINE)} for torch and the Python worker), over the {_mib(limit)} that "
            f"{where} allows a UDF: use a smaller or reduced-precision model, or a cluster without the cap "
            "(dedicated compute); set udf_memory_limit where the platform allows more"
        )
    if need > WARN_SHARE * limit:
        event("udf_memory_tight", model=spec.reference, need_mib=need >> 20, limit_mib=limit >> 20,
              hint="lower batch_size/token_budget if workers run out of memory")
    return need
