"""Helpers for job tests: input tables, running the CLI in-process or as a killable subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the shared process-level input (conftest.units_input): 6 category partitions of 12 rows
CATEGORIES = ["books", "music", "garden", "toys", "tools", "games"]
ROWS_PER_UNIT = 12

TOPICS = {
    "books": ["a gripping novel about the sea", "the atlas of rivers", "a cookbook of quick meals"],
    "music": ["a vinyl record of jazz standards", "live concert recording", "a guitar method book"],
    "garden": ["stainless pruning shears", "a cedar raised bed", "tomato seed starter kit"],
    "toys": ["wooden building blocks", "a glow in the dark puzzle", "a kite for light wind"],
}


def rows_for(category: str, start_id: int, n: int, variant: str = "") -> list[tuple]:
    texts = TOPICS.get(category, ["plain text row"])
    return [
        (start_id + i, category, f"{texts[i % len(texts)]} {variant} number {i}" + " extra" * (i % 5))
        for i in range(n)
    ]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYSPARK_PYTHON"] = sys.executable
    e["HF_HUB_OFFLINE"] = "1"
    e["TOKENIZERS_PARALLELISM"] = "false"
    e.pop("PYSPARK_GATEWAY_PORT", None)
    e.pop("PYSPARK_GATEWAY_SECRET", None)
    return e


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--master", "local[2]", *args]


def start(cmd: list[str], log_path: str) -> subprocess.Popen:
    """Start a job in its own process group (so the test can kill it with its JVM and workers)."""
    log = open(log_path, "w")  # noqa: SIM115 - closed by the caller via finish()
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run(cmd: list[str], timeout: float = 300, env_vars: dict[str, str] | None = None,
        cwd: str = ROOT) -> subprocess.CompletedProcess:
    """Run to completion in its own process group; everything it started is killed afterwards."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env_vars if env_vars is not None else env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException:
        kill_group(p)
        raise
    finally:
        # nothing the job started may outlive it (JVM, python workers)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, p.returncode, out, "")


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return False


def delta_versions(path: str) -> list[int]:
    log = os.path.join(path, "_delta_log")
    if not os.path.isdir(log):
        return []
    return sorted(int(f.split(".")[0]) for f in os.listdir(log) if f.endswith(".json") and f[0].isdigit())


def summary(path: str) -> dict:
    with open(path) as f:
        return json.load(f)
