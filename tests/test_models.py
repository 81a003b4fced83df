"""Models from where teams keep them: MLflow registry and runs, object storage (file://, memory://, an
S3-compatible server), pinned hub revisions, shipped to every executor once per node; fingerprints
that do not re-read gigabytes."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid

import numpy as np
import pytest
from jobutil import env, rows_for, run, summary
from tiny_models import make_tiny_bert, make_tiny_classifier

from spark_infer import run_job
from spark_infer.errors import ConfigError, ModelMismatchError
from spark_infer.models import resolve_model
from spark_infer.models.cache import downloads
from spark_infer.runtime import RuntimeOptions, score_stream
from spark_infer.runtime.spec import make_spec

SCHEMA = "id long, category string, text string"
TEXTS = ["good great product", "bad terrible service", "the movie was fine", "love this phone battery"]


def embed_direct(model_dir: str, texts=TEXTS) -> np.ndarray:
    out, _ = next(score_stream(make_spec("embed", model_dir), RuntimeOptions(), [list(texts)]))
    return np.array(out.to_pylist())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh node-local cache (models, hashes) for the test."""
    d = tmp_path / "node-cache"
    monkeypatch.setenv("SPARK_INFER_CACHE", str(d))
    return d


@pytest.fixture
def small_input(spark, tmp_path):
    inp = str(tmp_path / "in")
    rows = rows_for("books", 0, 6) + rows_for("toys", 100, 5)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    return inp, rows


# -- fingerprints ---------------------------------------------------------------------------------------
def test_a_local_folder_is_hashed_once_then_fingerprinted_from_the_disk_cache(tmp_path, cache):
    from spark_infer.models import fingerprint

    model = make_tiny_bert(str(tmp_path / "m"))
    with open(os.path.join(model, "big.bin"), "wb") as f:  # a 1 GiB file (sparse: no disk used)
        f.truncate(1 << 30)
    t0 = time.perf_counter()
    first = resolve_model(model)
    cold = time.perf_counter() - t0
    fingerprint._file_hash_memo.clear()  # as in a new process: only the disk cache is left
    t0 = time.perf_counter()
    second = resolve_model(model)
    warm = time.perf_counter() - t0
    print(f"fingerprint of a 1 GiB folder: first {cold:.2f}s, second {warm:.3f}s, ratio {warm / cold:.4f}")
    assert first.identity == second.identity
    assert warm < 1.0 and warm < cold / 10, (cold, warm)
    with open(os.path.join(model, "config.json"), "a") as f:
        f.write(" ")
    assert resolve_model(model).identity != first.identity  # changed content: a new fingerprint


# -- object storage ----------------------------------------------------------------------------------
def test_file_url_model_is_downloaded_once_and_scored(spark, tmp_path, cache, small_input):
    model = make_tiny_bert(str(tmp_path / "store" / "tiny"))
    url = "file://" + model
    snap = resolve_model(url)
    assert snap.source == "storage" and snap.reference == url
    s = run_job({"input": small_input[0], "output": str(tmp_path / "out"), "model": url})
    assert s.exit_code == 0 and s.model == url, s.error
    got = {r.text: np.array(r.embedding) for r in spark.read.format("delta").load(str(tmp_path / "out"))
           .join(spark.read.format("delta").load(small_input[0]), "id").select("text", "embedding").collect()}
    want = embed_direct(model, list(got))
    np.testing.assert_allclose(np.array(list(got.values())), want, atol=1e-5)
    # a changed object (its size or mtime) is a changed model
    shutil.copy(os.path.join(model, "config.json"), os.path.join(model, "extra.json"))
    assert resolve_model(url).identity != snap.identity


def test_memory_filesystem_model_snapshot_and_local_copy(tmp_path, cache):
    import fsspec

    model = make_tiny_bert(str(tmp_path / "tiny"))
    fs = fsspec.filesystem("memory")
    root = f"/models/{uuid.uuid4().hex}"
    fs.put(model + "/", root + "/", recursive=True)
    snap = resolve_model(f"memory://{root}")
    assert {rel for rel, _ in snap.manifest} == set(os.listdir(model))
    a = snap.local_dir()
    b = snap.local_dir()  # cached: downloaded once on this machine
    assert a == b and len(downloads(snap)) == 1
    np.testing.assert_allclose(embed_direct(a), embed_direct(model), atol=1e-6)
    with pytest.raises(ConfigError):
        resolve_model(f"memory://{root}/nope")


