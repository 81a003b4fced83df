"""`custom`: score rows with your own Python predictor (tabular models, rules, anything).

Options:

* `predictor: "package.module:factory"` (required): imported on the driver when the options are
  validated (a typo is a config error, exit code 2) and in each Python worker;
* `columns: [col, ...]` (required): input columns; each micro-batch reaches the predictor as a
  pandas DataFrame with exactly these columns, in this order (null values as None/NaN);
* `predictor_options: {...}`: keyword arguments for the factory;
* `output_type`: the output's type (forms below); default: the factory's own `output_type`
  attribute (a class attribute when the factory is a class, or `factory.output_type = ...`). When
  both are given they must agree.

The factory is called once per worker and device (the model cache keeps the object) as
`factory(device="cpu" | "cuda:N", **predictor_options)`, plus `model_dir=<the job's --model folder>`
when it has a `model_dir` parameter (or `**kwargs`). It returns an object with
`predict(df: pandas.DataFrame)` giving one output per row: a pyarrow Array, a pandas Series, a numpy
array, a list, or (for struct outputs) a pandas DataFrame with one column per struct field. If the
object has an `output_type` attribute it must equal the declared one.

Output types may be given as a pyarrow DataType, a pyspark DataType, Spark's JSON form of a type, or
a Spark DDL string ("double", "array<float>", "struct<churn_probability:double,label:string>", or
the top-level "churn_probability double, label string" form). DDL is read by Spark's own parser on
the driver, which needs the Spark session: the job opens it first, `predict_udf` / `predict_frame`
use the active one (without one they say so). Validated options hold the type as Spark's
JSON, which the workers read without a JVM (`spark_infer.ddl`). A predictor object's own
`output_type` given as DDL is compared on the workers by its text: the factory's text or the
type's `simpleString()`.

The job's model fingerprint covers the `--model` folder's files and these options, not the
predictor's code: after changing the code, change something fingerprinted (for example a `version`
in predictor_options or in the folder's predictor.json) so the job rescores.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from spark_infer.ddl import from_json, is_type_json, to_arrow, type_json
from spark_infer.tasks.base import Encoding, Task, TaskOptions, register

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class CustomOptions(TaskOptions):
    predictor: str = Field(description="'package.module:factory' returning the predictor object")
    columns: list[str] = Field(min_length=1, description="input columns handed to predict() as a DataFrame")
    predictor_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    output_type: str | None = Field(
        default=None, description="the output's type (Spark DDL, Spark's JSON, a pyarrow or pyspark type); default: "
        "the factory's output_type attribute. Validated options hold it as Spark's JSON, the form workers read"
    )

    @model_validator(mode="before")
    @classmethod
    def _declared_type(cls, data: Any) -> Any:
        """`output_type` as Spark's JSON, from the option or the factory: the one form workers read."""
        if not isinstance(data, dict) or not isinstance(data.get("predictor"), str) \
                or not _FACTORY_RE.match(data["predictor"]):
            return data  # field validation names what is wrong
        factory = load_factory(data["predictor"])
        return {**data, "output_type": declared_type_json(data["predictor"], data.get("output_type"), factory)}

    @model_validator(mode="after")
    def _check(self) -> CustomOptions:
        if not _FACTORY_RE.match(self.predictor):
            raise ValueError(f"predictor={self.predictor!r}: expected 'package.module:factory'")
        dup = sorted({c for c in self.columns if self.columns.count(c) > 1})
        if dup:
            raise ValueError(f"columns has duplicates {dup}")
        return self


