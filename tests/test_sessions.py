"""Session building: Delta's jars resolved once per machine and reused (no Ivy run at every start), and
what a JVM we start is given (a quiet log4j2 file, the user's options kept, nothing in the cwd)."""

from __future__ import annotations

import os

import pytest

from spark_infer import delta_jars


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(delta_jars.REUSE_ENV, raising=False)
    monkeypatch.delenv(delta_jars.DELTA_JARS_ENV, raising=False)
    jars = []
    for name in ("io.delta_delta-spark.jar", "io.delta_delta-storage.jar"):
        p = tmp_path / name
        p.write_bytes(b"PK")
        jars.append(f"file://{p}")
    return tmp_path, jars


def test_a_resolution_is_remembered_and_reused(cache, monkeypatch):
    tmp_path, jars = cache
    assert delta_jars.resolved_jars("g:a:1") is None
    delta_jars.remember_resolved_jars(",".join(jars), "g:a:1")
    assert delta_jars.resolved_jars("g:a:1") == ",".join(jars)
    assert delta_jars.resolved_jars("g:a:2") is None  # another package version resolves anew
    monkeypatch.setenv(delta_jars.REUSE_ENV, "0")
    assert delta_jars.resolved_jars("g:a:1") is None  # reuse switched off


def test_a_resolution_with_a_missing_jar_is_not_reused(cache):
    tmp_path, jars = cache
    delta_jars.remember_resolved_jars(",".join(jars), "g:a:1")
    (tmp_path / "io.delta_delta-storage.jar").unlink()
    assert delta_jars.resolved_jars("g:a:1") is None
    delta_jars.remember_resolved_jars(",".join(jars), "g:a:3")  # a list naming a missing jar is not kept
    assert delta_jars.resolved_jars("g:a:3") is None


def test_given_jars_win_over_a_remembered_resolution(cache, monkeypatch):
    tmp_path, jars = cache
    delta_jars.remember_resolved_jars(",".join(jars), delta_jars.DELTA_PACKAGE)
    assert delta_jars.local_delta_jars("/opt/a.jar") == "/opt/a.jar"
    assert delta_jars.local_delta_jars(None) == ",".join(jars)
    assert delta_jars.delta_flags(None)[:2] == ["--jars", ",".join(jars)]
    monkeypatch.setenv(delta_jars.REUSE_ENV, "0")
    assert delta_jars.delta_flags(None)[:2] == ["--packages", delta_jars.DELTA_PACKAGE]


class FakeCaps:
    """What a classic session under spark-submit would report (the relaunch only reads confs)."""

    def conf_items(self):
        return {"spark.master": "yarn", "spark.submit.deployMode": "client", "spark.app.name": "nightly",
                "spark.hadoop.fs.s3a.secret.key": "wJalr/XUtnF+EMI=K", "spark.executor.memory": "8g",
                "spark.weird key:x": "a\\b\nc", "spark.app.id": "app-1"}


def test_a_relaunch_keeps_confs_off_the_command_line(tmp_path, monkeypatch):
    import os
    import stat

    from spark_infer.launch import relaunch_command, relaunch_confs, write_properties

    monkeypatch.setenv(delta_jars.REUSE_ENV, "0")
    props = str(tmp_path / "relaunch.properties")
    write_properties(relaunch_confs(FakeCaps()), props)
    cmd = relaunch_command(FakeCaps(), "jobs/score.py", ["--config", "job.yaml"], None, props)
    line = " ".join(cmd)
    assert "wJalr" not in line and "8g" not in line  # confs travel in the file
    assert cmd[cmd.index("--properties-file") + 1] == props and cmd[cmd.index("--master") + 1] == "yarn"
    assert "--packages" in cmd and cmd[-2:] == ["--config", "job.yaml"]
    assert stat.S_IMODE(os.stat(props).st_mode) == 0o600
    text = open(props).read()
    assert "spark.hadoop.fs.s3a.secret.key=wJalr/XUtnF+EMI=K\n" in text
    assert "spark.weird\\ key\\:x=a\\\\b\\nc\n" in text and "spark.app.id" not in text


@pytest.mark.parametrize(("master", "pins"), [
    ("local[2]", True), ("local", True), ("local-cluster[2,1,1024]", True),
    ("yarn", False), ("spark://host:7077", False), ("k8s://https://api:6443", False), ("", False),
])
def test_only_local_sessions_pin_the_workers_python(master, pins):
    from spark_infer.sessions import pins_worker_python

    assert pins_worker_python(master) is pins


# -- what a JVM we start is given ------------------------------------------------------------------------

