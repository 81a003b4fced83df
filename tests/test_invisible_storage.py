"""A Spark Connect client that cannot see the storage (Databricks Connect, serverless): the tables live
where only the server reads them.

The constraint is reproduced, not assumed: each client process runs in a private mount namespace
(`unshare -m`) with an empty tmpfs mounted over the data folder, so every local probe the client makes
(delta-rs, `os.path`) finds nothing there, while the Connect server (the tests' JVM) reads the real
folder. "Cannot see it" must never become "it does not exist".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from jobutil import delta_versions, rows_for, run, summary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                       reason="needs unshare -m (root) to hide the storage from the client"),
]

SCHEMA = "id long, category string, text string"


def hidden(folder: str, cmd: list[str]) -> list[str]:
    """`cmd` in a private mount namespace where `folder` is an empty tmpfs."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
            folder, *cmd]


def client_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--remote", url, "--progress-interval", "0", *args]


@pytest.fixture
def lake(spark, tmp_path):
    folder = tmp_path / "lake"
    folder.mkdir()
    inp = str(folder / "in")
    rows = rows_for("books", 0, 10) + rows_for("music", 100, 8) + rows_for("toys", 200, 6)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    return str(folder), inp, str(folder / "out"), rows


def test_the_client_really_cannot_see_the_folder(lake):
    folder, inp, _, _ = lake
    r = subprocess.run(hidden(folder, [sys.executable, "-c", f"import os; print(os.listdir({folder!r}))"]),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    assert os.listdir(inp)  # while this process (and the server) sees the table


def test_incremental_job_from_a_client_that_cannot_see_the_storage(spark, connect_url, lake, tiny_bert, tmp_path):
    folder, inp, out, rows = lake
    job = ["--input", inp, "--output", out, "--model", tiny_bert]

    def score(name: str, *extra: str) -> dict:
        js = str(tmp_path / f"{name}.json")  # outside the hidden folder: the client writes it
        r = run(hidden(folder, client_cmd(connect_url, *job, "--summary-json", js, *extra)))
        assert r.returncode == 0, r.stdout[-4000:]
        return summary(js)

    s1 = score("first")
    assert s1["status"] == "succeeded" and len(s1["units_committed"]) == 3 and s1["rows_scored"] == len(rows)
    assert spark.read.format("delta").load(out).count() == len(rows)
    # each unit's files state was read through the session (file metadata, no rows): what lets the
    # next plan skip reading the rows of an unchanged unit
    assert spark.read.format("delta").load(out).where("input_files IS NULL").count() == 0

    # a rerun finds the table the client cannot see: nothing to do, nothing committed
    version = delta_versions(out)[-1]
    s2 = score("noop")
    assert s2["units_committed"] == [] and s2["plan"]["units_done"] == 3, s2["plan"]
    assert delta_versions(out)[-1] == version

    # a new partition is the only work
    spark.createDataFrame(rows_for("garden", 300, 5), SCHEMA).write.format("delta").mode("append").save(inp)
    s3 = score("new")
    assert s3["units_committed"] == ["category=garden"] and s3["plan"]["units_done"] == 3, s3["plan"]
    assert delta_versions(out)[-1] == version + 1
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) + 5 == res.select("id").distinct().count()

    # a compaction of the input: hashed once, found unchanged, its new files recorded through the session
    spark.sql(f"OPTIMIZE delta.`{inp}`")
    s4 = score("compacted")
    assert s4["units_committed"] == [] and s4["plan"]["units_done"] == 4, s4["plan"]
    assert delta_versions(out)[-1] == version + 1
    recorded = delta_versions(out + "_unit_files")[-1]
    assert spark.read.format("delta").load(out + "_unit_files").count() > 0  # the units OPTIMIZE rewrote
    s5 = score("noop2")  # the records read through the session: nothing hashed, so nothing recorded again
    assert s5["units_committed"] == [] and delta_versions(out + "_unit_files")[-1] == recorded

    # row grain: two rows' text changed and one row deleted: the diff and the kept rows read through
    # the session alone (the output at the plan's version), only the two rows scored
    from delta.tables import DeltaTable

    t = DeltaTable.forPath(spark, inp)
    t.update("id IN (1, 101)", {"text": "concat(text, ' revised')"})
    t.delete("id = 2")
    s6 = score("rows")
    assert s6["rows_scored"] == 2 and (s6["plan"]["rows_changed"], s6["plan"]["rows_deleted"]) == (2, 1), s6["plan"]
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) + 5 - 1 == res.select("id").distinct().count()
    assert {r.id for r in res.where(f"run_id = '{s6['run_id']}'").collect()} == {1, 101}


def test_a_foreign_table_the_client_cannot_see_is_refused_untouched(spark, connect_url, lake, tiny_bert, tmp_path):
    folder, inp, _, _ = lake
    foreign = os.path.join(folder, "foreign")
    spark.createDataFrame([(1, "x")], "id long, note string").write.format("delta").save(foreign)
    before = delta_versions(foreign)
    js = str(tmp_path / "foreign.json")
    r = run(hidden(folder, client_cmd(connect_url, "--input", inp, "--output", foreign, "--model", tiny_bert,
                                      "--summary-json", js)))
    assert r.returncode == 2, r.stdout[-4000:]
    assert "existing table does not match this job" in r.stdout
    assert delta_versions(foreign) == before
    assert [tuple(x) for x in spark.read.format("delta").load(foreign).collect()] == [(1, "x")]


def test_files_read_through_the_session_match_the_log(spark, lake):
    """The same units, rows and file counts from the scan's file metadata as from the Delta log."""
    from spark_infer.inputs import InputTable
    from spark_infer.units import UnitColumn

    _, inp, _, _ = lake
    spark.sql(f"DELETE FROM delta.`{inp}` WHERE id = 3")  # rows the log and the scan must both leave out
    cols = [UnitColumn("category", "string")]
    by_log = InputTable(inp)
    assert by_log.read_log()
    by_session = InputTable(inp)
    by_session.read_spark(spark)
    by_session.log = None  # as for a client that cannot read the log
    want, got = by_log.files_by_unit(cols), by_session.files_by_unit(cols, spark)
    assert {k: (u.rows, len(u.lines)) for k, u in got.items()} == {k: (u.rows, len(u.lines)) for k, u in want.items()}
    assert got[("books",)].rows == 9
    assert by_session.all_files(spark).rows == sum(u.rows for u in want.values())
