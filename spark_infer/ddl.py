"""Spark DDL type strings in pure Python (no JVM: workers need the types too), mapped to Arrow as Spark does.

    from spark_infer.ddl import to_arrow
    to_arrow("struct<churn_probability:double,label:string>")   # pyarrow struct type

Accepted: "double", "array<float>", "map<string,int>", "struct<a:int,b:string>", "decimal(10,2)",
the top-level "a int, b string" form, backquoted names, and `NOT NULL` on fields.
"""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa


def to_arrow(t: Any) -> pa.DataType:
    """A pyarrow DataType, a pyspark DataType or a Spark DDL string as an Arrow type (Spark's mapping)."""
    if isinstance(t, pa.DataType):
        return t
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import DataType

    if isinstance(t, str):
        t = parse_ddl(t)
    if not isinstance(t, DataType):
        raise ValueError(f"expected a pyarrow type, a pyspark type or a DDL string, got {type(t).__name__}")
    try:
        return to_arrow_type(t, timezone="UTC")
    except Exception as exc:  # noqa: BLE001 - unsupported Spark types
        raise ValueError(f"{t.simpleString()} has no Arrow equivalent ({exc})") from None


_TOKEN_RE = re.compile(r"\s*(?:(`(?:[^`]|``)*`)|([A-Za-z_][\w]*)|(\d+)|([<>(),:]))")


def parse_ddl(text: str):
    """Parse a Spark DDL type ("struct<a:int,b:array<string>>", "a int, b string", "double") in pure Python."""
    tokens: list[tuple[str, str]] = []
    pos, text_s = 0, text.strip()
    while pos < len(text_s):
        m = _TOKEN_RE.match(text_s, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse DDL {text!r} at {text_s[pos:]!r}")
        quoted, ident, num, punct = m.groups()
        if quoted is not None:
            tokens.append(("name", quoted[1:-1].replace("``", "`")))
        elif ident is not None:
            tokens.append(("ident", ident))
        elif num is not None:
            tokens.append(("num", num))
        else:
            tokens.append(("p", punct))
        pos = m.end()
    parser = _DDLParser(tokens, text)
    result = parser.top()
    return result


class _DDLParser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.t, self.i, self.text = tokens, 0, text

    def _peek(self, k: int = 0):
        j = self.i + k
        return self.t[j] if j < len(self.t) else (None, None)

    def _take(self, value: str | None = None) -> str:
        kind, v = self._peek()
        if kind is None or (value is not None and v != value):
            raise ValueError(f"cannot parse DDL {self.text!r}: expected {value or 'more'}, got {v!r}")
        self.i += 1
        return v

    def top(self):
        from pyspark.sql.types import StructType

        # "a int, b string" (a top-level struct without struct<>) or one type
        looks_like_fields = self._peek()[0] in ("ident", "name") and (
            self._peek(1)[1] == ":" or self._peek(1)[0] in ("ident", "name")
        )
        if looks_like_fields:
            fields = self._fields(end=None)
            result = StructType(fields)
        else:
            result = self._type()
        if self._peek()[0] is not None:
            raise ValueError(f"cannot parse DDL {self.text!r}: unexpected {self._peek()[1]!r}")
        return result

    def _fields(self, end: str | None):
        from pyspark.sql.types import StructField

        fields = []
        while True:
            kind, name = self._peek()
            if kind not in ("ident", "name"):
                raise ValueError(f"cannot parse DDL {self.text!r}: expected a field name, got {name!r}")
            self.i += 1
            if self._peek()[1] == ":":
                self.i += 1
            dtype = self._type()
            nullable = True
            if self._peek()[1] and self._peek()[1].upper() == "NOT" and (self._peek(1)[1] or "").upper() == "NULL":
                self.i += 2
                nullable = False
            fields.append(StructField(name, dtype, nullable))
            if self._peek()[1] == ",":
                self.i += 1
                continue
            if end is None or self._peek()[1] == end:
                return fields
            raise ValueError(f"cannot parse DDL {self.text!r}: unexpected {self._peek()[1]!r}")

    def _type(self):
        from pyspark.sql import types as T

        kind, word = self._peek()
        if kind != "ident":
            raise ValueError(f"cannot parse DDL {self.text!r}: expected a type, got {word!r}")
        self.i += 1
        w = word.lower()
        simple = {
            "string": T.StringType, "boolean": T.BooleanType, "bool": T.BooleanType,
            "tinyint": T.ByteType, "byte": T.ByteType, "smallint": T.ShortType, "short": T.ShortType,
            "int": T.IntegerType, "integer": T.IntegerType, "bigint": T.LongType, "long": T.LongType,
            "float": T.FloatType, "real": T.FloatType, "double": T.DoubleType, "binary": T.BinaryType,
            "date": T.DateType, "timestamp": T.TimestampType, "timestamp_ltz": T.TimestampType,
            "timestamp_ntz": T.TimestampNTZType,
        }
        if w in simple:
            return simple[w]()
        if w in ("char", "varchar"):
            self._take("(")
            self._take()
            self._take(")")
            return T.StringType()
        if w in ("decimal", "dec", "numeric"):
            if self._peek()[1] != "(":
                return T.DecimalType(10, 0)
            self._take("(")
            precision = int(self._take())
            scale = 0
            if self._peek()[1] == ",":
                self.i += 1
                scale = int(self._take())
            self._take(")")
            return T.DecimalType(precision, scale)
        if w == "array":
            self._take("<")
            elem = self._type()
            self._take(">")
            return T.ArrayType(elem)
        if w == "map":
            self._take("<")
            key = self._type()
            self._take(",")
            value = self._type()
            self._take(">")
            return T.MapType(key, value)
        if w == "struct":
            self._take("<")
            if self._peek()[1] == ">":
                self.i += 1
                return T.StructType([])
            fields = self._fields(end=">")
            self._take(">")
            return T.StructType(fields)
        raise ValueError(f"cannot parse DDL {self.text!r}: unknown type {word!r}")
