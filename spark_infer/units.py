"""Units: the values that identify one unit, in a form that round-trips exactly.

A unit is one value (or tuple of values) of the unit columns: an input partition, or an id bucket.
Its *key* holds each value in a canonical, JSON-safe form that the three places a unit is seen agree
on: Spark rows (collected through `canonical_exprs`, never through Python's local time zone), the
Delta log's typed partition values (`canonical_from_arrow`), and the SQL predicates that select and
replace the unit (`predicate`). Canonical forms:

| kind          | canonical value                      | predicate                                 |
|---------------|--------------------------------------|-------------------------------------------|
| string        | str; '' is null (Delta stores '' in a partition column as null) | `c = CAST(X'<utf-8 hex>' AS STRING)` / `(c IS NULL OR c = '')` |
| int, bool     | int, bool                            | `c = 42`, `c = true`                      |
| date          | 'YYYY-MM-DD'                         | `c = DATE'2024-01-31'`                    |
| timestamp     | int: microseconds since the epoch    | `c = timestamp_micros(1706659200000000)`  |
| timestamp_ntz | 'YYYY-MM-DD HH:MM:SS.ffffff'         | `c = TIMESTAMP_NTZ'2024-01-31 00:00:00.000000'` |
| decimal       | str with the column's scale ('1.50') | `c = CAST('1.50' AS DECIMAL(10,2))`       |
| float, double | 'NaN', 'Infinity', '-Infinity' or repr of the double ('0.0' for -0.0) | `isnan(c)` / `CAST(c AS DOUBLE) = CAST('1.5' AS DOUBLE)` |

Every value is null-able (`c IS NULL`). Other types (binary, arrays, maps, structs, intervals) cannot
be units: a config error.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spark_infer.errors import ConfigError

#: a unit key: one canonical value per unit column
UnitKey = tuple[Any, ...]

_KINDS = {
    "StringType": "string", "VarcharType": "string", "CharType": "string",
    "ByteType": "int", "ShortType": "int", "IntegerType": "int", "LongType": "int",
    "BooleanType": "bool", "DateType": "date", "TimestampType": "timestamp",
    "TimestampNTZType": "timestamp_ntz", "DecimalType": "decimal", "FloatType": "float", "DoubleType": "float",
}


@dataclass(frozen=True)
class UnitColumn:
    """A unit column: its name, kind (see the module table) and, for decimals, its SQL type."""

    name: str
    kind: str
    sql_type: str = ""

    @classmethod
    def of(cls, name: str, spark_type: Any, field: str = "partition_by") -> UnitColumn:
        """The unit column for a Spark DataType; ConfigError for types that cannot be units."""
        kind = _KINDS.get(type(spark_type).__name__)
        if kind is None:
            raise ConfigError(
                f"config field {field!r}: column {name!r} is {spark_type.simpleString()}, which cannot identify a "
                "unit (use a string, integer, boolean, date, timestamp, decimal or floating-point column)"
            )
        return cls(name, kind, spark_type.simpleString() if kind == "decimal" else "")

    @property
    def ident(self) -> str:
        return quote_ident(self.name)


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# -- canonical values -----------------------------------------------------------------------------------
def canonical_float(value: float | None) -> str | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return "0.0" if value == 0 else repr(value)


def canonical_value(col: UnitColumn, value: Any) -> Any:
    """The canonical form of one Python value of `col` (as collected through `canonical_exprs`)."""
    if value is None:
        return None
    k = col.kind
    if k == "string":
        return value or None
    if k == "int":
        return int(value)
    if k == "bool":
        return bool(value)
    if k == "float":
        return canonical_float(float(value))
    if k == "decimal":
        return str(value)
    if k == "date":
        return value.isoformat() if isinstance(value, dt.date) else str(value)
    if k == "timestamp":
        return int(value)
    if k == "timestamp_ntz":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(value, dt.datetime) else str(value)
    raise AssertionError(k)


def canonical_exprs(columns: Sequence[UnitColumn]) -> list[str]:
    """Spark SQL expressions that collect each unit column in canonical form (aliased `__k<i>`)."""
    out = []
    for i, c in enumerate(columns):
        e = c.ident
        expr = {
            "string": f"nullif({e}, '')",
            "int": e, "bool": e,
            "date": f"CAST({e} AS STRING)",
            "timestamp": f"unix_micros({e})",
            "timestamp_ntz": f"date_format({e}, 'yyyy-MM-dd HH:mm:ss.SSSSSS')",
            "decimal": f"CAST({e} AS STRING)",
            # collected as the double's text and canonicalised in Python (NaN, infinities); + 0.0
            # turns -0.0 into 0.0, so both group together as Spark's own grouping does
            "float": f"CAST(CAST({e} AS DOUBLE) + 0.0 AS STRING)",
        }[c.kind]
        out.append(f"{expr} AS `__k{i}`")
    return out


def key_from_row(columns: Sequence[UnitColumn], row: Any) -> UnitKey:
    """The unit key of a row collected with `canonical_exprs`."""
    return tuple(canonical_value(c, row[f"__k{i}"]) for i, c in enumerate(columns))


def canonical_from_arrow(col: UnitColumn, array: Any) -> list[Any]:
    """Canonical values of an Arrow array of `col`'s values (e.g. typed Delta log partition values)."""
    import pyarrow as pa

    if col.kind == "timestamp":
        t = array.type
        if pa.types.is_timestamp(t) and t.unit != "us":
            array = array.cast(pa.timestamp("us", tz=t.tz))
        return [None if v is None else int(v) for v in array.cast(pa.int64()).to_pylist()]
    values = array.to_pylist()
    if col.kind == "decimal":
        scale = array.type.scale if pa.types.is_decimal(array.type) else None
        return [None if v is None else str(v if scale is None else decimal.Decimal(v).quantize(
            decimal.Decimal(1).scaleb(-scale))) for v in values]
    return [canonical_value(col, v) for v in values]


