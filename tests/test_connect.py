"""Spark Connect sessions (Databricks serverless / standard compute, Databricks Connect): the UDF, the
frame path, the incremental job, SIGTERM and a notebook, each as a Connect client process against a
Connect server running in the tests' own JVM (conftest: the Spark Connect plugin on the shared session).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
from chispa import assert_df_equality
from jobutil import ROOT, delta_versions, env, kill_group, rows_for, run, start, summary, wait_for

pytestmark = pytest.mark.slow

SCHEMA = "id long, category string, text string"


def connect_cmd(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--remote", url, "--progress-interval", "0", *args]


@pytest.fixture
def tables(spark, tmp_path):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 10) + rows_for("music", 100, 8) + rows_for("toys", 200, 6)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    return inp, out, rows


def test_udf_and_frame_over_connect_equal_a_classic_session(spark, connect_url, tiny_bert, tmp_path):
    from spark_infer import predict_frame, predict_udf
    from spark_infer.udf import new_metrics_accumulator

    out = str(tmp_path / "connect.json")
    r = run([sys.executable, os.path.join(ROOT, "tests", "connect_client.py"), connect_url, out, tiny_bert])
    assert r.returncode == 0, r.stdout[-4000:]
    got = json.load(open(out))

    rows = [(i, None if i % 7 == 3 else f"good great product text number {i}" + " fine" * (i % 4)) for i in range(40)]
    df = spark.createDataFrame(rows, "id long, text string")
    embed = predict_udf("embed", model=tiny_bert, batch_size=8, return_error=True)
    want = {x.id: x.e for x in df.select("id", embed("text").alias("e")).collect()}
    acc = new_metrics_accumulator(spark)
    want_frame = {x.id: x for x in predict_frame(df, "text", "embed", model=tiny_bert, keys=["id"], batch_size=8,
                                                 metrics=acc).collect()}
    for name, got_rows, want_rows in (("udf", got["udf"], want), ("frame", got["frame"], want_frame)):
        assert [g["id"] for g in got_rows] == sorted(want_rows), name
        for g in got_rows:
            w = want_rows[g["id"]]
            assert g["error"] == w.error
            if w.prediction is None:
                assert g["prediction"] is None
            else:
                np.testing.assert_allclose(np.array(g["prediction"]), np.array(w.prediction), atol=1e-6)
    assert got["frame_columns"] == ["id", "prediction", "error"]  # no metric rows or columns leak out
    classic = {k: v for k, v in acc.value.items() if not k.startswith("placement|")}
    for metrics in (got["udf_metrics"], got["frame_metrics"]):
        for k in ("rows", "null_rows", "scored_rows", "error_rows", "tokens", "padded_tokens"):
            assert metrics[k] == classic.get(k, 0), (k, metrics, classic)
    assert got["frame_metrics"]["rows"] == 40 and got["frame_metrics"]["null_rows"] == 6


def test_incremental_job_over_connect(spark, connect_url, tables, tiny_bert, tmp_path):
    inp, out, rows = tables
    job = ["--input", inp, "--output", out, "--model", tiny_bert]
    r = run(connect_cmd(connect_url, *job, "--summary-json", str(tmp_path / "s1.json")))
    assert r.returncode == 0, r.stdout[-4000:]
    s1 = summary(str(tmp_path / "s1.json"))
    assert s1["status"] == "succeeded" and len(s1["units_committed"]) == 3 and s1["rows_scored"] == len(rows)
    assert s1["counters"]["rows"] == len(rows)  # worker counters came back without an accumulator

    # the same job on the classic session writes the same output
    from spark_infer import run_job

    classic_out = str(tmp_path / "classic")
    assert run_job({"input": inp, "output": classic_out, "model": tiny_bert}, spark=spark).exit_code == 0
    cols = ["id", "category", "error", "model_fingerprint", "input_state", "input_files"]
    a, b = spark.read.format("delta").load(out), spark.read.format("delta").load(classic_out)
    assert_df_equality(a.select(*cols), b.select(*cols), ignore_row_order=True)
    ea = {x.id: x.embedding for x in a.select("id", "embedding").collect()}
    for x in b.select("id", "embedding").collect():
        np.testing.assert_allclose(np.array(ea[x.id]), np.array(x.embedding), atol=1e-5)

    version = delta_versions(out)[-1]
    r = run(connect_cmd(connect_url, *job, "--summary-json", str(tmp_path / "s2.json")))
    assert r.returncode == 0, r.stdout[-4000:]
    s2 = summary(str(tmp_path / "s2.json"))
    assert s2["units_committed"] == [] and s2["plan"]["units_done"] == 3 and delta_versions(out)[-1] == version

    spark.createDataFrame(rows_for("garden", 300, 5), SCHEMA).write.format("delta").mode("append").save(inp)
    r = run(connect_cmd(connect_url, *job, "--summary-json", str(tmp_path / "s3.json")))
    assert r.returncode == 0, r.stdout[-4000:]
    s3 = summary(str(tmp_path / "s3.json"))
    assert s3["units_committed"] == ["category=garden"] and s3["plan"]["units_done"] == 3
    runs = spark.read.format("delta").load(out + "_runs").orderBy("started_at").collect()
    assert [x.run_id for x in runs] == [s1["run_id"], s2["run_id"], s3["run_id"]]


def test_sigterm_over_connect_interrupts_by_tag_and_the_rerun_completes(spark, connect_url, tables, tiny_bert,
                                                                        tmp_path):
    inp, out, rows = tables
    js, log = str(tmp_path / "term.json"), str(tmp_path / "term.log")
    job = ["--input", inp, "--output", out, "--model", tiny_bert, "--group-units", "1", "--concurrent-units", "1"]
    proc = start(connect_cmd(connect_url, *job, "--summary-json", js, "--progress-interval", "0.3"), log)
    try:
        assert wait_for(lambda: 1 in delta_versions(out), timeout=240), open(log).read()[-3000:]
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=120)
    finally:
        kill_group(proc)
    text = open(log).read()
    assert code == 5, text[-3000:]
    assert "event=progress" in text and "tasks_in_flight=" in text  # the server's progress reports
    s = summary(js)
    assert s["status"] == "interrupted" and 1 <= len(s["units_committed"]) < 3
    r = run(connect_cmd(connect_url, *job, "--summary-json", str(tmp_path / "rerun.json")))
    assert r.returncode == 0, r.stdout[-3000:]
    res = spark.read.format("delta").load(out)
    assert res.count() == len(rows) == res.select("id").distinct().count()


def test_custom_predictor_code_is_shipped_with_artifacts(spark, connect_url, tables, tmp_path):
    inp, out, rows = tables
    code_dir = tmp_path / "code"  # on no worker's path: only addArtifacts brings it there
    code_dir.mkdir()
    (code_dir / "shipped_model.py").write_text(
        "class Words:\n    output_type = 'int'\n    def __init__(self, device):\n        pass\n"
        "    def predict(self, df):\n        return df['text'].str.split().str.len()\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "predictor.json").write_text("{}")
    r = run(connect_cmd(connect_url, "--input", inp, "--output", out, "--task", "custom", "--model", str(model),
                        "--option", "predictor=shipped_model:Words", "--option", 'columns=["text"]',
                        "--py-files", str(code_dir / "shipped_model.py")))
    assert r.returncode == 0, r.stdout[-4000:]
    got = {x.id: x.prediction for x in spark.read.format("delta").load(out).collect()}
    assert got == {i: len(text.split()) for i, _, text in rows}


def test_notebook_runs_unchanged_over_connect(connect_url, tiny_bert, tmp_path):
    from deltalake import DeltaTable

    e = {k: v for k, v in env().items() if not k.startswith("SPARK_INFER_") or k.startswith("SPARK_INFER_DELTA")}
    out = str(tmp_path / "embeddings")
    e.update({"SPARK_REMOTE": connect_url, "SPARK_INFER_DEMO_DIR": str(tmp_path / "demo"),
              "SPARK_INFER_DEMO_ROWS": "30", "SPARK_INFER_OUTPUT": out, "SPARK_INFER_MODEL": tiny_bert,
              "SPARK_INFER_DEVICE": "cpu"})
    r = run([sys.executable, os.path.join(ROOT, "notebooks", "embeddings_to_delta.py")], env_vars=e, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "status=succeeded" in r.stdout
    assert DeltaTable(out).to_pyarrow_table(columns=["id"]).num_rows == 30


#: a Spark Connect server someone started without Delta (plain PySpark: no spark-infer in it)
_BARE_SERVER = """
import sys, time
from pyspark.sql import SparkSession
SparkSession.builder.master("local[1]").config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin") \\
    .config("spark.connect.grpc.binding.address", "127.0.0.1").config("spark.connect.grpc.binding.port", sys.argv[1]) \\
    .config("spark.ui.enabled", "false").getOrCreate()
