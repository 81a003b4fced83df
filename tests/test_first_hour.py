"""A quiet first hour: the first start says one line while Delta's jars download (Ivy's output goes to
a log file), a failed download names that log and shows its tail, nothing is written into the user's
working directory (Spark's warehouse, an MLflow store), and the local cache works on executors whose
HOME is missing or read-only, still downloading a model once per machine.

Each case runs in its own process from an empty working directory, which must stay empty.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest
from jobutil import env, kill_group, run

from spark_infer import delta_jars

DOWNLOADING = "spark-infer: downloading Delta Lake jars (once)"
#: lines only Ivy's resolution prints
IVY_LINES = (":: loading settings", ":: resolving dependencies", "Ivy Default Cache", "artifacts copied")
#: Spark's startup notices that the quiet log4j2 file keeps off the terminal
SPARK_NOTICES = ("NativeCodeLoader", "Using Spark's default log4j profile", "Setting default log level")


def run_in(cwd: str, args: list[str], env_vars: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run `args` in `cwd` in its own process group; everything it started is killed afterwards."""
    return run(args, timeout=timeout, env_vars=env_vars, cwd=cwd)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def clean_env(home: str, **extra: str) -> dict[str, str]:
    """The test environment with a fresh HOME and none of our or MLflow's settings."""
    e = env()
    for k in ("SPARK_INFER_CACHE", "SPARK_INFER_VERBOSE", "SPARK_INFER_DELTA_JARS", "SPARK_INFER_REUSE_RESOLVED_JARS",
              "SPARK_INFER_DELTA_PACKAGE", "XDG_CACHE_HOME", "XDG_DATA_HOME", "MLFLOW_TRACKING_URI",
              "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", "SPARK_CONF_DIR", "PYSPARK_SUBMIT_ARGS"):
        e.pop(k, None)
    e["HOME"] = home
    e.update(extra)
    return e


@pytest.fixture
def places(tmp_path):
    """An empty working directory and a fresh HOME."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    return str(cwd), str(home)


# -- the first start -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_first_start_prints_one_line_and_keeps_ivys_output_in_a_log(places, tmp_path, monkeypatch):
    cwd, home = places
    cache = str(tmp_path / "cache")  # no remembered resolution: this start resolves Delta's package
    r = run_in(cwd, python("""
        from spark_infer.sessions import build_session
        spark = build_session("first-hour", master="local[1]")
        assert spark.range(3).count() == 3
        print("warehouse=" + spark.conf.get("spark.sql.warehouse.dir"))
        spark.stop()
    """), clean_env(home, SPARK_INFER_CACHE=cache), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    lines = r.stdout.splitlines()
    ours = [line for line in lines if line.startswith(DOWNLOADING)]
    assert len(ours) == 1, r.stdout
    assert not [s for s in IVY_LINES + SPARK_NOTICES if s in r.stdout], r.stdout
    assert len(lines) <= 4, r.stdout  # ours, the JVM's incubator-module warning, the warehouse line
    monkeypatch.setenv("SPARK_INFER_CACHE", cache)
    log_path = delta_jars.resolution_log()
    assert ours[0].endswith(f"log: {log_path} ...")
    assert ":: resolving dependencies" in open(log_path).read()  # Ivy's output went to the log
    assert delta_jars.resolved_jars() is not None  # the next start reuses it: no Ivy at all
    warehouse = next(line for line in lines if line.startswith("warehouse="))
    assert os.path.join(home, ".local", "share", "spark-infer", "spark-warehouse") in warehouse
    assert os.listdir(cwd) == []  # no spark-warehouse/, derby.log, metastore_db/


def test_a_failed_resolution_names_the_log_and_shows_its_tail(places, tmp_path, monkeypatch):
    """Ivy restricted to an empty local repository (no network), asked for a package nobody has."""
    cwd, home = places
    settings = tmp_path / "ivysettings.xml"
    repo = tmp_path / "repo"
    settings.write_text(f"""<ivysettings>
  <settings defaultResolver="local-only"/>
  <resolvers><filesystem name="local-only">
    <ivy pattern="{repo}/[organisation]/[module]/[revision]/ivy.xml"/>
    <artifact pattern="{repo}/[organisation]/[module]/[revision]/[artifact].[ext]"/>
  </filesystem></resolvers>