# -- predicates -----------------------------------------------------------------------------------------
def _literal_condition(col: UnitColumn, value: Any) -> str:
    e = col.ident
    if value is None:
        return f"({e} IS NULL OR {e} = '')" if col.kind == "string" else f"{e} IS NULL"
    k = col.kind
    if k == "string":
        return f"{e} = CAST(X'{value.encode('utf-8').hex().upper()}' AS STRING)"
    if k == "int":
        return f"{e} = {int(value)}"
    if k == "bool":
        return f"{e} = {'true' if value else 'false'}"
    if k == "date":
        return f"{e} = DATE'{value}'"
    if k == "timestamp":
        return f"{e} = timestamp_micros({int(value)})"
    if k == "timestamp_ntz":
        return f"{e} = TIMESTAMP_NTZ'{value}'"
    if k == "decimal":
        return f"{e} = CAST('{value}' AS {col.sql_type.upper()})"
    if k == "float":
        if value == "NaN":
            return f"isnan({e})"
        return f"CAST({e} AS DOUBLE) = CAST('{value}' AS DOUBLE)"
    raise AssertionError(k)


def predicate(columns: Sequence[UnitColumn], key: UnitKey) -> str:
    """SQL selecting exactly one unit's rows: `a = 1 AND b IS NULL`."""
    return " AND ".join(_literal_condition(c, v) for c, v in zip(columns, key, strict=True))


def group_predicate(columns: Sequence[UnitColumn], keys: Sequence[UnitKey]) -> str:
    """SQL selecting the rows of several units (one `IN` list where a single column allows it)."""
    if not keys:
        return "false"
    if len(columns) == 1 and columns[0].kind in ("string", "int", "date", "bool"):
        col = columns[0]
        plain = [k[0] for k in keys if k[0] is not None]
        parts = []
        if plain:
            lits = [_literal_condition(col, v).split(" = ", 1)[1] for v in plain]
            parts.append(f"{col.ident} IN ({', '.join(lits)})")
        if any(k[0] is None for k in keys):
            parts.append(_literal_condition(col, None))
        return " OR ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
    if len(keys) == 1:
        return predicate(columns, keys[0])
    return " OR ".join(f"({predicate(columns, k)})" for k in keys)


# -- names ----------------------------------------------------------------------------------------------
def label(columns: Sequence[UnitColumn], key: UnitKey) -> str:
    """How a unit is shown in plans and logs: `category=books`, `a=None,b=x`."""
    return ",".join(f"{c.name}={v}" for c, v in zip(columns, key, strict=True))


def key_json(columns: Sequence[UnitColumn], key: UnitKey) -> str:
    """A stable, typed identity of a unit (null and 'None', ',' and '=' in values never collide)."""
    return json.dumps([[c.kind, v] for c, v in zip(columns, key, strict=True)], separators=(",", ":"),
                      ensure_ascii=False)


def units_id(columns: Sequence[UnitColumn], keys: Sequence[UnitKey]) -> str:
    """A stable identity of a set of units (a commit group), whatever order they are given in."""
    parts = sorted(key_json(columns, k) for k in keys)
    if len(parts) == 1:
        return parts[0]
    return "group:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()