def test_bad_references_are_config_errors_naming_what_was_tried(spark, tmp_path, small_input, cache):
    cases = {
        "foo://bucket/model": "foo://",
        "memory:///no/such/folder": "no config.json",
        "models:/": "models:/<name>",
    }
    for ref, needle in cases.items():
        s = run_job({"input": small_input[0], "output": str(tmp_path / "out"), "model": ref})
        assert s.exit_code == 2 and needle in s.error, (ref, s.error)
    assert not os.path.exists(tmp_path / "out")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 (moto) with a bucket; skipped where it does not install."""
    pytest.importorskip("s3fs", reason="s3fs (spark-infer[s3]) is not installed")
    server_mod = pytest.importorskip("moto.server", reason="moto[s3] + flask (spark-infer[test]) are not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    creds = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}
    env = pytest.MonkeyPatch()  # module-scoped: the function-scoped monkeypatch fixture cannot be used
    for k, v in creds.items():
        env.setenv(k, v)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=creds["AWS_ENDPOINT_URL"])
    fs.mkdir("spark-infer-models")
    model = make_tiny_bert(str(tmp_path_factory.mktemp("s3src") / "tiny"))
    fs.put(model + "/", "spark-infer-models/tiny/", recursive=True)
    try:
        yield {"url": "s3://spark-infer-models/tiny", "env": creds, "local": model}
    finally:
        env.undo()
        server.stop()


# -- pinned hub revisions ----------------------------------------------------------------------------
def fake_hub_cache(base: str, repo: str, commits: dict[str, str], main: str) -> str:
    """A Hugging Face cache folder with snapshots of `repo` at `commits` ({commit: model folder})."""
    folder = os.path.join(base, "models--" + repo.replace("/", "--"))
    for commit, src in commits.items():
        shutil.copytree(src, os.path.join(folder, "snapshots", commit))
    os.makedirs(os.path.join(folder, "refs"), exist_ok=True)
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(main)
    return base


def test_a_hub_id_is_pinned_to_a_commit_and_workers_load_exactly_it(tmp_path, monkeypatch):
    a, b = "a" * 40, "b" * 40
    hub = fake_hub_cache(str(tmp_path / "hub"), "acme/tiny", {
        a: make_tiny_bert(str(tmp_path / "va"), seed=1), b: make_tiny_bert(str(tmp_path / "vb"), seed=2)}, main=b)
    monkeypatch.setenv("HF_HUB_CACHE", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    latest = resolve_model("acme/tiny")
    assert latest.revision == b and latest.reference == f"acme/tiny@{b}"
    pinned = make_spec("embed", "acme/tiny", revision=a)
    assert pinned.snapshot.revision == a and pinned.fingerprint != make_spec("embed", "acme/tiny").fingerprint
    got = embed_direct_spec(pinned)
    np.testing.assert_allclose(got, embed_direct(str(tmp_path / "va")), atol=1e-6)
    # a worker whose hub cache lacks that commit fails instead of loading another revision
    shutil.rmtree(os.path.join(hub, "models--acme--tiny", "snapshots", a))
    from spark_infer.runtime import MODEL_CACHE

    MODEL_CACHE.clear()
    with pytest.raises(ModelMismatchError, match=a):
        embed_direct_spec(pinned)


def embed_direct_spec(spec) -> np.ndarray:
    out, _ = next(score_stream(spec, RuntimeOptions(), [TEXTS]))
    return np.array(out.to_pylist())


# -- MLflow registry -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory, minilm_dir):
    """A local MLflow tracking + registry store (sqlite + an artifact folder) with MiniLM (the
    sentence_transformers flavor, v1 and v2, alias `champion` on v1), a tiny classifier (the
    transformers flavor) and a custom predictor's folder logged as plain run artifacts."""
    mlflow = pytest.importorskip("mlflow", reason="MLflow (spark-infer[mlflow]) is not installed")
    base = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{base}/mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.create_experiment("spark-infer", artifact_location=str(base / "artifacts"))
    mlflow.set_experiment("spark-infer")
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    st = SentenceTransformer(minilm_dir)
    for _ in range(2):
        mlflow.sentence_transformers.log_model(st, name="minilm", registered_model_name="minilm",
                                               pip_requirements=["sentence-transformers"])
    client = mlflow.MlflowClient()
    client.set_registered_model_alias("minilm", "champion", "1")
    clf_dir = make_tiny_classifier(str(base / "clf"))
    mlflow.transformers.log_model(
        transformers_model={"model": AutoModelForSequenceClassification.from_pretrained(clf_dir),
                            "tokenizer": AutoTokenizer.from_pretrained(clf_dir)},
        task="text-classification", name="clf", registered_model_name="tiny_clf",
        pip_requirements=["transformers", "torch"])
    predictor = base / "predictor"
    predictor.mkdir()
    (predictor / "predictor.json").write_text('{"version": 1}')
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(predictor), artifact_path="length_model")
    try:
        yield {"uri": uri, "run_id": run.info.run_id, "clf_dir": clf_dir, "client": client}
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def test_registry_alias_resolves_to_a_version_that_lineage_records(spark, registry, tmp_path, cache, small_input,
                                                                    minilm_dir):
    inp, rows = small_input
    out = str(tmp_path / "out")
    s = run_job({"input": inp, "output": out, "model": "models:/minilm@champion"})
    assert s.exit_code == 0, s.error
    assert s.model == "models:/minilm/1"
    lineage = {r.model for r in spark.read.format("delta").load(out).select("model").distinct().collect()}
    assert lineage == {"models:/minilm/1"}
    got = spark.read.format("delta").load(out).join(spark.read.format("delta").load(inp), "id")
    got = {x.text: np.array(x.embedding) for x in got.select("text", "embedding").collect()}
    np.testing.assert_allclose(np.array(list(got.values())), embed_direct(minilm_dir, list(got)), atol=1e-5)
    again = run_job({"input": inp, "output": out, "model": "models:/minilm/1"})
    assert again.units_committed == [] and again.plan["units_done"] == 2  # the same version: done
    # moving the alias is a model change the plan shows
    registry["client"].set_registered_model_alias("minilm", "champion", "2")
    try:
        moved = run_job({"input": inp, "output": out, "model": "models:/minilm@champion", "dry_run": True})
        assert moved.model == "models:/minilm/2" and moved.plan["units_model_changed"] == 2
    finally:
        registry["client"].set_registered_model_alias("minilm", "champion", "1")


