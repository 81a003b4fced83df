"""GPU placement on real clusters without GPUs: a standalone master + worker with fake GPUs, local-cluster.

The cluster side is real: the worker discovers GPUs "0" and "1" through a discovery script, the master
gives each executor one, and the scoring stage's task-only ResourceProfile asks for `--gpus-per-task`.
Only CUDA is faked, inside the executors' Python workers: a test-only `sitecustomize.py` on
`spark.executorEnv.PYTHONPATH` makes `spark_infer.runtime.device.cuda_available()` say True (so the
task's address becomes `cuda:<addr>`, as on a GPU node) and `device_capability()` say 8.0 (or
`$SPARK_INFER_FAKE_CC`, e.g. 7.5 for a T4), loads a model asked for on `cuda:N` on the CPU instead (the
model cache key and the placement records still say `cuda:N`), and reports no GPU memory to check or
record. The library has no test
hooks; the fake lives in this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict

import numpy as np
import pytest
from cluster import MARKER_ENV, QUICK_JVM_OPTS, cluster_fixture, kill_marked, marked_pids
from jobutil import CATEGORIES, ROOT, ROWS_PER_UNIT, kill_group, summary, wait_for
from jobutil import env as job_env

from spark_infer.resources import DISCOVERY_SCRIPT
from spark_infer.run import ExitCode

SCORE_PARTITIONS = 4  # Spark tasks per commit group: 3 groups x 4 = 12 scoring tasks per run
GROUP_UNITS = 2  # 6 units in 3 commit groups (fewer Delta commits on a 2-core machine)
CONCURRENT_UNITS = 3  # commit groups scored and committed at once (hides per-group latency)

SITECUSTOMIZE = '''\
"""Test-only fake CUDA for Spark's Python workers (from tests/test_gpu_cluster.py)."""
import os

if os.environ.get("SPARK_INFER_FAKE_CUDA") == "1":
    from spark_infer.runtime import device as _device
    from spark_infer.runtime import spec as _spec

    # the one boundary: "CUDA works in this process", so choose_device returns cuda:<address>
    _device.cuda_available = lambda: True
    _real_load = _spec.ModelSpec.load

    def _load_on_cpu(self, device):
        # a CPU-only torch cannot .to("cuda:1"): load on the CPU, keep "cuda:N" in the cache key and records
        return _real_load(self, "cpu" if device.startswith("cuda") else device)

    _spec.ModelSpec.load = _load_on_cpu

    # the capability boundary: an Ampere GPU (8.0), or what SPARK_INFER_FAKE_CC says ("7.5": a T4)
    _cc = tuple(int(x) for x in os.environ.get("SPARK_INFER_FAKE_CC", "8.0").split("."))
    _device.device_capability = lambda device: _cc if device.startswith("cuda") else None

    # the memory boundaries: a fake GPU has room for any model and allocates nothing
    import spark_infer.runtime as _runtime

    _runtime.gpu_free_bytes = lambda device: None
    _runtime.gpu_peak_bytes = lambda device: None
