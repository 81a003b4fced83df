"""The Delta sink tells a commit conflict by Delta's own exception classes (and, where a client has only
the server's error condition, by that condition), never by a message's text: real conflicts from two
writers racing on a real table, on a classic session and over Spark Connect."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from jobutil import run

SCHEMA = "id long, category string, text string"
ROWS = [(1, "books", "a"), (2, "music", "b")]
BOOKS = "`category` = 'books'"


def gated(df: Any, gate: str) -> Any:
    """`df` whose rows wait, inside the Spark job that writes them, until `gate`/open exists (after
    touching `gate`/started): the write's transaction has begun and cannot commit yet."""
    from pyspark.sql import functions as F

    started, release = os.path.join(gate, "started"), os.path.join(gate, "open")

    @F.udf("string")
    def wait(text):  # no type hints: pyspark would read them as a pandas UDF's
        import os
        import time

        open(started, "w").close()
        deadline = time.monotonic() + 300
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)
        return text

    return df.coalesce(1).withColumn("text", wait("text"))


def race(first: Callable[[], Any], second: Callable[[], Any], gate: str) -> BaseException | None:
    """Start `first` (a write of a `gated` frame), commit `second` while it waits, then let `first`
    try to commit: what `first` raised, or None."""
    os.makedirs(gate, exist_ok=True)
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            first()
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            errors.append(exc)

    thread = threading.Thread(target=run_first, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(os.path.join(gate, "started")):
            assert thread.is_alive() and time.monotonic() < deadline, f"the first write never started: {errors}"
            time.sleep(0.05)
        second()
    finally:
        open(os.path.join(gate, "open"), "w").close()
        thread.join(timeout=300)
    return errors[0] if errors else None


def plain_write(df: Any, path: str, predicate: str, app_id: str) -> None:
    """What the sink's write is made of, without the sink: replaceWhere plus an idempotent txn id."""
    (df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
     .option("txnAppId", app_id).option("txnVersion", "1").save(path))


@pytest.mark.slow
def test_real_concurrent_commits_are_conflicts_and_ordinary_errors_are_not(spark, tmp_path):
    from delta.exceptions import ConcurrentAppendException, ConcurrentTransactionException

    from spark_infer.errors import ConcurrentRunError
    from spark_infer.sinks.delta import DeltaOutput

    path = str(tmp_path / "out")
    spark.createDataFrame(ROWS, SCHEMA).write.format("delta").partitionBy("category").save(path)
    sink = DeltaOutput(spark, path)
    books = spark.createDataFrame([(9, "books", "new")], SCHEMA)

    # two runs planned at the same version write the same units: Delta's transaction ids collide
    v = sink.version()
    err = race(lambda: sink.write_units(gated(books, str(tmp_path / "g1")), BOOKS, "books", v, "run-a"),
               lambda: sink.write_units(books, BOOKS, "books", v, "run-b"), str(tmp_path / "g1"))
    assert isinstance(err, ConcurrentTransactionException), repr(err)
    assert sink.is_conflict(err)

    # another writer replaces overlapping rows under another id: Delta's read/write conflict
    v = sink.version()
    err = race(lambda: sink.write_units(gated(books, str(tmp_path / "g2")), BOOKS, "books", v, "run-c"),
               lambda: sink.write_units(books, "`category` IN ('books', 'music')", "books+music", v, "run-d"),
               str(tmp_path / "g2"))
    assert isinstance(err, ConcurrentAppendException), repr(err)
    assert sink.is_conflict(err)
    assert not sink.is_conflict(RuntimeError("the group failed"))
    wrapped = RuntimeError("the group failed")
    wrapped.__cause__ = err
    assert sink.is_conflict(wrapped)  # raised from a conflict
    assert sink.is_conflict(ConcurrentRunError("another run committed first"))

    # an ordinary Spark error whose message names a conflict is not one (a column named so)
    with pytest.raises(Exception) as ordinary:  # noqa: B017 - whichever class Spark raises
        sink.write_units(books, "`DELTA_CONCURRENT_APPEND_ConcurrentAppendException` = 1", "x", v, "run-e")
    assert "ConcurrentAppendException" in str(ordinary.value)
    assert not sink.is_conflict(ordinary.value)
    assert not sink.is_conflict(ValueError("io.delta.exceptions.ConcurrentWriteException DELTA_CONCURRENT_WRITE"))


CONNECT_CLIENT = """
import json, sys
from pyspark.sql import SparkSession
from test_delta_sink import BOOKS, ROWS, SCHEMA, gated, plain_write, race

url, path, gates = sys.argv[1:4]
spark = SparkSession.builder.remote(url).getOrCreate()
spark.createDataFrame(ROWS, SCHEMA).write.format("delta").partitionBy("category").save(path)
books = spark.createDataFrame([(9, "books", "new")], SCHEMA)
from spark_infer.sinks.delta import DeltaOutput, is_delta_conflict  # imports no delta.connect

# no Delta classes registered on this client yet: the server's error condition is all there is
err = race(lambda: plain_write(gated(books, gates + "/1"), path, BOOKS, "a"),
           lambda: plain_write(books, path, BOOKS, "b"), gates + "/1")
out = {"untyped": [type(err).__name__, err.getCondition(), is_delta_conflict(err)]}
sink = DeltaOutput(spark, path)  # a Connect session: Delta's classes are registered
v = sink.version()
err = race(lambda: sink.write_units(gated(books, gates + "/2"), BOOKS, "books", v, "run-a"),
           lambda: sink.write_units(books, BOOKS, "books", v, "run-b"), gates + "/2")
out["typed"] = [[c.__module__ + "." + c.__name__ for c in type(err).__mro__], sink.is_conflict(err)]
try:
    sink.write_units(books, "`DELTA_CONCURRENT_APPEND` = 1", "x", v, "run-c")
except Exception as exc:
    out["ordinary"] = [exc.getCondition(), sink.is_conflict(exc)]
print(json.dumps(out))
spark.stop()
"""


@pytest.mark.slow
def test_conflicts_over_spark_connect(spark, connect_url, tmp_path):
    # tests/ is on the client's PYTHONPATH (conftest): it imports this module's helpers
    r = run([sys.executable, "-c", CONNECT_CLIENT, connect_url, str(tmp_path / "out"), str(tmp_path / "gates")])
    assert r.returncode == 0, r.stdout[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    name, condition, conflict = got["untyped"]
    assert not name.startswith("Concurrent") and condition.startswith("DELTA_CONCURRENT_") and conflict
    mro, conflict = got["typed"]
    assert "delta.connect.exceptions.ConcurrentTransactionException" in mro and conflict
    condition, conflict = got["ordinary"]
    assert condition and not condition.startswith("DELTA_CONCURRENT") and not conflict


def _units_table(spark, path: str, n: int) -> None:
    spark.createDataFrame([(i, f"u{i}", "t") for i in range(n)], SCHEMA).write.format("delta") \
        .partitionBy("category").save(path)


@pytest.mark.slow
def test_each_commit_is_verified_from_the_commits_since_it_started(spark, tmp_path, monkeypatch):
    """Per-group bookkeeping is constant in the groups already committed: the log is opened once and
    brought up to date incrementally, and only the commits since a write began are searched for it
    (before: a full reopen and the history back to the plan, per group: quadratic over a run)."""
    from deltalake import DeltaTable

    import spark_infer.sinks._delta_commits as delta_commits
    from spark_infer.sinks.delta import DeltaOutput

    path = str(tmp_path / "out")
    _units_table(spark, path, 12)
    opened, searched = [], []
    real_open, real_history = delta_commits.open_log, DeltaTable.history
    monkeypatch.setattr(delta_commits, "open_log", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    monkeypatch.setattr(DeltaTable, "history", lambda self, limit=None: searched.append(limit) or
                        real_history(self, limit))
    sink = DeltaOutput(spark, path)
    df = spark.read.format("delta").load(path)
    versions = [sink.write_units(df.where(f"category = 'u{i}'"), f"category = 'u{i}'", f"u{i}", 0, "run-1")
                for i in range(12)]
    assert versions == list(range(1, 13))
    assert len(opened) == 1, opened
    assert max(searched) <= 2, searched  # the commits since each write began, not since the plan


def test_without_a_log_reader_a_runs_own_commits_are_not_another_run(spark, tmp_path, monkeypatch):
    """On the Spark fallback, a write of ours that did not land is an error of its own, not a
    concurrent run (before: any commit since the plan, the run's own earlier groups included, was
    taken for another run); another run's commit of the same units is one."""
    from spark_infer.errors import ConcurrentRunError
    from spark_infer.sinks.delta import DeltaOutput

    monkeypatch.setenv("SPARK_INFER_READ_DELTA_LOG", "0")
    path = str(tmp_path / "out")
    _units_table(spark, path, 3)
    sink = DeltaOutput(spark, path)
    df = spark.read.format("delta").load(path)
    for i in (0, 1):  # this run's earlier groups
        sink.write_units(df.where(f"category = 'u{i}'"), f"category = 'u{i}'", f"u{i}", 0, "run-1")
    app = sink.app_id("u2")
    mine = json.dumps({"spark_infer_run": "run-1", "app": app}, separators=(",", ":"))
    with pytest.raises(RuntimeError, match="did not commit") as err:
        sink._commits.verify(app, mine, 2, 0, "u2", "run-1")  # a write of u2 that never landed
    assert not isinstance(err.value, ConcurrentRunError)
    sink.write_units(df.where("category = 'u2'"), "category = 'u2'", "u2", 0, "run-2")  # another run
    with pytest.raises(ConcurrentRunError):
        sink._commits.verify(app, mine, 2, 0, "u2", "run-1")
