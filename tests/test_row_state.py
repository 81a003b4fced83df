"""A row's state is the same number whether Spark or plain Python computes it.

The planner compares the `input_row_state` an output row was scored from with the input row's state now
(`spark_infer.row_state`). Spark computes it with `row_state_expr` (its own `xxhash64`); readers without
Spark (delta-rs, DuckDB) with `row_states`, a pure-Python reimplementation of Spark's per-type hashing.
If the two disagree on any value, every such row looks changed to one side and is scored again (or,
worse, a changed row looks unchanged): so they are compared here value for value, on a Delta table
written by Spark and read back by delta-rs, over every type Spark can hash and the values where an
implementation goes wrong (signed zero, NaN, subnormals, min/max integers, decimals wider than a long,
dates and timestamps before 1970, multi-byte UTF-8, strings and binaries long enough for XXH64's
32-byte stripes, nulls inside arrays and structs).
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import pyarrow as pa
import pytest

from spark_infer.row_state import row_state_expr, row_states

UTC = dt.UTC
NAN, INF = math.nan, math.inf


def _ts(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


# Column-wise so that each column's hostile values are readable together; row 0 is null everywhere.
# Strings: '' and a NUL byte, combining marks and a ZWJ emoji sequence (4-byte UTF-8), and lengths that
# take XXH64's long path (>= 32 bytes: 33 has a 1-byte tail, 37 a 4+1-byte tail, 200 several stripes).
DATA = {
    "s": [None, "a", "", "héllo wörld", "👩\u200d👩\u200d👧 e\u0301 n\u0303 日本", "x" * 33,
          "ünï" * 40, "abc\x00def", "0123456789abcdef0123456789abcdef01234", "3"],
    "b": [None, 0, 1, -1, 127, -128, 3, 42, -7, 100],
    "sh": [None, 0, 1, -1, 32767, -32768, 3, -300, 256, 12345],
    "i": [None, 0, 1, -1, 2**31 - 1, -(2**31), 3, 123456, -65536, 7],
    "l": [None, 0, 1, -1, 2**63 - 1, -(2**63), 3, -(2**40), 2**32, 7],
    "bo": [None, True, False, True, False, True, False, True, False, True],
    # float32: a float32 subnormal (1e-40; 1e-310 would round to 0.0 in a float)
    "f": [None, 0.0, -0.0, NAN, INF, -INF, 1e-40, 0.1, -3.5, 3.4028234663852886e38],
    "d": [None, 0.0, -0.0, NAN, INF, -INF, 1e-310, 0.1, -3.5, 1.7976931348623157e308],
    # decimal(10,2) hashes its unscaled long; decimal(30,5) the unscaled value's minimal big-endian two's
    # complement (Java's BigInteger.toByteArray): 0 -> 00, -128 -> 80, 128 -> 00 80, 255 -> 00 ff, and
    # 30 significant digits (more than Python's default decimal context keeps)
    "dec1": [None, Decimal("0.00"), Decimal("-0.01"), Decimal("99999999.99"), Decimal("-99999999.99"),
             Decimal("1.50"), Decimal("-12345.67"), Decimal("0.10"), Decimal("21474836.48"), Decimal("3.00")],
    "dec2": [None, Decimal("0.00000"), Decimal("-0.00001"), Decimal("9" * 25 + ".99999"),
             Decimal("-" + "9" * 25 + ".99999"), Decimal("0.00128"), Decimal("-0.00128"), Decimal("0.00255"),
             Decimal("1234567890123456789012345.12345"), Decimal("-92233720368547.75808")],
    "dt": [None, dt.date(1970, 1, 1), dt.date(1969, 12, 31), dt.date(1900, 1, 1), dt.date(2024, 2, 29),
           dt.date(1000, 1, 1), dt.date(9999, 12, 31), dt.date(1, 1, 1), dt.date(2000, 1, 1), dt.date(1970, 1, 2)],
    "ts": [None, _ts(1970, 1, 1), _ts(1969, 12, 31, 23, 59, 59, 999999), _ts(1900, 1, 1, 0, 0, 0, 1),
           _ts(2024, 6, 1, 12, 34, 56, 789000), _ts(1677, 9, 22), _ts(2262, 4, 11), _ts(1950, 6, 15, 1, 2, 3),
           _ts(2038, 1, 19, 3, 14, 8), _ts(1970, 1, 1, 0, 0, 0, 1)],
    "ntz": [None, dt.datetime(1970, 1, 1), dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
            dt.datetime(1900, 1, 1, 0, 0, 0, 1), dt.datetime(2024, 6, 1, 12, 34, 56, 789000),
            dt.datetime(1677, 9, 22), dt.datetime(2262, 4, 11), dt.datetime(1950, 6, 15, 1, 2, 3),
            dt.datetime(2038, 1, 19, 3, 14, 8), dt.datetime(1970, 1, 1, 0, 0, 0, 1)],
    "bin": [None, b"", b"\x00", b"\xff" * 40, bytes(range(37)), b"a", bytes(range(256)), b"\x80\x00",
            b"12345678", b"3"],
    "af": [None, [], [None], [0.0, -0.0], [NAN, INF, -INF], [1.5, None, 2.5], [1e-40], [0.1] * 9,
           [None, None], [3.0]],
    "as": [None, [], [None], ["a", None], [None, "a"], ["", "x" * 40], ["👩\u200d👩\u200d👧"], ["a", "b", "c"],
           [""], ["3"]],
    "st": [None, (None, None), (1, None), (None, "1"), (3, "c"), (-(2**31), ""), (2**31 - 1, "é" * 20),
           (0, "0"), (None, ""), (3, None)],
    # dates and timestamps inside a struct and an array: hashed as Spark's integers there too
    "nt": [None, (None, None), (dt.date(1969, 12, 31), [None]), (dt.date(1, 1, 1), []),
           (None, [_ts(1969, 12, 31, 23, 59, 59, 999999), _ts(2024, 1, 1)]), (dt.date(2000, 1, 1), None),
           (dt.date(9999, 12, 31), [_ts(1970, 1, 1)]), (None, [None, _ts(1900, 1, 1)]), (dt.date(1970, 1, 1), []),
           (dt.date(3000, 1, 1), [_ts(2262, 4, 11)])],
    # Spark hashes a map through its JSON text; row_states refuses it (test_map_column_refused)
    "m": [None, {}, {"a": 1}, {"a": None}, {"é": -1, "b": 2}, {"": 0}, None, {"x": 3}, {}, {"3": 3}],
}
N = len(DATA["s"])
assert all(len(v) == N for v in DATA.values())

SCHEMA_DDL = (
    "id BIGINT, s STRING, b TINYINT, sh SMALLINT, i INT, l BIGINT, bo BOOLEAN, f FLOAT, d DOUBLE, "
    "dec1 DECIMAL(10,2), dec2 DECIMAL(30,5), dt DATE, ts TIMESTAMP, ntz TIMESTAMP_NTZ, bin BINARY, "
    "af ARRAY<FLOAT>, `as` ARRAY<STRING>, st STRUCT<a: INT, b: STRING>, "
    "nt STRUCT<d: DATE, t: ARRAY<TIMESTAMP>>, m MAP<STRING, INT>"
)
HASHABLE = [c for c in DATA if c != "m"]
#: each column alone (its type's rule on its own), then several together in a non-schema order (the
#: chaining of markers and values across columns), then all of them
SUBSETS = ([[c] for c in ["id", *HASHABLE]]
           + [["s", "i", "l", "d", "dec2", "ts", "as", "st"], ["st", "bin", "bo", "dt", "nt"], ["id", *HASHABLE]])


def _rows() -> list[tuple]:
    return [(i, *(DATA[c][i] for c in DATA)) for i in range(N)]


def _spark_states(spark, path: str, subsets: list[list[str]]) -> dict[int, list[int]]:
    """{id: [state per subset]} from Spark: one job over the Delta table at `path`."""
    df = spark.read.format("delta").load(path)
    states = [row_state_expr(df.schema, cols).alias(f"h{k}") for k, cols in enumerate(subsets)]
    return {r[0]: list(r[1:]) for r in df.select("id", *states).collect()}


def _python_states(path: str, subsets: list[list[str]]) -> dict[int, list[int]]:
    """The same from delta-rs's Arrow read, without Spark."""
    from deltalake import DeltaTable

    table = DeltaTable(path).to_pyarrow_table().sort_by("id")
    per_subset = [row_states(table, cols) for cols in subsets]
    return {i: [s[k] for s in per_subset] for k, i in enumerate(table.column("id").to_pylist())}


