"""The exceptions every layer raises; imported by all, importing nothing of the package.

Each maps to one of the job's exit codes (see `spark_infer.run.ExitCode`): a `ConfigError` means
nothing was written and a rerun with the same settings fails the same way (exit 2), a
`ConcurrentRunError` means another run wrote the same output units (exit 4).
"""

from __future__ import annotations


class SparkInferError(Exception):
    """Base class of spark-infer's own errors."""


class ConfigError(SparkInferError, ValueError):
    """A bad setting, model reference, table or column, with a message naming the field and value."""


class ConcurrentRunError(SparkInferError, RuntimeError):
    """Another run committed to the same output units at the same time; rerun to finish."""


class SinkUnavailable(SparkInferError, RuntimeError):
    """The output format's libraries are not on the Spark session (e.g. Delta Lake's jars)."""


class DeltaMissing(SinkUnavailable):
    """Delta Lake's classes are not on the running Spark session's classpath."""


class ModelMismatchError(SparkInferError, RuntimeError):
    """A worker loaded a model other than the one the driver fingerprinted (the task fails)."""


class SystemicScoringError(SparkInferError, RuntimeError):
    """Nothing can be scored (a broken model or device): the task fails instead of writing error rows."""
