"""Output types as Spark knows them: DDL parsed by Spark's own parser on the driver, Spark's JSON on the workers.

A Spark DDL string ("double", "struct<a:int,b:string>", the top-level "a int, b string") is parsed by
Spark itself (`DataType.fromDDL`: the JVM on a classic session, the server on Spark Connect), so it
needs the driver's session. The parsed type travels to the workers as Spark's JSON form of the type,
which pyspark reads in pure Python there (no JVM, no session), and is mapped to Arrow as Spark does.

    from spark_infer.ddl import to_arrow, type_json
    js = type_json("struct<churn_probability:double,label:string>")   # driver, with a session
    to_arrow(js)                                                       # anywhere: a pyarrow struct

Accepted everywhere: a pyarrow DataType, a pyspark DataType, Spark's JSON of a type. Accepted on the
driver with a session: Spark DDL (char/varchar become string, as in Spark's own UDF return types).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_infer.errors import NeedsSparkSession

if TYPE_CHECKING:
    from pyspark.sql.types import DataType

#: conditions pyspark raises when DDL is parsed with no session or context to parse it
_NO_SESSION = frozenset({"SESSION_OR_CONTEXT_NOT_EXISTS", "NO_ACTIVE_OR_DEFAULT_SESSION", "NO_ACTIVE_SESSION"})


def is_type_json(text: str) -> bool:
    """Whether `text` is Spark's JSON form of a type (`"double"`, `{"type":"struct",...}`); DDL never
    starts with a quote or a brace, so the first character decides."""
    return text.lstrip()[:1] in ('"', "{")


def from_json(text: str) -> DataType:
    """Spark's JSON form of a type as a pyspark DataType, in pure Python (what the workers run)."""
    from pyspark.sql.types import _parse_datatype_json_string

    try:
        return _parse_datatype_json_string(text)
    except Exception as exc:  # noqa: BLE001 - json, KeyError, pyspark's own errors: all mean "not a type"
        raise ValueError(f"{text!r} is not Spark's JSON form of a type ({type(exc).__name__}: {exc})") from None


#: DDL names of atomic types that Spark's parser reads the same whatever the session's confs (not
#: `string`, whose default collation, or `timestamp`, whose time zone kind, are confs) -> Spark's JSON
#: name; tests/test_no_jvm_noop.py checks each against Spark's own parser
ATOMIC_DDL = {
    "boolean": "boolean", "tinyint": "byte", "byte": "byte", "smallint": "short", "short": "short",
    "int": "integer", "integer": "integer", "bigint": "long", "long": "long", "float": "float",
    "real": "float", "double": "double", "date": "date", "binary": "binary",
}


def parse_ddl(text: str) -> DataType:
    """A Spark DDL type parsed by Spark's own parser, through the active session (classic or Connect).

    NeedsSparkSession when no session is active (the caller opens one and asks again); ValueError
    with Spark's message when Spark rejects the text. A bare atomic name whose meaning no conf changes
    (`int`, `double`: `ATOMIC_DDL`) is read here without asking Spark, so a custom predictor declaring
    one starts no JVM before its run knows whether anything is to be scored.
    """
    from pyspark.errors import PySparkException
    from pyspark.sql.types import DataType

    if not text.strip():
        raise ValueError("the DDL type is empty")
    atomic = ATOMIC_DDL.get(text.strip().lower())
    if atomic is not None:
        return from_json(f'"{atomic}"')
    try:
        return _strings_for_chars(DataType.fromDDL(text))
    except PySparkException as exc:
        if _condition(exc) in _NO_SESSION:
            raise NeedsSparkSession(
                f"{text!r} is a Spark DDL type: Spark's own parser reads it on the driver, which needs an "
                "active Spark session (create it first, or give a pyarrow/pyspark type or Spark's JSON of it)"
            ) from None
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ValueError(f"Spark cannot parse the DDL type {text!r}: {first}") from None


def type_json(t: Any) -> str:
    """Spark's JSON of a type given as a pyarrow or pyspark DataType, Spark's JSON, or Spark DDL (which
    `parse_ddl` reads with the active session). ValueError when it is none of these or has no Arrow form."""
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import DataType

    if isinstance(t, pa.DataType):
        try:
            t = from_arrow_type(t)
        except Exception as exc:  # noqa: BLE001 - Arrow types Spark has no equivalent for
            raise ValueError(f"{t} has no Spark equivalent ({exc})") from None
    elif isinstance(t, str):
        t = from_json(t) if is_type_json(t) else parse_ddl(t)
    if not isinstance(t, DataType):
        raise ValueError(f"expected a pyarrow type, a pyspark type, Spark's JSON or DDL of a type, got {type(t).__name__}")
    t = _strings_for_chars(t)
    to_arrow(t)  # a type the workers could not produce is refused here, on the driver
    return t.json()


def to_arrow(t: Any) -> pa.DataType:
    """A pyarrow DataType, a pyspark DataType or Spark's JSON of a type as an Arrow type (Spark's
    mapping). Needs no JVM; Spark DDL is refused (`type_json` turns it into JSON on the driver)."""
    if isinstance(t, pa.DataType):
        return t
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import DataType

    if isinstance(t, str):
        if not is_type_json(t):
            raise ValueError(f"{t!r} is Spark DDL, which only Spark's parser reads: resolve it to Spark's JSON "
                             "on the driver (spark_infer.ddl.type_json, with an active session)")
        t = from_json(t)
    if not isinstance(t, DataType):
        raise ValueError(f"expected a pyarrow type, a pyspark type or Spark's JSON of a type, got {type(t).__name__}")
    try:
        return to_arrow_type(_strings_for_chars(t), timezone="UTC")
    except Exception as exc:  # noqa: BLE001 - unsupported Spark types
        raise ValueError(f"{t.simpleString()} has no Arrow equivalent ({exc})") from None


def _condition(exc: Exception) -> str | None:
    try:
        return exc.getCondition()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a classic exception asks the JVM, which may be gone
        return None


def _strings_for_chars(t: DataType) -> DataType:
    """char(n)/varchar(n) as string, nested ones included: Arrow has no such types, and Spark itself
    reads them as string in UDF return types."""
    from pyspark.sql import types as T

    if isinstance(t, T.CharType | T.VarcharType):
        return T.StringType()
    if isinstance(t, T.ArrayType):
        return T.ArrayType(_strings_for_chars(t.elementType), t.containsNull)
    if isinstance(t, T.MapType):
        return T.MapType(_strings_for_chars(t.keyType), _strings_for_chars(t.valueType), t.valueContainsNull)
    if isinstance(t, T.StructType):
        return T.StructType([T.StructField(f.name, _strings_for_chars(f.dataType), f.nullable, f.metadata)
                             for f in t.fields])
    return t