@pytest.fixture(scope="module")
def hostile(spark, tmp_path_factory) -> tuple[str, dict[int, list[int]]]:
    """The hostile rows as a Delta table written by Spark, and Spark's states over SUBSETS."""
    path = str(tmp_path_factory.mktemp("row_state") / "hostile")
    spark.createDataFrame(_rows(), SCHEMA_DDL).write.format("delta").save(path)
    return path, _spark_states(spark, path, SUBSETS)


def test_python_states_equal_spark_states(hostile):
    """Every row, every subset: delta-rs + row_states gives Spark's number (a mismatch lists them all)."""
    path, by_spark = hostile
    by_python = _python_states(path, SUBSETS)
    assert sorted(by_spark) == sorted(by_python) == list(range(N))
    wrong = [(cols, i, DATA[cols[0]][i] if len(cols) == 1 else "...", by_spark[i][k], by_python[i][k])
             for k, cols in enumerate(SUBSETS) for i in range(N) if by_spark[i][k] != by_python[i][k]]
    assert not wrong, "\n".join(f"{c} id={i} value={v!r}: spark {s} python {p}" for c, i, v, s, p in wrong)
    # and the states are not degenerate: every column's values spread, and all rows differ
    assert all(len({by_spark[i][k] for i in range(N)}) >= 3 for k in range(len(SUBSETS)))  # bo: 3 values
    assert len({by_spark[i][-1] for i in range(N)}) == N


