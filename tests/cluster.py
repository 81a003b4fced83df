"""A real Spark standalone cluster (master + one worker with fake GPUs) on 127.0.0.1 for tests.

Started from the pip-installed pyspark (`$SPARK_HOME/bin/spark-class`), each daemon in its own
session so teardown can kill it with everything it started (executors). Every process of the cluster
carries a unique marker in its environment; teardown also kills any straggler carrying it (the
Python daemons of executors put themselves in their own process groups), so nothing outlives a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

#: JVM options for test JVMs: C1 only (far less JIT CPU), serial GC. C1-only shrinks the default code
#: cache to 48 MB, which the shared session's JVM (every classic test and the Connect server, for the
#: whole suite) filled within two minutes: the JIT then switched itself off and that JVM ran interpreted
#: for the rest of the suite ("CodeCache is full. Compiler has been disabled"). The cache is reserved,
#: not committed, so short-lived JVMs pay nothing for the larger size.
BASE_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=256m"

_ARCHIVE_WARMUP = """
from spark_infer.sessions import build_session
spark = build_session("spark-infer-cds", "local[1]", {"spark.ui.enabled": "false"})
spark.range(100).selectExpr("id % 3 AS k", "CAST(id AS STRING) AS t").groupBy("k").count().collect()
spark.stop()
"""


def class_archive() -> str | None:
    """A JVM class-data archive of Spark's own classes (AppCDS), made once per machine and Spark/Java
    version: every test JVM that maps it starts ~1.5 s sooner and runs its first job ~1.5 s sooner (the
    suite starts dozens of JVMs). None when it cannot be made; a JVM whose class path differs ignores
    it (silently, with the cds logs off)."""
    import hashlib
    import sys

    import pyspark

    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    jars = sorted(os.listdir(os.path.join(os.path.dirname(pyspark.__file__), "jars")))
    key = hashlib.sha256("\n".join([java, pyspark.__version__, *jars]).encode()).hexdigest()[:16]
    folder = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "spark-infer-tests")
    path = os.path.join(folder, f"spark-{key}.jsa")
    if os.path.exists(path):
        return path
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    env = {**os.environ, "SPARK_SUBMIT_OPTS": f"{BASE_JVM_OPTS} -XX:ArchiveClassesAtExit={tmp} -Xlog:cds=off "
                                                 "-Xlog:cds+dynamic=off"}
    try:
        subprocess.run([sys.executable, "-c", _ARCHIVE_WARMUP], env=env, capture_output=True, timeout=300,
                       start_new_session=True)
    except subprocess.SubprocessError:
        pass
    if not os.path.exists(tmp):
        return None
    os.replace(tmp, path)  # atomic: a concurrent suite never maps half an archive
    return path


_ARCHIVE = class_archive()
#: `BASE_JVM_OPTS` plus the class archive, for every JVM a test starts (drivers, executors)
QUICK_JVM_OPTS = BASE_JVM_OPTS + (f" -XX:SharedArchiveFile={_ARCHIVE} -Xlog:cds=off -Xlog:cds+dynamic=off"
                                  if _ARCHIVE else "")

#: environment variable whose value marks every process of one test cluster (and its jobs)
MARKER_ENV = "SPARK_INFER_TEST_CLUSTER"


def spark_home() -> str:
    import pyspark

    return os.path.dirname(pyspark.__file__)


def free_port() -> int:
    """A port that was free a moment ago (bound to port 0 on 127.0.0.1, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_gpu_script(directory: str, addresses: list[str] | tuple[str, ...] = ("0", "1"),
                    name: str = "fake_gpus.sh") -> str:
    """A discovery script that reports `addresses` as GPUs (Spark's resource JSON format)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    payload = json.dumps({"name": "gpu", "addresses": list(addresses)})
    with open(path, "w") as f:
        f.write(f"#!/usr/bin/env bash\necho '{payload}'\n")
    os.chmod(path, 0o755)
    return path


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries MARKER_ENV=marker (this cluster's and its jobs' processes)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in env:
            pids.append(int(entry))
    return pids


def kill_marked(marker: str, grace_s: float = 10.0) -> list[int]:
    """Wait up to grace_s for this cluster's processes to exit, then SIGKILL the rest (by pid)."""
    end = time.monotonic() + grace_s
    left = marked_pids(marker)
    while left and time.monotonic() < end:
        time.sleep(0.2)
        left = marked_pids(marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _kill_session(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group (a worker then stops its executors), SIGKILL what remains."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # the group may outlive its leader for a moment (executor JVMs): make sure it is gone
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class StandaloneCluster:
    """A running master + worker. `url` is what `--master` takes."""

    url: str
    master_ui: str
    base_dir: str
    gpu_script: str
    marker: str
    cores: int
    memory_mb: int
    gpus: tuple[str, ...]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        with urllib.request.urlopen(f"{self.master_ui}/json/", timeout=5) as r:
            return json.load(r)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a driver process using this cluster (carries the cluster's marker)."""
        e = dict(os.environ if base is None else base)
        e[MARKER_ENV] = self.marker
        e["SPARK_LOCAL_IP"] = "127.0.0.1"
        return e

    def log_tail(self, n: int = 4000) -> str:
        out = []
        for root, _, files in os.walk(os.path.join(self.base_dir, "logs")):
            for name in sorted(files):
                with open(os.path.join(root, name), errors="replace") as f:
                    out.append(f"--- {name}\n{f.read()[-n:]}")
        return "\n".join(out)


def _daemon_env(base_dir: str, marker: str, worker_opts: str = "") -> dict[str, str]:
    conf_dir = os.path.join(base_dir, "conf")  # empty: no user spark-env.sh / spark-defaults.conf
    os.makedirs(conf_dir, exist_ok=True)
    e = dict(os.environ)
    for k in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_MASTER_OPTS", "SPARK_WORKER_OPTS",
              "SPARK_DAEMON_JAVA_OPTS"):
        e.pop(k, None)
    e.update({
        "SPARK_HOME": spark_home(),
        "SPARK_CONF_DIR": conf_dir,
        "SPARK_LOG_DIR": os.path.join(base_dir, "logs"),
        "SPARK_WORKER_DIR": os.path.join(base_dir, "work"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "512m",
        "SPARK_DAEMON_JAVA_OPTS": QUICK_JVM_OPTS,
        MARKER_ENV: marker,
    })
    if worker_opts:
        e["SPARK_WORKER_OPTS"] = worker_opts
    return e


def _start(args: list[str], env: dict[str, str], log_path: str) -> subprocess.Popen:
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.Popen([os.path.join(spark_home(), "bin", "spark-class"), *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


@contextmanager
def standalone_cluster(base_dir: str, cores: int = 4, memory: str = "3g",
                       gpus: tuple[str, ...] = ("0", "1"), timeout_s: float = 120.0,
                       worker_envs: list[dict[str, str]] | None = None) -> Iterator[StandaloneCluster]:
    """Start a master and one worker with `gpus` fake GPUs (or one worker per entry of `worker_envs`,
    each with those extra environment variables: separate "nodes"); always stops all of them."""
    marker = uuid.uuid4().hex
    gpu_script = fake_gpu_script(os.path.join(base_dir, "bin"), gpus)
    port, ui_port, worker_ui_port = free_port(), free_port(), free_port()
    url, master_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    mem_mb = int(memory[:-1]) * 1024 if memory.endswith("g") else int(memory.rstrip("m"))
    cluster = StandaloneCluster(url, master_ui, base_dir, gpu_script, marker, cores, mem_mb, tuple(gpus))
    worker_opts = (f"-Dspark.worker.resource.gpu.amount={len(gpus)} "
                   f"-Dspark.worker.resource.gpu.discoveryScript={gpu_script}")
    try:
        cluster.procs.append(_start(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
             "--webui-port", str(ui_port)],
            _daemon_env(base_dir, marker), os.path.join(base_dir, "logs", "master.out")))
        for i, extra in enumerate(worker_envs or [{}]):
            env = {**_daemon_env(base_dir, marker, worker_opts), **extra}
            if i:
                env["SPARK_WORKER_DIR"] = os.path.join(base_dir, f"work{i}")
            cluster.procs.append(_start(
                ["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", str(cores),
                 "--memory", memory, "--webui-port", str(worker_ui_port if i == 0 else free_port())],
                env, os.path.join(base_dir, "logs", f"worker{i or ''}.out")))
        _wait_ready(cluster, timeout_s, workers=len(worker_envs or [{}]))
        yield cluster
    finally:
        for p in reversed(cluster.procs):  # worker first: it stops its executors
            _kill_session(p)
        kill_marked(marker)


def _wait_ready(cluster: StandaloneCluster, timeout_s: float, workers: int = 1) -> None:
    """Until the master's /json/ lists every worker ALIVE with all its GPUs; fail with the logs otherwise."""
    end = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < end:
        for p in cluster.procs:
            if p.poll() is not None:
                raise RuntimeError(f"spark daemon exited with {p.returncode}:\n{cluster.log_tail()}")
        try:
            alive = cluster.alive_workers()
            last = alive
            ready = [w for w in alive
                     if sorted(((w.get("resources") or {}).get("gpu") or {}).get("addresses", [])) == sorted(cluster.gpus)]
            if len(ready) >= workers:
                return
        except OSError as exc:  # master UI not up yet
            last = exc
        time.sleep(0.5)
    raise RuntimeError(f"standalone cluster not ready after {timeout_s}s (last: {last!r}):\n{cluster.log_tail()}")


def cluster_fixture(scope: str = "module", **kwargs):
    """A pytest fixture yielding a `standalone_cluster(**kwargs)` in a fresh temp dir, stopped after its scope.

    In a test module: `gpu_cluster = cluster_fixture(cores=4, memory="3g", gpus=("0", "1"))`.
    """

    def _fixture(tmp_path_factory) -> Iterator[StandaloneCluster]:
        with standalone_cluster(str(tmp_path_factory.mktemp("standalone")), **kwargs) as c:
            yield c

    return pytest.fixture(scope=scope)(_fixture)