</ivysettings>
""")
    conf = {"spark.jars.ivySettings": str(settings), "spark.jars.ivy": str(tmp_path / "ivy")}
    r = run_in(cwd, python(f"""
        from spark_infer.delta_jars import DeltaJarsUnavailable
        from spark_infer.sessions import build_session
        try:
            build_session("first-hour", master="local[1]", conf={conf!r})
        except DeltaJarsUnavailable as exc:
            print("RAISED " + str(exc))
    """), clean_env(home, SPARK_INFER_CACHE=str(tmp_path / "cache"),
                    SPARK_INFER_DELTA_PACKAGE="org.example.nothing:no-such-jar:0.0.1"), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    raised = r.stdout[r.stdout.index("RAISED "):]
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    log_path = delta_jars.resolution_log("org.example.nothing:no-such-jar:0.0.1")
    assert f"full log: {log_path}" in raised
    assert "unresolved dependency: org.example.nothing#no-such-jar;0.0.1" in raised  # the tail
    assert "at org.apache.spark" not in raised  # without the Java stack frames
    assert "SPARK_INFER_DELTA_JARS" in raised  # what to do about it
    assert ":: loading settings" in open(log_path).read()
    assert ":: loading settings" not in r.stdout  # the head of Ivy's output stayed in the log
    assert os.listdir(cwd) == []


@pytest.mark.slow
def test_the_demo_on_a_fresh_home_is_quiet_and_leaves_only_its_folder(places):
    """The lead's check: a fresh HOME, an empty Ivy cache (Java's user.home follows HOME here, so Ivy
    downloads for real from Maven Central), `spark-infer demo` twice: at most 40 lines each time."""
    cwd, home = places
    e = clean_env(home, SPARK_SUBMIT_OPTS=f"{os.environ.get('SPARK_SUBMIT_OPTS', '')} -Duser.home={home}")
    cmd = [sys.executable, "-m", "spark_infer", "demo", "--dir", "demo", "--rows", "60", "--master", "local[1]"]
    first = run_in(cwd, cmd, e, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:]
    assert os.path.isdir(os.path.join(home, ".ivy2.5.2")) or any(n.startswith(".ivy2") for n in os.listdir(home))
    second = run_in(cwd, cmd, e, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:]
    for r, downloads in ((first, 1), (second, 0)):
        lines = r.stdout.splitlines()
        assert len(lines) <= 40, r.stdout
        assert sum(line.startswith(DOWNLOADING) for line in lines) == downloads, r.stdout
        assert not [s for s in IVY_LINES + SPARK_NOTICES if s in r.stdout], r.stdout
    assert "demo: output" in second.stdout
    assert os.listdir(cwd) == ["demo"]


# -- MLflow without a tracking URI ----------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["models:/minilm/1", "models:/minilm@champion", "runs:/0123abcd/model"])
def test_an_mlflow_reference_without_a_tracking_uri_is_a_config_error_that_writes_nothing(places, reference):
    pytest.importorskip("mlflow", reason="MLflow (spark-infer[mlflow]) is not installed")
    cwd, home = places
    r = run_in(cwd, python(f"""
        from spark_infer.errors import ConfigError
        from spark_infer.models.mlflow import MlflowSource
        try:
            MlflowSource.resolve({reference!r})
        except ConfigError as exc:
            print("CONFIG " + str(exc))
    """), clean_env(home), timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "CONFIG " in r.stdout and "MLFLOW_TRACKING_URI" in r.stdout, r.stdout
    assert os.listdir(cwd) == []  # MLflow's default would have made mlflow.db (or mlruns/) here


@pytest.mark.parametrize("where", [{"DATABRICKS_RUNTIME_VERSION": "15.4"}, {"MLFLOW_REGISTRY_URI": "databricks-uc"}])
def test_on_databricks_mlflow_resolves_against_databricks_not_a_local_store(places, where):
    pytest.importorskip("mlflow", reason="MLflow (spark-infer[mlflow]) is not installed")
    cwd, home = places
    r = run_in(cwd, python("""
        import mlflow
        from spark_infer.models.mlflow import _tracking_uri
        print("URI " + _tracking_uri(mlflow, "models:/minilm/1"))
    """), clean_env(home, **where), timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "URI databricks" in r.stdout
    assert os.listdir(cwd) == []


# -- the local cache without a usable HOME --------------------------------------------------------------

CACHE_SCRIPT = """
    import json, logging, time
    logging.basicConfig(level=logging.WARNING)  # an executor's logging: warnings reach its stderr
    from spark_infer.local_cache import cache_dir, data_dir
    from spark_infer.models.base import ModelSnapshot
    from spark_infer.models.cache import cached_snapshot

    snap = ModelSnapshot(source="test", reference="fake:model", locator="", identity="v1",
                         manifest=(("weights.bin", 4),))

    def download(into):  # the network, faked: slow enough that every process asks at once
        time.sleep(1.5)
        open(into + "/weights.bin", "w").write("abcd")

    folder = cached_snapshot(snap, download)
    print(json.dumps({"cache": cache_dir(), "data": data_dir(), "folder": folder}))
