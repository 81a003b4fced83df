"""The exceptions every layer raises; imported by all, importing nothing of the package.

Each maps to one of the job's exit codes (see `spark_infer.run.ExitCode`): a `ConfigError` means
nothing was written and a rerun with the same settings fails the same way (exit 2), a
`ConcurrentRunError` means another run wrote the same output units (exit 4), `UnitsClaimed` that
another live run is scoring units this one planned (exit 6).
"""

from __future__ import annotations

import re


class SparkInferError(Exception):
    """Base class of spark-infer's own errors."""


class ConfigError(SparkInferError, ValueError):
    """A bad setting, model reference, table or column, with a message naming the field and value."""


class ConcurrentRunError(SparkInferError, RuntimeError):
    """Another run committed to the same output units at the same time; rerun to finish."""


class UnitsClaimed(SparkInferError, RuntimeError):
    """Another live run holds units this run planned (`on_claimed: exit`): nothing is wrong, that run
    is scoring them (exit 6)."""


class SinkUnavailable(SparkInferError, RuntimeError):
    """The output format's libraries are not on the Spark session (e.g. Delta Lake's jars)."""


class DeltaMissing(SinkUnavailable):
    """Delta Lake's classes are not on the running Spark session's classpath."""


class NeedsSparkSession(SparkInferError, RuntimeError):
    """A setting only Spark's own parser reads (a DDL type string) met no active Spark session: open
    the session and validate again. Not a ValueError, so that option validation passes it on as is."""


class RunStopped(SparkInferError, RuntimeError):
    """A stop request (SIGTERM/SIGINT) met a stage boundary: the run ends as interrupted (exit 5)."""


class ModelMismatchError(SparkInferError, RuntimeError):
    """A worker loaded a model other than the one the driver fingerprinted (the task fails)."""


class DeviceMismatchError(ModelMismatchError):
    """A worker cannot score on the device or in the precision the run was planned and fingerprinted for
    (no GPU in a GPU run, no bfloat16 on the GPU): the task fails instead of writing other rows."""


class ModelDoesNotFit(SparkInferError, RuntimeError):
    """The model cannot fit in what is left of the task's GPU (other tasks share it)."""


class SystemicScoringError(SparkInferError, RuntimeError):
    """Nothing can be scored (a broken model or device): the task fails instead of writing error rows."""


#: the last line of a Python traceback: `package.module.SomeError: message`
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$", re.M)


def describe(exc: BaseException, limit: int = 2000) -> str:
    """`Type: message` of an exception in one line; for an error raised in a Spark Python worker
    (whose message is a whole traceback) the worker's own exception, not the JVM's wrapper."""
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        found = _ERROR_LINE.findall(text)
        if found:
            qualname, msg = found[-1]
            return f"{qualname.rsplit('.', 1)[-1]}: {msg.strip()}"[:limit]
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:limit]