print("ready", flush=True)
time.sleep(600)
"""


def test_a_connect_server_without_delta_names_what_to_install(tmp_path, tiny_bert, units_input):
    import socket

    from cluster import free_port

    port = free_port()
    server = start([sys.executable, "-c", _BARE_SERVER, str(port)], str(tmp_path / "server.log"))
    try:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        assert wait_for(up, timeout=120), open(tmp_path / "server.log").read()[-3000:]
        js = str(tmp_path / "s.json")
        r = run(connect_cmd(f"sc://127.0.0.1:{port}", "--input", units_input, "--output", str(tmp_path / "out"),
                            "--model", tiny_bert, "--summary-json", js),
                env_vars={**env(), "SPARK_INFER_READ_DELTA_LOG": "0"})
    finally:
        kill_group(server)
    assert r.returncode == 2, r.stdout[-4000:]
    assert "Spark Connect server" in r.stdout and "io.delta:delta-spark" in r.stdout
    assert not os.path.exists(tmp_path / "out")


def test_a_local_connect_server_started_by_the_job_has_delta(tmp_path, tiny_bert, units_input):
    """`--remote local[N]` (README's Connect example) starts a Connect server in the job's process, with Delta."""
    js = str(tmp_path / "s.json")
    r = run(connect_cmd("local[2]", "--input", units_input, "--output", str(tmp_path / "out"), "--model", tiny_bert,
                        "--summary-json", js))
    assert r.returncode == 0, r.stdout[-4000:]
    s = summary(js)
    assert s["session_kind"] == "connect" and s["status"] == "succeeded" and len(s["units_committed"]) == 6
    assert "[Stage" not in r.stdout  # a quiet server: no console progress bars


def test_resource_profiles_need_a_classic_session():
    from spark_infer.errors import ConfigError
    from spark_infer.resources import scoring_profile

    class Remote:
        remote, master = True, ""

    with pytest.raises(ConfigError, match="classic session"):
        scoring_profile(Remote(), 1, None)
    assert scoring_profile(Remote(), None, None) is None
