"""A row's content state: one 64-bit hash of exactly the input values the task reads.

    from spark_infer.row_state import row_state_expr, row_states
    df.withColumn("input_row_state", row_state_expr(df.schema, ["text"]))   # Spark
    row_states(pyarrow_table, ["text"])                                    # any Arrow reader (delta-rs, DuckDB)

The output's lineage column `input_row_state` holds it for every row, so the planner can tell, row by
row, whether an input row is the one its result was scored from (`spark_infer.job.rowdiff`).

The formula is Spark's own `xxhash64` (seed 42) over, for each read column in the task's order, a null
marker and then the value: `xxhash64(isnull(c1), c1, isnull(c2), c2, ...)`. So it is

- **type- and null-aware**: Spark hashes an int as 4 bytes and a long as 8, a string as its UTF-8
  bytes; `('a', null)` and `(null, 'a')` differ through the markers, and `''` differs from null;
- **independent of column order, files and partitioning**: only the named columns' values, in the
  task's order, go in;
- **the same from any reader**: `row_states` computes it from Arrow data with a pure-Python XXH64,
  per Spark's type rules (float `-0.0` as `0.0`, NaN canonical, dates as days and timestamps as
  microseconds, taken as integers since Spark's years reach past Python's `datetime`, decimals as
  their exact unscaled value, arrays and structs element by element), whatever the Arrow layout
  (large, view and dictionary-encoded strings, any timestamp unit). Map
  columns are hashed through their JSON text (Spark refuses to hash maps), which only Spark can
  reproduce exactly: `row_states` refuses them.

The id column is not part of it: a row is found by its id, and the state says what it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: the output column that holds each row's state
ROW_STATE_COLUMN = "input_row_state"
#: Spark's default seed for `xxhash64`
SEED = 42


def row_state_expr(schema: Any, columns: Sequence[str]) -> Any:
    """The Spark column computing the row state of `columns` (names in `schema`, a StructType)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType

    parts = []
    for c in columns:
        col = F.col(_quoted(c))
        if isinstance(schema[c].dataType, MapType):
            col = F.to_json(col)
        parts += [F.isnull(F.col(_quoted(c))), col]
    return F.xxhash64(*parts)


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


# -- the same hash from Arrow data, without Spark -------------------------------------------------------
_P1, _P2, _P3, _P4, _P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                           0x27D4EB2F165667C5)
_M = (1 << 64) - 1
#: digits of the decimal context a decimal's unscaled value is taken in: more than Arrow's widest
#: (decimal256, 76), so that it is exact
_DECIMAL_DIGITS = 80


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M


def _round(acc: int, lane: int) -> int:
    acc = (acc + lane * _P2) & _M
    return (_rotl(acc, 31) * _P1) & _M


def _merge(acc: int, v: int) -> int:
    acc ^= _round(0, v)
    return (acc * _P1 + _P4) & _M


def _fmix(h: int) -> int:
    h ^= h >> 33
    h = (h * _P2) & _M
    h ^= h >> 29
    h = (h * _P3) & _M
    return h ^ (h >> 32)


def xxh64(data: bytes, seed: int) -> int:
    """XXH64 of `data` (unsigned 64-bit result), the reference algorithm that Spark's XXH64 implements."""
    seed &= _M
    n = len(data)
    i = 0
    if n >= 32:
        v1, v2, v3, v4 = (seed + _P1 + _P2) & _M, (seed + _P2) & _M, seed, (seed - _P1) & _M
        while i + 32 <= n:
            v1 = _round(v1, int.from_bytes(data[i:i + 8], "little"))
            v2 = _round(v2, int.from_bytes(data[i + 8:i + 16], "little"))
            v3 = _round(v3, int.from_bytes(data[i + 16:i + 24], "little"))
            v4 = _round(v4, int.from_bytes(data[i + 24:i + 32], "little"))
            i += 32
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & _M
        for v in (v1, v2, v3, v4):
            h = _merge(h, v)
    else:
        h = (seed + _P5) & _M
    h = (h + n) & _M
    while i + 8 <= n:
        h ^= _round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & _M
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _M
        h = (_rotl(h, 23) * _P2 + _P3) & _M
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M
        h = (_rotl(h, 11) * _P1) & _M
        i += 1
    return _fmix(h)


def _signed(h: int) -> int:
    return h - (1 << 64) if h >= 1 << 63 else h


def _hash_int(v: int, seed: int) -> int:
    return xxh64((v & 0xFFFFFFFF).to_bytes(4, "little"), seed)


def _hash_long(v: int, seed: int) -> int:
    return xxh64((v & _M).to_bytes(8, "little"), seed)


