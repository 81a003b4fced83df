"""Unity Catalog: three-part table names (tested through Spark's own `spark_catalog.<schema>.<table>`),
one table reached by name and by path, models in `/Volumes/...`, and models in a Unity Catalog
registry read through MLflow's artifact API only."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from jobutil import rows_for

from spark_infer import run_job
from spark_infer.errors import ConcurrentRunError
from spark_infer.tables import TableRef, quote_name

SCHEMA = "id long, category string, text string"


@pytest.fixture
def schema(spark):
    """A schema of its own in the session catalog (the shared session outlives the test)."""
    name = f"si_uc_{uuid.uuid4().hex[:8]}"
    spark.sql(f"CREATE SCHEMA spark_catalog.{name}")
    try:
        yield name
    finally:
        spark.sql(f"DROP SCHEMA IF EXISTS spark_catalog.{name} CASCADE")


def versions(spark, name: str) -> int:
    return int(spark.sql(f"DESCRIBE HISTORY {quote_name(name)} LIMIT 1").first()["version"])


# -- names ------------------------------------------------------------------------------------------------
def test_names_and_paths_are_told_apart_without_asking_the_filesystem(tmp_path, monkeypatch):
    from spark_infer.tables import normalize_location, split_name

    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.shop.products").mkdir()  # a folder that happens to be called like the table
    (tmp_path / "products").mkdir()
    for name in ("main.shop.products", "products", "spark_catalog.s.t_runs", "main.`my-shop`.`a/b`"):
        assert not TableRef(name).is_path, name
    for path in ("./products", "/data/x", "data/x", "~/x", "s3://b/x", "file:/tmp/x", "dbfs:/mnt/x",
                 "abfss://c@a.dfs.core.windows.net/x"):
        assert TableRef(path).is_path, path
    assert TableRef("file:/tmp/x/").location == "/tmp/x" and TableRef("dbfs:/mnt/x").location == "dbfs:/mnt/x"
    # quoting: each part once, backquotes kept inside parts, a suffix after a quoted part (the runs
    # table's default name `<output>_runs`) is part of it
    assert split_name("main.`my-shop`.`a.b`") == ["main", "my-shop", "a.b"]
    assert quote_name("main.shop.`my-table`" + "_runs") == "`main`.`shop`.`my-table_runs`"
    assert quote_name("`a``b`.c") == "`a``b`.`c`"
    assert TableRef("main.shop.my-table").sql_name == "`main`.`shop`.`my-table`"
    for bad in ("a..b", "`a", "a."):
        with pytest.raises(ValueError):
            split_name(bad)
    # one spelling per location: what DESCRIBE DETAIL says and what a user types
    assert {normalize_location(x) for x in ("file:/tmp/w/t", "file:///tmp/w/t/", "/tmp/w/t", "/tmp/w/./t")} == {
        "/tmp/w/t"}
    assert normalize_location("S3://b/x/") == "s3://b/x"


def test_three_part_names_for_input_output_and_runs_table(spark, schema, tiny_bert):
    # the output written the way names that need quoting are (`main`.`my-shop`.`emb`): its runs table,
    # `<output>_runs` by default, is `spark_catalog`.`<schema>`.`product_emb_runs`
    inp, out = f"spark_catalog.{schema}.products", f"`spark_catalog`.`{schema}`.`product_emb`"
    runs = f"spark_catalog.{schema}.product_emb_runs"
    rows = rows_for("books", 0, 10) + rows_for("toys", 50, 8)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").saveAsTable(inp)
    job = {"input": inp, "output": out, "model": tiny_bert}
    s = run_job(job, spark=spark)
    assert s.exit_code == 0, s.error
    assert sorted(s.units_committed) == ["category=books", "category=toys"]
    assert spark.table(out).count() == len(rows)
    assert spark.table(runs).count() == 1  # the runs table: a three-part name beside the output
    v = versions(spark, out)
    again = run_job(job, spark=spark)
    assert again.exit_code == 0 and again.units_committed == [] and again.plan["units_done"] == 2
    assert versions(spark, out) == v  # a rerun commits nothing
    spark.createDataFrame(rows_for("garden", 200, 6), SCHEMA).write.format("delta").mode("append") \
        .saveAsTable(inp)
    more = run_job(job, spark=spark)
    assert more.exit_code == 0 and more.units_committed == ["category=garden"], more.units_committed
    assert spark.table(out).count() == len(rows) + 6
    assert spark.table(runs).count() == 3


def test_an_output_reached_by_name_and_by_path_is_one_table(spark, tmp_path, schema, tiny_bert):
    inp = str(tmp_path / "in")
    rows = rows_for("books", 0, 10) + rows_for("toys", 50, 8)
    spark.createDataFrame(rows, SCHEMA).write.format("delta").partitionBy("category").save(inp)
    name = f"spark_catalog.{schema}.emb"
    by_name = run_job({"input": inp, "output": name, "model": tiny_bert}, spark=spark)
    assert by_name.exit_code == 0 and len(by_name.units_committed) == 2, by_name.error
    location = spark.sql(f"DESCRIBE DETAIL {quote_name(name)}").first()["location"]  # file:/.../emb
    assert location.startswith("file:")
    v = versions(spark, name)
    by_path = run_job({"input": inp, "output": location, "model": tiny_bert, "record_runs": False}, spark=spark)
    assert by_path.exit_code == 0 and by_path.units_committed == [] and by_path.plan["units_done"] == 2
    assert versions(spark, name) == v

    # the same units are the same Delta application ids whichever way the table is named
    from spark_infer.sinks.delta import DeltaOutput

    sinks = [DeltaOutput(spark, ref) for ref in (name, location, location.removeprefix("file:"))]
    assert len({s.app_id("category=books") for s in sinks}) == 1
    # so two runs that planned at one version, one by name and one by path, cannot both write a unit:
    # Delta skips the second writer's commit (same txnAppId and txnVersion)
    df = spark.table(quote_name(name)).where("category = 'books'")
    df = spark.createDataFrame(df.collect(), df.schema)
    landed = sinks[0].write_units(df, "category = 'books'", "category=books", v, "run-by-name")
    assert landed == v + 1
    with pytest.raises(ConcurrentRunError):
        sinks[2].write_units(df, "category = 'books'", "category=books", v, "run-by-path")
    assert versions(spark, name) == v + 1


# -- MLflow models in the Unity Catalog registry ----------------------------------------------------------
@pytest.fixture
def uc_registry(tmp_path, monkeypatch, tiny_bert):
    """A Databricks workspace on 127.0.0.1 whose Unity Catalog registry holds `main.ml.tiny` v1
    (alias `champion`): its storage location is unreadable here, only the platform serves the files."""
    pytest.importorskip("mlflow", reason="MLflow (spark-infer[mlflow]) is not installed")
    pytest.importorskip("databricks.sdk", reason="databricks-sdk (pulled in by mlflow-skinny) is not installed")
    from uc_workspace import uc_workspace

    with uc_workspace(str(tmp_path / "workspace"), token="dapi-test") as ws:
        ws.register("main.ml.tiny", tiny_bert, aliases=("champion",))
        for k, v in {"DATABRICKS_HOST": ws.host, "DATABRICKS_TOKEN": "dapi-test",
                     "MLFLOW_REGISTRY_URI": "databricks-uc", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                     "SPARK_INFER_CACHE": str(tmp_path / "driver-cache")}.items():
            monkeypatch.setenv(k, v)
        # no tracking URI: on a Databricks registry it is `databricks` (the same workspace)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        # as in a fresh process (other tests set them): restored when the test ends
        monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
        monkeypatch.setattr(registry_utils, "_registry_uri", None)
        yield ws


def test_a_unity_catalog_model_is_read_through_the_artifact_api_never_its_storage(uc_registry, tmp_path,
                                                                                   monkeypatch, tiny_bert):
    import numpy as np

    from spark_infer.models import resolve_model
    from spark_infer.models.cache import downloads
    from spark_infer.runtime import RuntimeOptions, score_stream
    from spark_infer.runtime.spec import make_spec

    ws = uc_registry
    storage = ws.models["main.ml.tiny"]["1"]["storage_location"]
    snap = resolve_model("models:/main.ml.tiny@champion")  # the driver: registry calls, a listing
    assert snap.reference == "models:/main.ml.tiny/1" and snap.revision == "main.ml.tiny/1"
    assert {rel for rel, _ in snap.manifest} == {"config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json"}
    assert storage.removeprefix("file://") not in snap.locator  # workers are never sent the raw location
    # a worker: its own cache, no registry URI of its own (it travels with the snapshot)
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "worker-cache"))
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    ws.requests.clear()
    folder = snap.local_dir()
    assert snap.local_dir() == folder and len(downloads(snap)) == 1
    got = [p for m, p in ws.requests if m == "GET" and p.startswith("/api/2.0/fs/files/")]
    assert sorted(p.rsplit("/", 1)[1] for p in got) == sorted(rel for rel, _ in snap.manifest), ws.requests
    texts = ["good great product", "bad terrible service"]
    spec = make_spec("embed", tiny_bert)
    want, _ = next(score_stream(spec, RuntimeOptions(), [texts]))
    got_emb, _ = next(score_stream(make_spec("embed", folder), RuntimeOptions(), [texts]))
    np.testing.assert_allclose(np.array(got_emb.to_pylist()), np.array(want.to_pylist()), atol=1e-6)


# -- models in Unity Catalog volumes -----------------------------------------------------------------------
def _mounted_volumes(store: str, cmd: list[str]) -> list[str]:
    """`cmd` in a private mount namespace where `store` is mounted at /Volumes (as a Databricks driver
    sees its volumes); every other process on this machine sees no volume there."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /Volumes && exec "$@"',
            store, *cmd]


