"""bench/gpu_check.py in its --dry mode: every step of the GPU proof but the device, so it cannot rot."""

from __future__ import annotations

import json
import os
import sys

import pytest
from jobutil import ROOT, run


@pytest.mark.slow
def test_gpu_check_dry_run_exercises_every_step(tmp_path):
    out = str(tmp_path / "gpu.json")
    r = run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--dry", "--json", out], timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    got = json.load(open(out))
    assert got["parity"]["cosine_min_float32"] > 0.99999 and got["parity"]["cosine_min_bfloat16"] > 0.99
    r_ = next(iter(got["throughput"].values()))
    assert {"predict_udf prefetch=on", "predict_udf prefetch=off", "predict_frame", "predict_batch_udf",
            "bare loop (sorted)"} <= set(r_)
    assert all(v["rows_per_s"] > 0 for k, v in r_.items() if k != "ratios")
    assert got["oom"]["oom_backoffs"] >= 1 and got["oom"]["scored"] == got["oom"]["rows"]  # backoff, all scored
    assert got["job"]["exit_code"] == 0 and got["job"]["rows"] == min(64, got["rows"])
    assert "| d forced OOM" in r.stdout and "| a parity bfloat16" in r.stdout