'''


# -- fixtures ---------------------------------------------------------------------------------------

#: a standalone master + one worker with 4 cores, 3g and fake GPUs "0" and "1" (tests/cluster.py)
gpu_cluster = cluster_fixture(scope="module", cores=4, memory="3g", gpus=("0", "1"))


@pytest.fixture(scope="module")
def job_config(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("gpu_cfg") / "job.yaml")
    with open(path, "w") as f:
        # each commit group of GROUP_UNITS units is its own scoring stage of SCORE_PARTITIONS tasks;
        # float32 as on the CPU reference (the fake GPU computes on the CPU)
        f.write(f"score_partitions: {SCORE_PARTITIONS}\nconcurrent_units: {CONCURRENT_UNITS}\ngroup_units: {GROUP_UNITS}\n"
                "task_options: {dtype: float32}\n")
    return path


@pytest.fixture(scope="session")
def local_reference(reference_output) -> str:
    """The same input scored on local[2] (no GPUs, no profile): the expected output (shared, conftest)."""
    return reference_output


@pytest.fixture(scope="module")
def fake_cuda_dir(tmp_path_factory) -> str:
    d = str(tmp_path_factory.mktemp("fake_cuda"))
    with open(os.path.join(d, "sitecustomize.py"), "w") as f:
        f.write(SITECUSTOMIZE)
    return d


# -- helpers ----------------------------------------------------------------------------------------


def quick_confs() -> dict[str, str]:
    """Settings for small test clusters: no UI, few shuffle / Delta snapshot partitions, C1-only JVMs."""
    return {
        "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.extraJavaOptions": QUICK_JVM_OPTS,
        "spark.executor.extraJavaOptions": QUICK_JVM_OPTS,
    }


def executor_confs(fake_cuda_dir: str, gpu_script: str, **extra: str) -> list[str]:
    """The executor side of a GPU job, as the docs give it (docs/gpus.md), plus the CUDA fake."""
    pythonpath = os.pathsep.join(p for p in (fake_cuda_dir, os.environ.get("PYTHONPATH", "")) if p)
    return conf_args({
        "spark.executor.resource.gpu.amount": "1",
        "spark.executor.resource.gpu.discoveryScript": gpu_script,
        "spark.executor.cores": "1",
        "spark.task.cpus": "1",
        "spark.executor.memory": "1g",
        "spark.executorEnv.PYTHONPATH": pythonpath,
        "spark.executorEnv.SPARK_INFER_FAKE_CUDA": "1",
        **quick_confs(),
        **extra,
    })


def conf_args(confs: dict[str, str]) -> list[str]:
    args = []
    for k, v in confs.items():
        args += ["--conf", f"{k}={v}"]
    return args


def run_driver(cmd: list[str], marker: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a job's driver as its own process group; kill it and anything it left (by marker) after."""
    env = job_env()
    env[MARKER_ENV] = marker
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    finally:
        kill_group(p)
    return subprocess.CompletedProcess(cmd, p.returncode, out, "")


def score_cmd(master: str, inp: str, out: str, model: str, cfg: str, js: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spark_infer", "score", "--master", master, "--config", cfg, "--input", inp,
            "--output", out, "--model", model, "--summary-json", js, *extra]


def parse_placement(records: list[str]) -> tuple[list[dict], list[tuple[int, str]]]:
    """summary.placement -> (task records, (pid, device) model loads)."""
    tasks, loads = [], []
    for r in records:
        kind, *f = r.split("|")
        if kind == "task":
            attempt, pid, addrs, device, start, end = f
            tasks.append({"attempt": int(attempt), "pid": int(pid), "gpus": [a for a in addrs.split(",") if a],
                          "device": device, "start": int(start), "end": int(end)})
        elif kind == "load":
            loads.append((int(f[0]), f[1]))
    return tasks, loads


def read_output(path: str) -> dict[int, tuple]:
    from deltalake import DeltaTable

    t = DeltaTable(path).to_pyarrow_table(columns=["id", "category", "embedding", "error"]).to_pylist()
    return {r["id"]: (r["category"], r["embedding"], r["error"]) for r in t}


def assert_same_output(got_path: str, want_path: str) -> None:
    got, want = read_output(got_path), read_output(want_path)
    assert len(got) == len(want) == len(CATEGORIES) * ROWS_PER_UNIT
    assert got.keys() == want.keys()
    for k, (cat, emb, err) in want.items():
        assert got[k][0] == cat and got[k][2] is None and err is None
        np.testing.assert_allclose(np.array(got[k][1]), np.array(emb), atol=1e-5, rtol=0)


def assert_loaded_once_per_worker_and_device(s: dict, tasks: list[dict], loads: list[tuple[int, str]]) -> None:
    # a (pid, device) pair appears once in the records; model_loads counts every load, so equal
    # totals mean no pair loaded twice
    assert s["counters"]["model_loads"] == len(loads) == len(set(loads)), (s["counters"], loads)
    assert {(t["pid"], t["device"]) for t in tasks} == set(loads)
    assert len(loads) < len(tasks)  # reused across tasks, not loaded per task


def run_and_check(master: str, marker: str, units_input: str, tiny_bert: str, job_config: str, tmp_path,
                  *extra: str, timeout: int = 600) -> tuple[dict, list[dict], list[tuple[int, str]]]:
    out, js = str(tmp_path / "out"), str(tmp_path / "s.json")
    t0 = time.monotonic()
    r = run_driver(score_cmd(master, units_input, out, tiny_bert, job_config, js, *extra), marker, timeout)
    assert r.returncode == ExitCode.OK, r.stdout[-6000:]
    s = summary(js)
    print(f"{master}: job took {time.monotonic() - t0:.1f}s; durations {s['durations_s']}")
    print("\n".join(ln for ln in r.stdout.splitlines() if ln.startswith(("event=group_committed", "event=run_end"))))
    assert s["status"] == "succeeded" and len(s["units_committed"]) == len(CATEGORIES)
    tasks, loads = parse_placement(s["placement"])
    assert len(tasks) == len(CATEGORIES) // GROUP_UNITS * SCORE_PARTITIONS, s["placement"]
    return s, tasks, loads


# -- the discovery script ----------------------------------------------------------------------------


def _discover(env: dict[str, str]) -> dict:
    r = subprocess.run([shutil.which("bash") or "/bin/bash", DISCOVERY_SCRIPT], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # valid JSON, and nothing else on stdout
    assert out["name"] == "gpu" and isinstance(out["addresses"], list)
    return out


@pytest.mark.parametrize(("visible", "want"), [
    ("0,1", ["0", "1"]),
    ("2,3", ["2", "3"]),
    (" 1 , 3 ", ["1", "3"]),
    ("GPU-8f3e0c3a-1b2c-4d5e-9f00-0123456789ab", ["GPU-8f3e0c3a-1b2c-4d5e-9f00-0123456789ab"]),
    ("0,-1,1", ["0"]),  # CUDA stops at the first invalid entry
    ("-1", []),
    ("", []),  # set but empty: CUDA sees no device
    ("NoDevFiles", []),
])
def test_discovery_script_honours_cuda_visible_devices(tmp_path, visible, want):
    e = {"PATH": str(tmp_path), "CUDA_VISIBLE_DEVICES": visible}
    assert _discover(e)["addresses"] == want


def test_discovery_script_without_nvidia_smi_prints_no_addresses(tmp_path):
    assert _discover({"PATH": str(tmp_path)}) == {"name": "gpu", "addresses": []}


def _fake_smi(directory, body: str) -> None:
    p = os.path.join(directory, "nvidia-smi")
    with open(p, "w") as f:
        f.write(f"#!{shutil.which('bash') or '/bin/bash'}\n{body}\n")
    os.chmod(p, 0o755)


def test_discovery_script_lists_nvidia_smi_indices(tmp_path):
    _fake_smi(tmp_path, 'echo 0; echo 1; echo " 2 "')
    assert _discover({"PATH": str(tmp_path)})["addresses"] == ["0", "1", "2"]


def test_discovery_script_ignores_a_failing_nvidia_smi(tmp_path):
    # no driver: nvidia-smi prints its complaint on stdout and exits non-zero
    _fake_smi(tmp_path, 'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; '
                        "exit 9")
    assert _discover({"PATH": str(tmp_path)})["addresses"] == []


def test_discovery_entry_point_prints_the_script_path():
    exe = shutil.which("spark-infer-gpu-discovery")
    assert exe, "the spark-infer-gpu-discovery entry point must be installed"
    r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == DISCOVERY_SCRIPT
    assert os.access(DISCOVERY_SCRIPT, os.X_OK)


# -- local-cluster ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_local_cluster_one_gpu_per_task(units_input, tiny_bert, job_config, local_reference, fake_cuda_dir,
                                        tmp_path):
    """local-cluster[2,1,1024] from the pip wheel: two in-driver workers, each with one fake GPU."""
    marker = uuid.uuid4().hex
    # both workers run the same discovery script: hand "0" to the first caller and "1" to the second
    claim = tmp_path / "claims"
    claim.mkdir()
    script = tmp_path / "claim_gpu.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f'for a in 0 1; do if mkdir "{claim}/$a" 2>/dev/null; then\n'
        '  echo "{\\"name\\": \\"gpu\\", \\"addresses\\": [\\"$a\\"]}"; exit 0; fi; done\n'
        'echo \'{"name": "gpu", "addresses": []}\'\n'
    )
    script.chmod(0o755)
    try:
        s, tasks, loads = run_and_check(
            "local-cluster[2,1,1024]", marker, units_input, tiny_bert, job_config, tmp_path,
            "--gpus-per-task", "1",
            *executor_confs(fake_cuda_dir, str(script), **{
                "spark.worker.resource.gpu.amount": "1",
                "spark.worker.resource.gpu.discoveryScript": str(script),
                "spark.executor.memory": "1g",
            }),
        )
    finally:
        kill_marked(marker)
    for t in tasks:
        assert len(t["gpus"]) == 1 and t["device"] == f"cuda:{t['gpus'][0]}", t
    assert {t["gpus"][0] for t in tasks} == {"0", "1"}
    assert_loaded_once_per_worker_and_device(s, tasks, loads)
    assert_same_output(str(tmp_path / "out"), local_reference)


# -- standalone master + worker -------------------------------------------------------------------------


@pytest.mark.slow
def test_standalone_one_gpu_per_task_two_executors(gpu_cluster, units_input, tiny_bert, job_config,
                                                   local_reference, fake_cuda_dir, tmp_path):
    s, tasks, loads = run_and_check(
        gpu_cluster.url, gpu_cluster.marker, units_input, tiny_bert, job_config, tmp_path,
        "--gpus-per-task", "1",
        *executor_confs(fake_cuda_dir, gpu_cluster.gpu_script),
    )
    for t in tasks:
        # exactly one address per scoring task, and the device is that address
        assert len(t["gpus"]) == 1, t
        assert t["device"] == f"cuda:{t['gpus'][0]}", t
    assert {t["gpus"][0] for t in tasks} == {"0", "1"}  # both executors' GPUs were used
    # one executor per GPU: a Python worker only ever serves its executor's GPU
    devices_per_pid = defaultdict(set)
    for t in tasks:
        devices_per_pid[t["pid"]].add(t["device"])
    assert all(len(d) == 1 for d in devices_per_pid.values()), devices_per_pid
    assert_loaded_once_per_worker_and_device(s, tasks, loads)
    # a task holding a whole GPU never overlaps another task on that GPU
    by_gpu = defaultdict(list)
    for t in tasks:
        by_gpu[t["gpus"][0]].append((t["start"], t["end"]))
    for spans in by_gpu.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), spans
    assert_same_output(str(tmp_path / "out"), local_reference)


@pytest.mark.slow
def test_standalone_half_gpu_tasks_share_an_address(gpu_cluster, units_input, tiny_bert, job_config,
                                                    local_reference, fake_cuda_dir, tmp_path):
    # one executor with 2 cores and 1 GPU; tasks ask for 0.5 GPU and 1 core -> two run at once on it
    s, tasks, loads = run_and_check(
        gpu_cluster.url, gpu_cluster.marker, units_input, tiny_bert, job_config, tmp_path,
        "--gpus-per-task", "0.5", "--cpus-per-task", "1",
        *executor_confs(fake_cuda_dir, gpu_cluster.gpu_script,
                        **{"spark.executor.cores": "2", "spark.cores.max": "2"}),
    )
    for t in tasks:
        assert len(t["gpus"]) == 1 and t["device"] == f"cuda:{t['gpus'][0]}", t
    assert len({t["gpus"][0] for t in tasks}) == 1  # the one executor's GPU
    shared = [
        (a["attempt"], b["attempt"]) for i, a in enumerate(tasks) for b in tasks[i + 1:]
        if a["gpus"] == b["gpus"] and a["start"] < b["end"] and b["start"] < a["end"]
    ]
    assert shared, "no two tasks ran on the same GPU at the same time"
    assert_loaded_once_per_worker_and_device(s, tasks, loads)
    assert_same_output(str(tmp_path / "out"), local_reference)


@pytest.mark.slow
def test_standalone_without_gpus_per_task_scores_on_the_clusters_gpus_in_float16_on_t4s(
        gpu_cluster, units_input, tiny_bert, local_reference, fake_cuda_dir, tmp_path):
    """`gpus_per_task` unset and `dtype: auto` on a cluster whose executors have GPUs of compute capability
    7.5 (T4s): the run plans for the GPUs from the session's conf (each scoring task asks for one),
    resolves auto to float16 (no bfloat16 before 8.0) from the executors, and says so in the fingerprint
    and the run record."""
    from deltalake import DeltaTable

    from spark_infer.runtime.spec import make_spec

    cfg = tmp_path / "auto.yaml"  # one commit group of every unit, dtype: auto
    cfg.write_text(f"score_partitions: {SCORE_PARTITIONS}\ngroup_units: {len(CATEGORIES)}\n")
    js = str(tmp_path / "s.json")
    t0 = time.monotonic()
    r = run_driver(score_cmd(gpu_cluster.url, units_input, str(tmp_path / "out"), tiny_bert, str(cfg), js,
                             *executor_confs(fake_cuda_dir, gpu_cluster.gpu_script,
                                             **{"spark.executorEnv.SPARK_INFER_FAKE_CC": "7.5"})),
                   gpu_cluster.marker)
    assert r.returncode == ExitCode.OK, r.stdout[-6000:]
    s = summary(js)
    print(f"job took {time.monotonic() - t0:.1f}s; durations {s['durations_s']}")
    assert s["status"] == "succeeded" and len(s["units_committed"]) == len(CATEGORIES)
    tasks, _ = parse_placement(s["placement"])
    assert len(tasks) == SCORE_PARTITIONS, s["placement"]
    # a ResourceProfile gave every scoring task one GPU (the cluster's tasks hold none by default)
    for t in tasks:
        assert len(t["gpus"]) == 1 and t["device"] == f"cuda:{t['gpus'][0]}", t
    assert (s["device_kind"], s["precision"]) == ("cuda", "float16")
    assert "gpu_probe" in s["durations_s"]
    # every worker that scored reports its GPU, its capability and float16
    assert s["workers"] and sum(w["tasks"] for w in s["workers"]) == len(tasks)
    assert all(w["device"].startswith("cuda:") and w["capability"] == "7.5" and w["precision"] == "float16"
               for w in s["workers"]), s["workers"]
    spec = make_spec("embed", tiny_bert)
    assert s["model_fingerprint"] == spec.placed("cuda", "float16").fingerprint
    assert s["model_fingerprint"] not in {spec.placed("cuda", "bfloat16").fingerprint,
                                          spec.placed("cpu", "float32").fingerprint}
    out = DeltaTable(str(tmp_path / "out")).to_pyarrow_table(columns=["model_fingerprint", "embedding", "id"])
    assert set(out.column("model_fingerprint").to_pylist()) == {s["model_fingerprint"]}
    want = read_output(local_reference)  # float32 on the CPU; float16 is within its rounding
    for i, emb in zip(out.column("id").to_pylist(), out.column("embedding").to_pylist(), strict=True):
        np.testing.assert_allclose(np.array(emb), np.array(want[i][1]), atol=2e-2, rtol=0)


@pytest.mark.slow
def test_a_gpu_runs_worker_without_a_gpu_fails_its_task_with_a_clear_error(
        gpu_cluster, units_input, tiny_bert, fake_cuda_dir, tmp_path):
    """Planned for the cluster's GPUs (`gpus_per_task` unset), on workers where CUDA is not available:
    the scoring tasks fail naming the host and how to score on CPU; nothing is written."""
    cfg = tmp_path / "one_group.yaml"
    cfg.write_text(f"score_partitions: 2\ngroup_units: {len(CATEGORIES)}\ntask_options: {{dtype: float32}}\n")
    out, js = str(tmp_path / "out"), str(tmp_path / "s.json")
    r = run_driver(score_cmd(gpu_cluster.url, units_input, out, tiny_bert, str(cfg), js,
                             *executor_confs(fake_cuda_dir, gpu_cluster.gpu_script, **{
                                 "spark.executorEnv.SPARK_INFER_FAKE_CUDA": "0", "spark.task.maxFailures": "1"})),
                   gpu_cluster.marker)
    assert r.returncode != ExitCode.OK, r.stdout[-4000:]
    s = summary(js)
    assert (s["device_kind"], s["precision"]) == ("cuda", "float32")
    assert s["units_committed"] == [] and len(s["units_failed"]) == len(CATEGORIES), s
    for why in s["units_failed"].values():
        assert "DeviceMismatchError" in why and "planned for GPUs" in why, why
        assert "host " in why and "has none" in why and "device: cpu" in why, why


@pytest.mark.slow
def test_no_cluster_process_outlives_its_job(gpu_cluster):
    """After the jobs, only the master and the worker remain: no executor, no Python worker."""
    daemons = {p.pid for p in gpu_cluster.procs}
    assert wait_for(lambda: set(marked_pids(gpu_cluster.marker)) <= daemons, timeout=30), \
        sorted(set(marked_pids(gpu_cluster.marker)) - daemons)
