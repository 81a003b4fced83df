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