@pytest.fixture
def spark_env(tmp_path, monkeypatch):
    """No Spark settings of the user's anywhere; our folders under tmp_path."""
    for k in ("PYSPARK_SUBMIT_ARGS", "SPARK_SUBMIT_OPTS", "JAVA_TOOL_OPTIONS", delta_jars.VERBOSE_ENV):
        monkeypatch.delenv(k, raising=False)
    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(conf_dir))
    monkeypatch.setenv("SPARK_INFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return conf_dir


def test_spark_warehouse_goes_to_our_data_dir_unless_the_user_chose_a_place(spark_env, tmp_path, monkeypatch):
    from spark_infer.sessions import _no_litter_confs

    key = "spark.sql.warehouse.dir"
    assert _no_litter_confs({}, None) == {key: str(tmp_path / "data" / "spark-infer" / "spark-warehouse")}
    assert _no_litter_confs({}, "demo/spark-warehouse") == {key: os.path.abspath("demo/spark-warehouse")}
    assert _no_litter_confs({key: "/mine"}, "demo") == {}  # the user's conf is kept as given
    monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", f"--conf {key}=/mine pyspark-shell")
    assert _no_litter_confs({}, None) == {}
    monkeypatch.delenv("PYSPARK_SUBMIT_ARGS")
    (spark_env / "spark-defaults.conf").write_text(f"# site defaults\n{key}  hdfs:///warehouse\n")
    assert _no_litter_confs({}, None) == {}  # ours would silently replace spark-defaults.conf's


def test_a_jvm_we_start_is_quiet_and_keeps_the_users_java_options(spark_env, monkeypatch):
    from spark_infer.sessions import _startup_java_options

    key = "spark.driver.extraJavaOptions"
    opts = _startup_java_options({key: "-Dhttp.proxyHost=proxy"}, "local[2]")
    assert opts.startswith("-Dhttp.proxyHost=proxy ")
    log4j = opts.split("-Dlog4j2.configurationFile=", 1)[1].split(" ")[0]
    text = open(log4j).read()
    assert "org.apache.hadoop.util.NativeCodeLoader" in text and "org.apache.spark.util.Utils" in text
    assert "org.apache.spark.util.Utils" not in open(  # hostname notices matter on a real cluster
        _startup_java_options({}, "yarn").split("-Dlog4j2.configurationFile=", 1)[1].split(" ")[0]).read()
    assert "-Dderby.system.home=" in opts  # derby.log / metastore_db of a Hive catalog: not in the cwd
    # the user's own log4j configuration wins, and so does asking to see everything
    assert _startup_java_options({key: "-Dlog4j2.configurationFile=/m"}, "local").count("log4j2") == 1
    (spark_env / "log4j2.properties").write_text("rootLogger.level = info\n")
    assert "log4j2" not in _startup_java_options({}, "local")
    (spark_env / "log4j2.properties").unlink()
    monkeypatch.setenv(delta_jars.VERBOSE_ENV, "1")
    assert "log4j2" not in _startup_java_options({}, "local")
    # options set in spark-defaults.conf are not replaced by ours
    (spark_env / "spark-defaults.conf").write_text(f"{key} -Dsite=1\n")
    assert _startup_java_options({}, "local") is None


def test_java_option_paths_with_spaces_are_quoted_for_sparks_launcher():
    from spark_infer.sessions import _java_opt

    assert _java_opt("a.b", "/plain/path") == "-Da.b=/plain/path"
    assert _java_opt("a.b", "/Users/me/Library/Application Support/x") == \
        '-Da.b="/Users/me/Library/Application Support/x"'


def test_verbose_is_asked_by_env_or_debug_logging(monkeypatch):
    import logging

    monkeypatch.delenv(delta_jars.VERBOSE_ENV, raising=False)
    logger = logging.getLogger("spark_infer")
    before = logger.level
    try:
        logger.setLevel(logging.INFO)
        assert not delta_jars.verbose()
        monkeypatch.setenv(delta_jars.VERBOSE_ENV, "0")
        assert not delta_jars.verbose()
        monkeypatch.setenv(delta_jars.VERBOSE_ENV, "1")
        assert delta_jars.verbose()
        monkeypatch.delenv(delta_jars.VERBOSE_ENV)
        logger.setLevel(logging.DEBUG)
        assert delta_jars.verbose()
    finally:
        logger.setLevel(before)


@pytest.mark.parametrize("driver_started", [True, False])
def test_a_relaunch_passes_sigterm_on_to_the_job_and_exits_with_its_code(tmp_path, driver_started):
    """SIGTERM to the process that relaunched the job (under spark-submit) reaches the relaunched job's
    Python driver (below spark-submit's JVM: here a shell), whose exit code comes back; before that
    driver exists, the child itself is stopped and the code is 5."""
    import signal
    import subprocess
    import sys
    import time

    from jobutil import ROOT, kill_group, wait_for

    script = tmp_path / "score.py"
    marker = tmp_path / "got-sigterm"
    script.write_text(
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, 'w').close(), sys.exit(5)))\n"
        f"open({str(tmp_path / 'ready')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    inner = f"{sys.executable} {script}" if driver_started else f"touch {tmp_path / 'ready'}; sleep 60"
    wrapper = ("import sys\nfrom spark_infer.launch import run_forwarding_signals\n"
               f"sys.exit(run_forwarding_signals(['sh', '-c', {inner + '; exit $?'!r}], None, {str(script)!r}))\n")
    proc = subprocess.Popen([sys.executable, "-c", wrapper], cwd=ROOT, start_new_session=True)
    try:
        assert wait_for(lambda: (tmp_path / "ready").exists(), timeout=30)
        time.sleep(0.3)  # the wrapper's handlers are installed before the child starts
        os.kill(proc.pid, signal.SIGTERM)  # this process alone, not its group
        assert proc.wait(timeout=10) == 5
    finally:
        kill_group(proc)
    assert marker.exists() == driver_started
