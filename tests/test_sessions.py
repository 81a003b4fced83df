"""Session building: Delta's jars resolved once per machine and reused (no Ivy run at every start)."""

from __future__ import annotations

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