@pytest.fixture
def volumes_mount_point():
    """/Volumes as an empty folder (removed after, when this test made it): the mount point the driver's
    namespace mounts the volume store on."""
    import os
    import shutil

    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare -m (root) to mount a volume for one process only")
    made = not os.path.exists("/Volumes")
    os.makedirs("/Volumes", exist_ok=True)
    try:
        yield "/Volumes"
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.rmdir("/Volumes")


def test_a_volume_model_seen_by_the_driver_is_fetched_by_workers_that_do_not_see_it(
        tmp_path, monkeypatch, tiny_bert, volumes_mount_point):
    """The driver sees `/Volumes/main/ml/models/tiny` as a mounted folder; a worker (this process) has no
    such mount and gets the files through the workspace's Files API, once per node, checked against the
    driver's manifest. A client that does not see the mount resolves the model the same way."""
    import os
    import pickle
    import shutil
    import subprocess
    import sys

    import numpy as np
    from uc_workspace import uc_workspace

    from spark_infer.models import resolve_model
    from spark_infer.models.cache import downloads
    from spark_infer.runtime import RuntimeOptions, score_stream
    from spark_infer.runtime.spec import make_spec

    pytest.importorskip("databricks.sdk", reason="databricks-sdk (pulled in by mlflow-skinny) is not installed")
    store = tmp_path / "volume-store"  # what Unity Catalog keeps under /Volumes
    shutil.copytree(tiny_bert, store / "main" / "ml" / "models" / "tiny")
    ref = "/Volumes/main/ml/models/tiny"
    assert not os.path.exists(ref)  # not on this machine: only in the driver's namespace
    out = tmp_path / "snapshot.pickle"
    code = ("import pickle, sys; from spark_infer.models import resolve_model; "
            f"pickle.dump(resolve_model({ref!r}), open({str(out)!r}, 'wb'))")
    e = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}  # the driver reads the mount
    r = subprocess.run(_mounted_volumes(str(store), [sys.executable, "-c", code]), capture_output=True,
                       text=True, timeout=300, env={**e, "SPARK_INFER_CACHE": str(tmp_path / "driver-cache")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out, "rb") as f:
        snap = pickle.load(f)
    assert snap.source == "storage" and snap.reference == ref
    assert {rel for rel, _ in snap.manifest} == set(os.listdir(tiny_bert))

    (tmp_path / "workspace").mkdir()
    os.symlink(store, tmp_path / "workspace" / "Volumes")  # the workspace serves the same volume
    with uc_workspace(str(tmp_path / "workspace"), token="dapi-test") as ws:
        monkeypatch.setenv("DATABRICKS_HOST", ws.host)
        monkeypatch.setenv("DATABRICKS_TOKEN", "dapi-test")
        monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "worker-cache"))
        folder = snap.local_dir()  # a worker: no mount, no shared disk
        assert snap.local_dir() == folder and len(downloads(snap)) == 1
        got = sorted(p for m, p in ws.requests if m == "GET" and p.startswith("/api/2.0/fs/files/"))
        assert got == sorted(f"/api/2.0/fs/files{ref}/{rel}" for rel, _ in snap.manifest), ws.requests
        texts = ["good great product", "bad terrible service"]
        want, _ = next(score_stream(make_spec("embed", tiny_bert), RuntimeOptions(), [texts]))
        have, _ = next(score_stream(make_spec("embed", folder), RuntimeOptions(), [texts]))
        np.testing.assert_allclose(np.array(have.to_pylist()), np.array(want.to_pylist()), atol=1e-6)
        # a client that does not see the mount (Databricks Connect) lists it through the Files API too
        remote = resolve_model(ref)
        assert remote.manifest == snap.manifest and remote.config_sha256 == snap.config_sha256
