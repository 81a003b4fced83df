"""bench/gpu_check.py in its --dry mode: every step of the GPU proof but the device, so it cannot rot."""

from __future__ import annotations

import json
import os
import runpy
import sys

import pytest
from jobutil import ROOT


@pytest.mark.slow
def test_gpu_check_dry_run_exercises_every_step(spark, tmp_path, monkeypatch, capsys):
    """The script run as `__main__` in this process: it reuses the active session (the suite's, as it
    would a notebook's) instead of starting a JVM of its own, and its final `spark.stop()` must not stop
    that one. As `__main__`, its functions reach Spark's Python workers by value, as from its own process."""
    out = str(tmp_path / "gpu.json")
    script = os.path.join(ROOT, "bench", "gpu_check.py")
    monkeypatch.setattr(sys, "argv", [script, "--dry", "--json", out])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts bench/ and the root first
    monkeypatch.setattr(spark, "stop", lambda: None)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(script, run_name="__main__")
    stdout = capsys.readouterr().out
    assert exited.value.code == 0, stdout[-4000:]
    got = json.load(open(out))
    assert got["parity"]["cosine_min_float32"] > 0.99999 and got["parity"]["cosine_min_bfloat16"] > 0.99
    r_ = next(iter(got["throughput"].values()))
    assert {"predict_udf prefetch=on", "predict_udf prefetch=off", "predict_frame", "predict_batch_udf",
            "bare loop (sorted)"} <= set(r_)
    assert all(v["rows_per_s"] > 0 for k, v in r_.items() if k != "ratios")
    assert got["oom"]["oom_backoffs"] >= 1 and got["oom"]["scored"] == got["oom"]["rows"]  # backoff, all scored
    assert got["job"]["exit_code"] == 0 and got["job"]["rows"] == min(64, got["rows"])
    assert "| d forced OOM" in stdout and "| a parity bfloat16" in stdout
    assert spark.range(3).count() == 3  # the suite's session still runs