def test_transformers_flavor_classifier_from_the_registry(spark, registry, cache):
    from spark_infer import predict_udf

    cls = predict_udf("classify", model="models:/tiny_clf/1", return_all_scores=True)
    assert cls.spec.snapshot.revision == "tiny_clf/1"
    df = spark.createDataFrame([(i, t) for i, t in enumerate(TEXTS)], "id long, text string")
    got = {r.id: r.c for r in df.select("id", cls("text").alias("c")).collect()}
    want, _ = next(score_stream(make_spec("classify", registry["clf_dir"], return_all_scores=True),
                                RuntimeOptions(), [TEXTS]))
    for i, w in enumerate(want.to_pylist()):
        assert got[i].label == w["label"] and got[i].score == pytest.approx(w["score"], abs=1e-6)


def test_runs_uri_custom_predictor_folder(spark, registry, tmp_path, cache, small_input):
    inp, rows = small_input
    ref = f"runs:/{registry['run_id']}/length_model"
    s = run_job({"input": inp, "output": str(tmp_path / "out"), "task": "custom", "model": ref,
                 "task_options": {"predictor": "predictors:TextLength", "columns": ["text"]}})
    assert s.exit_code == 0, s.error
    got = {r.id: r.prediction for r in spark.read.format("delta").load(str(tmp_path / "out")).collect()}
    assert got == {i: len(t) for i, _, t in rows}


def test_registry_errors_are_config_errors(spark, registry, tmp_path, small_input, monkeypatch, cache):
    inp = small_input[0]
    cases = {
        "models:/minilm/99": "minilm, version=99",
        "models:/minilm@nope": "alias nope",
        "models:/no_such_model/1": "no_such_model",
        f"runs:/{registry['run_id']}/missing": "no artifacts",
    }
    for ref, needle in cases.items():
        s = run_job({"input": inp, "output": str(tmp_path / "out"), "model": ref})
        assert s.exit_code == 2 and needle in s.error, (ref, s.error)
    import mlflow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # a registry nobody answers at
    mlflow.set_registry_uri("http://127.0.0.1:9")
    t0 = time.monotonic()
    try:
        s = run_job({"input": inp, "output": str(tmp_path / "out"), "model": "models:/minilm/1"})
    finally:
        mlflow.set_tracking_uri(registry["uri"])
        mlflow.set_registry_uri(registry["uri"])
    assert s.exit_code == 2 and "127.0.0.1:9" in s.error and time.monotonic() - t0 < 60, s.error
    assert not os.path.exists(tmp_path / "out")