def test_other_arrow_layouts_same_states(hostile):
    """Readers other than delta-rs hand the same values in other Arrow layouts (large and view strings and
    binaries, large lists, dictionary encoding, nanosecond timestamps, date64): the states do not change."""
    from deltalake import DeltaTable

    table = DeltaTable(hostile[0]).to_pyarrow_table().sort_by("id")
    variants = {
        "s": [pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())],
        "bin": [pa.large_binary(), pa.binary_view()],
        "ts": [pa.timestamp("ns", tz="UTC")], "ntz": [pa.timestamp("ns")], "dt": [pa.date64()],
        "as": [pa.large_list(pa.string()), pa.large_list(pa.string_view())],
        "nt": [pa.struct([("d", pa.date64()), ("t", pa.large_list(pa.timestamp("ns", tz="UTC")))])],
    }
    for c, types in variants.items():
        want = row_states(table, [c])
        for t in types:
            other = table.set_column(table.schema.get_field_index(c), c, table.column(c).cast(t))
            assert row_states(other, [c]) == want, (c, t)


def test_dates_and_timestamps_beyond_python_datetime(spark):
    """Spark's dates and timestamps reach past Python's years 1 to 9999, and so do the states: they
    are hashed as Spark's integers, never through `datetime`. (Delta tables cannot carry these to
    delta-rs, which fails on their statistics, nor INT96 timestamps outside 1677-2262, so here Arrow
    comes from Spark directly: the values and Spark's states in one job.)"""
    df = spark.sql(
        "SELECT * FROM VALUES "
        "(1L, date_from_unix_date(2932897), timestamp_micros(253402300800000000), "
        "     make_timestamp_ntz(10000, 1, 1, 0, 0, 0.000001)), "
        "(2L, date_from_unix_date(-800000), timestamp_micros(-70000000000000000), "
        "     make_timestamp_ntz(-5, 6, 7, 8, 9, 10)), "
        "(3L, DATE'1970-01-01', timestamp_micros(0), make_timestamp_ntz(1970, 1, 1, 0, 0, 0)) "
        "AS t(id, d, ts, ntz)")
    subsets = [["d"], ["ts"], ["ntz"], ["d", "ts", "ntz"]]
    table = df.select("*", *(row_state_expr(df.schema, c).alias(f"h{k}") for k, c in enumerate(subsets))
                      ).toArrow().sort_by("id")
    for k, c in enumerate(subsets):
        assert row_states(table, c) == table.column(f"h{k}").to_pylist(), c


def test_column_order_and_partitioning_do_not_matter(spark, hostile, tmp_path):
    """The same rows with the columns reversed, partitioned by a boolean (its values then live in paths,
    not files, and delta-rs rebuilds them from strings) and spread over several files: the state over
    the same named columns, in the same order, is the same from Spark and from delta-rs."""
    path, by_spark = hostile
    other = str(tmp_path / "reordered")
    (spark.read.format("delta").load(path).select(*reversed(["id", *DATA])).repartition(3)
     .write.format("delta").partitionBy("bo").save(other))
    subsets = SUBSETS[-3:]  # the multi-column ones: the order of names matters, not the table's
    want = {i: s[-3:] for i, s in by_spark.items()}
    assert _spark_states(spark, other, subsets) == want
    assert _python_states(other, subsets) == want


def test_states_tell_apart_what_differs(spark):
    """Null markers separate ('a', null) from (null, 'a') and '' from null; types separate int 3 from
    long 3 (4 bytes hashed against 8). Both sides agree on it, from a plain Arrow table too."""
    rows = [(1, "a", None, 3, 3), (2, None, "a", 3, 3), (3, "", None, 3, 3), (4, None, None, 3, 3)]
    df = spark.createDataFrame(rows, "id BIGINT, p STRING, q STRING, i INT, l BIGINT")
    subsets = [["p", "q"], ["p"], ["i"], ["l"]]
    got = {r[0]: list(r[1:]) for r in df.select(
        "id", *(row_state_expr(df.schema, c).alias(f"h{k}") for k, c in enumerate(subsets))).collect()}
    pq, p, i, lg = ([got[r][k] for r in (1, 2, 3, 4)] for k in range(4))
    assert pq[0] != pq[1]  # ('a', null) vs (null, 'a')
    assert p[2] != p[3] and pq[2] != pq[3]  # '' vs null
    assert i[0] != lg[0]  # int 3 vs long 3
    table = pa.table({"id": pa.array([1, 2, 3, 4], pa.int64()), "p": ["a", None, "", None],
                      "q": [None, "a", None, None], "i": pa.array([3] * 4, pa.int32()),
                      "l": pa.array([3] * 4, pa.int64())})
    assert [row_states(table, c) for c in subsets] == [pq, p, i, lg]


def test_map_column_refused(hostile):
    """A map's state is Spark's hash of its JSON text, which only Spark reproduces exactly."""
    from deltalake import DeltaTable

    table = DeltaTable(hostile[0]).to_pyarrow_table()
    with pytest.raises(TypeError, match="'m'"):
        row_states(table, ["s", "m"])