def _hash_value(value: Any, t: Any, seed: int) -> int:
    """Spark's `XxHash64` of one value of Arrow type `t` (as `to_pylist` gives it), chained on `seed`.
    Dates and timestamps come as Spark holds them, int32 days and int64 microseconds (`_spark_ints`)."""
    import decimal
    import math
    import struct

    import pyarrow as pa

    if value is None:
        return seed
    if pa.types.is_dictionary(t):  # nested in a list or struct (a top-level one is decoded by row_states)
        t = t.value_type
    if pa.types.is_boolean(t):
        return _hash_int(1 if value else 0, seed)
    if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_int32(t):
        return _hash_int(int(value), seed)
    if pa.types.is_int64(t):
        return _hash_long(int(value), seed)
    if pa.types.is_float32(t):
        f = float(value)
        if f == 0.0:
            return _hash_int(0, seed)
        bits = 0x7FC00000 if math.isnan(f) else struct.unpack("<I", struct.pack("<f", f))[0]
        return _hash_int(bits, seed)
    if pa.types.is_float64(t):
        f = float(value)
        if f == 0.0:
            return _hash_long(0, seed)
        bits = 0x7FF8000000000000 if math.isnan(f) else struct.unpack("<Q", struct.pack("<d", f))[0]
        return _hash_long(bits, seed)
    if pa.types.is_decimal(t):
        # exactly: the default decimal context keeps 28 digits, and would round a decimal(30,5)'s
        # unscaled value before it is hashed
        unscaled = int(decimal.Decimal(value).scaleb(t.scale, decimal.Context(prec=_DECIMAL_DIGITS)))
        if t.precision <= 18:
            return _hash_long(unscaled, seed)
        # Java's BigInteger.toByteArray: minimal two's complement, big-endian
        size = max(1, (unscaled + (unscaled < 0)).bit_length() // 8 + 1)
        return xxh64(unscaled.to_bytes(size, "big", signed=True), seed)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return xxh64(value.encode("utf-8"), seed)
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)):
        return xxh64(bytes(value), seed)
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        for v in value:
            seed = _hash_value(v, t.value_type, seed)
        return seed
    if pa.types.is_struct(t):
        for i in range(t.num_fields):
            f = t.field(i)
            seed = _hash_value(value.get(f.name), f.type, seed)
        return seed
    raise TypeError(f"no row state for Arrow type {t} outside Spark (maps are hashed through Spark's JSON)")


def _spark_ints(t: Any, stage: int) -> Any:
    """`t` with every date and timestamp in it, nested too, as what Spark hashes: int32 days and int64
    microseconds. Two casts: first to `date32`/`timestamp[us]` (`stage` 0: the unit changes, and a lost
    sub-microsecond raises), then to the integers (`stage` 1: the same values reinterpreted). Integers,
    not Python objects: Spark's range (years before 1 and after 9999) is wider than `datetime`'s."""
    import pyarrow as pa

    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz=t.tz) if stage == 0 else pa.int64()
    if pa.types.is_date(t):
        return pa.date32() if stage == 0 else pa.int32()
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_spark_ints(f.type, stage)) for f in t])
    for is_kind, make in ((pa.types.is_list, pa.list_), (pa.types.is_large_list, pa.large_list),
                          (pa.types.is_list_view, pa.list_view),
                          (pa.types.is_large_list_view, pa.large_list_view)):
        if is_kind(t):
            return make(t.value_field.with_type(_spark_ints(t.value_type, stage)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_spark_ints(t.value_type, stage)), t.list_size)
    return t


def row_states(table: Any, columns: Sequence[str]) -> list[int]:
    """The row state of each row of the Arrow table `table` over `columns`: equal to what Spark's
    `row_state_expr` gives for the same values (a pure-Python hash: for checks and small reads)."""
    import pyarrow as pa

    cols = []
    for c in columns:
        arr = table.column(c)
        t = arr.type
        if pa.types.is_dictionary(t):  # dictionary-encoded (DuckDB, Parquet read_dictionary): its values
            arr = arr.cast(t.value_type)
            t = arr.type
        if pa.types.is_map(t):
            raise TypeError(f"column {c!r} is a map: its row state is Spark's hash of its JSON text")
        for stage in (0, 1):
            if _spark_ints(t, stage) != arr.type:
                arr = arr.cast(_spark_ints(t, stage))
        t = arr.type
        cols.append((arr.to_pylist(), t))
    out = []
    for i in range(table.num_rows):
        h = SEED
        for values, t in cols:
            v = values[i]
            h = _hash_int(1 if v is None else 0, h)
            h = _hash_value(v, t, h)
        out.append(_signed(h))
    return out