"""


def unusable_home(tmp_path, how: str) -> str:
    if how == "missing":  # a HOME that cannot be created: a path below a regular file
        (tmp_path / "not-a-dir").write_text("")
        return str(tmp_path / "not-a-dir" / "home")
    home = tmp_path / "ro-home"
    home.mkdir()
    home.chmod(0o555)
    return str(home)


@pytest.mark.parametrize("how", [
    "missing",
    pytest.param("read-only", marks=pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")),
])
def test_without_a_usable_home_the_cache_is_a_private_temp_folder_and_downloads_once(places, tmp_path, how):
    cwd, _ = places
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    e = clean_env(unusable_home(tmp_path, how), TMPDIR=str(tmp))
    procs = [subprocess.Popen(python(CACHE_SCRIPT), cwd=cwd, env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(3)]
    try:
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            kill_group(p)
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    seen = [json.loads(out.splitlines()[-1]) for out, _ in results]
    root = tmp / f"spark-infer-{os.getuid()}"
    assert {s["cache"] for s in seen} == {str(root / "cache")}
    assert {s["data"] for s in seen} == {str(root / "data")}
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
    assert len({s["folder"] for s in seen}) == 1
    records = [f for f in os.listdir(root / "cache" / "models") if f.endswith(".downloads")]
    assert len(records) == 1 and len(open(root / "cache" / "models" / records[0]).read().splitlines()) == 1
    assert "local_folder_fallback" in results[0][1]  # said where the cache went instead
    assert os.listdir(cwd) == []


def test_a_temp_fallback_someone_else_prepared_is_not_used(places, tmp_path):
    """In a shared temp dir, `spark-infer-<uid>` could be another user's symlink: never followed."""
    cwd, _ = places
    tmp, elsewhere = tmp_path / "tmp", tmp_path / "elsewhere"
    tmp.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp / f"spark-infer-{os.getuid()}")
    r = run_in(cwd, python(CACHE_SCRIPT), clean_env(unusable_home(tmp_path, "missing"), TMPDIR=str(tmp)),
               timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    cache = json.loads(r.stdout.splitlines()[-1])["cache"]
    # compared by path component: mkdtemp's random suffix may itself start with the uid's digits
    assert os.path.relpath(cache, tmp).split(os.sep)[0] != f"spark-infer-{os.getuid()}"
    assert not os.path.relpath(cache, tmp).startswith("..")
    assert os.listdir(elsewhere) == []