# -- shipping: no shared disk, one download per node ----------------------------------------------------------
@pytest.mark.slow
def test_workers_download_an_s3_model_once_per_node(s3, tmp_path):
    """Two standalone workers, each its own "node" (its own cache folder); the model is only in S3 and
    the credentials only in the environment. Each node downloads it once and converts it (OpenVINO)
    once, whatever number of its Python workers start at once."""
    import pyarrow as pa
    from cluster import QUICK_JVM_OPTS, standalone_cluster
    from deltalake import DeltaTable, write_deltalake

    inp = str(tmp_path / "in")
    rows = [r for k, c in enumerate(["a", "b", "c", "d"]) for r in rows_for(c, 100 * k, 6)]
    write_deltalake(inp, pa.table({"id": pa.array([r[0] for r in rows], pa.int64()), "category": [r[1] for r in rows],
                                   "text": [r[2] for r in rows]}), partition_by=["category"])
    nodes = [str(tmp_path / "node0"), str(tmp_path / "node1")]
    with standalone_cluster(str(tmp_path / "cluster"), cores=2, memory="2g", gpus=("0",),
                            worker_envs=[{"SPARK_INFER_CACHE": n, **s3["env"]} for n in nodes]) as c:
        out, js = str(tmp_path / "out"), str(tmp_path / "s.json")
        cmd = [sys.executable, "-m", "spark_infer", "score", "--master", c.url, "--input", inp, "--output", out,
               "--model", s3["url"], "--summary-json", js, "--group-units", "1", "--concurrent-units", "2",
               # converted once per node too, beside the node's model cache (spark_infer.backends)
               "--option", "backend=openvino",
               # one executor per node with two task slots: two Python workers of one node race for the
               # download (the lock), without four executor JVMs on a 2-core machine
               "--conf", "spark.executor.cores=2", "--conf", "spark.executor.memory=1g",
               "--conf", f"spark.executor.extraJavaOptions={QUICK_JVM_OPTS}",
               "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1"]
        e = {**c.env(env()), **s3["env"], "SPARK_INFER_CACHE": str(tmp_path / "driver-cache")}
        # `run` kills the driver's process group; leaving the block stops the cluster and then kills, by
        # pid, whatever still carries its marker (executors, Python workers, a straggling driver child).
        # (A kill_marked here, with the master and workers alive and marked, always waited its whole
        # 10 s grace and then SIGKILLed the daemons.)
        r = run(cmd, env_vars=e, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "testing" not in r.stdout  # the credentials (from the environment) are never printed
    s = summary(js)
    assert s["model"] == s3["url"] and len(s["units_committed"]) == 4
    records = {}
    for n in nodes:
        logs = [f for f in os.listdir(os.path.join(n, "models")) if f.endswith(".downloads")]
        records[n] = sum(len(open(os.path.join(n, "models", f)).read().splitlines()) for f in logs)
    assert records == {nodes[0]: 1, nodes[1]: 1}, records  # each node downloaded it once
    conversions = {n: sorted(line.split()[3] for f in os.listdir(os.path.join(n, "converted"))
                             if f.endswith(".conversions") for line in open(os.path.join(n, "converted", f)))
                   for n in nodes}
    assert conversions == {n: ["onnx", "openvino-fp32"] for n in nodes}, conversions  # and converted it once
    assert not os.path.exists(os.path.join(tmp_path, "driver-cache", "converted"))  # the driver converts nothing
    assert not os.path.exists(os.path.join(tmp_path, "driver-cache", "models")) or not [
        f for f in os.listdir(os.path.join(tmp_path, "driver-cache", "models")) if f.endswith(".downloads")]
    got = DeltaTable(out).to_pyarrow_table(columns=["id", "embedding"]).to_pylist()
    assert len(got) == len(rows) and all(len(g["embedding"]) == 32 for g in got)
    texts = {r[0]: r[2] for r in rows}  # the same weights as the folder that was uploaded
    np.testing.assert_allclose(np.array([g["embedding"] for g in got]),
                               embed_direct(s3["local"], [texts[g["id"]] for g in got]), atol=1e-5)