def load_factory(path: str):
    """Import 'package.module:attr[.attr]'; ValueError naming what failed."""
    module_name, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is a configuration problem
        raise ValueError(
            f"predictor={path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "it must be importable on the driver and on every worker (PYTHONPATH, --py-files)"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"predictor={path!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"predictor={path!r}: {attr!r} is not callable")
    return obj


def factory_type(factory) -> Any:
    """The factory's own `output_type` declaration, or None (a property is an instance's business)."""
    declared = getattr(factory, "output_type", None)
    return None if isinstance(declared, property) else declared


def declared_type_json(predictor: str, option: Any, factory) -> str:
    """Spark's JSON of the output type: the option's, else the factory's. DDL goes through Spark's
    parser, which asks for the driver's session; ValueError naming the option when it is not a type.

    Once the option is Spark's JSON (as validated options hold it, e.g. on the workers) a factory's
    DDL is not parsed again: it was checked where a DDL, pyarrow or pyspark option was validated (an
    option given as JSON in the first place is not checked against a DDL attribute).
    """
    own = factory_type(factory)
    if option is None and own is None:
        raise ValueError(
            f"predictor={predictor!r}: declare the output type, either as the option output_type "
            "(Spark DDL) or as an `output_type` attribute of the factory"
        )
    if option is None:
        try:
            return type_json(own)
        except ValueError as exc:
            raise ValueError(f"predictor={predictor!r}: output_type {own!r}: {exc}") from None
    try:
        declared = type_json(option)
    except ValueError as exc:
        raise ValueError(f"output_type={option!r}: {exc}") from None
    already_json = isinstance(option, str) and is_type_json(option)
    if own is not None and not (already_json and isinstance(own, str) and not is_type_json(own)):
        try:
            own_json = type_json(own)
        except ValueError as exc:
            raise ValueError(f"predictor={predictor!r}: output_type {own!r}: {exc}") from None
        if own_json != declared:
            raise ValueError(f"output_type={option!r} differs from the factory's own output_type {own!r}")
    return declared


def resolve_output_type(options: CustomOptions) -> pa.DataType:
    """The validated options' output type as Arrow (no JVM: validated options hold Spark's JSON)."""
    try:
        return to_arrow(options.output_type)
    except ValueError as exc:
        raise ValueError(f"output_type={options.output_type!r}: {exc}") from None


def _agrees(own: Any, declared_json: str, factory) -> bool:
    """Whether a predictor object's own `output_type` is the declared type."""
    if isinstance(own, str) and not is_type_json(own):
        # Spark DDL, which workers cannot parse: the factory's own text was checked against the
        # declared type on the driver; otherwise the type's own spelling
        declared = factory_type(factory)
        if isinstance(declared, str) and _plain(own) == _plain(declared):
            return True
        return _plain(own) == _plain(from_json(declared_json).simpleString())
    return type_json(own) == declared_json  # as Spark sees them: pa.large_string() is a string too


def _plain(ddl: str) -> str:
    return "".join(ddl.split()).lower()


@dataclass
class RowsEncoding(Encoding):
    """Rows as dicts of column values; every row weighs 1 (no token lengths to sort by)."""

    def length(self, j: int) -> int:
        return 1


@register
class CustomTask(Task):
    """A user predictor object built by a factory once per worker and device."""

    name = "custom"
    Options = CustomOptions

    def __init__(self, model_dir: str, options: CustomOptions, device: str) -> None:
        super().__init__(model_dir, options, device)
        factory = load_factory(options.predictor)
        kwargs = dict(options.predictor_options, device=device)
        if _accepts(factory, "model_dir"):
            kwargs["model_dir"] = model_dir
        self.predictor = factory(**kwargs)
        if not callable(getattr(self.predictor, "predict", None)):
            raise TypeError(f"predictor {options.predictor!r} returned {type(self.predictor).__name__} "
                            "without a predict(df) method")
        self.columns = list(options.columns)
        self._out_type = resolve_output_type(options)
        own = getattr(self.predictor, "output_type", None)
        if own is not None and not _agrees(own, options.output_type, factory):
            raise ValueError(f"predictor {options.predictor!r}: its output_type {own!r} differs from the declared "
                             f"{from_json(options.output_type).simpleString()} (give it the declared type's text, "
                             "or a pyarrow/pyspark type)")

    @classmethod
    def output_type_for(cls, options: TaskOptions) -> pa.DataType:
        return resolve_output_type(options)

    @property
    def output_type(self) -> pa.DataType:
        return self._out_type

    @classmethod
    def input_columns(cls, options: TaskOptions) -> list[str] | None:
        return list(options.columns)

    def encode(self, values: Sequence[Any]) -> RowsEncoding:
        rows = []
        for v in values:
            if isinstance(v, dict):
                rows.append(v)
            elif len(self.columns) == 1:
                rows.append({self.columns[0]: v})
            else:
                raise TypeError(f"expected a row of columns {self.columns}, got {type(v).__name__}")
        return RowsEncoding(ids=[], extra={"rows": rows})

    def predict(self, encoding: Encoding, idx: np.ndarray) -> pa.Array:
        import pandas as pd

        rows = encoding.extra["rows"]
        df = pd.DataFrame.from_records([rows[i] for i in idx], columns=self.columns)
        return to_arrow_array(self.predictor.predict(df), self._out_type)

    def close(self) -> None:
        close = getattr(self.predictor, "close", None)
        if callable(close):
            close()
        self.predictor = None


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def to_arrow_array(result: Any, out_type: pa.DataType) -> pa.Array:
    """A predictor's outputs for one micro-batch as an Arrow array of `out_type`."""
    import pandas as pd

    if isinstance(result, pa.ChunkedArray):
        result = result.combine_chunks()
    if isinstance(result, pa.Array):
        return result if result.type == out_type else result.cast(out_type)
    if isinstance(result, pd.DataFrame):
        if not pa.types.is_struct(out_type):
            if result.shape[1] != 1:
                raise TypeError(f"predict returned a DataFrame with {result.shape[1]} columns for {out_type}")
            return pa.Array.from_pandas(result.iloc[:, 0], type=out_type)
        missing = [f.name for f in out_type if f.name not in result.columns]
        if missing:
            raise TypeError(f"predict returned a DataFrame without the output fields {missing}")
        arrays = [pa.Array.from_pandas(result[f.name], type=f.type) for f in out_type]
        return pa.StructArray.from_arrays(arrays, fields=list(out_type))
    if isinstance(result, pd.Series):
        if pa.types.is_struct(out_type) or pa.types.is_list(out_type) or pa.types.is_map(out_type):
            return pa.array(result.tolist(), type=out_type)
        return pa.Array.from_pandas(result, type=out_type)
    if isinstance(result, np.ndarray) and result.ndim == 1 and result.dtype != object:
        return pa.array(result, type=out_type)
    return pa.array(list(result), type=out_type, from_pandas=True)
