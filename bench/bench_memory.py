#!/usr/bin/env python
"""Peak RSS of the Python workers while spark_infer.predict_udf scores 10k vs 100k rows.

Worker memory must not grow with the number of rows a task scores (only with the Arrow batch and
the model). Each size runs in a fresh child process (its own JVM and Python workers, so one size's
high-water mark never leaks into the other's): a tiny random BERT (tests/tiny_models.py) embeds
generated text through `spark_infer.predict_udf("embed")` on local[2], written to the "noop" sink,
while a background thread samples the RSS of every Python worker process (descendants of this
process, i.e. of its JVM, whose cmdline contains "pyspark.daemon" or "pyspark.worker") every 0.2 s.

The Arrow batch size (spark.sql.execution.arrow.maxRecordsPerBatch) defaults to 2000 here, not
Spark's 10000: with 2 partitions a 10k-row run gives each task 5000 rows, so at 10000 the small run
would use half-size Arrow batches and the comparison would measure batch size, not row count.

    python bench/bench_memory.py                         # 10k vs 100k, target ratio <= 1.15
    python bench/bench_memory.py --sizes 10000,50000 --arrow-batch 10000 --json /tmp/mem.json
    python bench/bench_memory.py --backend onnx          # each CPU backend (spark_infer.backends)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from spark_infer.launch import cmdline, descendants

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
WORKER_MARKERS = ("pyspark.daemon", "pyspark.worker")
TARGET_RATIO = 1.15


# -- process sampling ---------------------------------------------------------------------------
def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _smaps_kib(pid: int) -> tuple[int, int] | None:
    """(Pss, Private_Clean + Private_Dirty) in KiB from /proc/<pid>/smaps_rollup, if readable."""
    pss = priv = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    priv += int(line.split()[1])
    except OSError:
        return None
    return pss, priv


class WorkerRss:
    """RSS (bytes) of the Python worker processes under `root`: psutil if installed, else /proc."""

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        try:
            import psutil

            self._psutil = psutil
        except ImportError:
            self._psutil = None
        self.backend = "psutil" if self._psutil else "/proc"
        self._cmd: dict[int, bool] = {}

    def _is_worker(self, pid: int, read_cmdline) -> bool:
        hit = self._cmd.get(pid)
        if hit is None:
            cmd = read_cmdline()
            hit = self._cmd[pid] = any(m in cmd for m in WORKER_MARKERS)
        return hit

    def sample(self) -> dict[int, int]:
        """{pid: rss bytes} of the workers now."""
        out: dict[int, int] = {}
        if self._psutil is not None:
            ps = self._psutil
            try:
                procs = ps.Process(self.root).children(recursive=True)
            except ps.Error:
                return out
            for p in procs:
                try:
                    if self._is_worker(p.pid, lambda p=p: " ".join(p.cmdline())):
                        out[p.pid] = p.memory_info().rss
                except ps.Error:
                    continue
            return out
        for pid in descendants(self.root):
            if self._is_worker(pid, lambda pid=pid: cmdline(pid)):
                kib = _status_kib(pid, "VmRSS")
                if kib is not None:
                    out[pid] = kib * 1024
        return out

    def shared_aware(self, pids) -> tuple[int, int]:
        """Sum of PSS and of USS (private pages), bytes: RSS sums count pages the forked workers
        share with the daemon (torch's code and import-time data) once per process."""
        pss = uss = 0
        for pid in pids:
            r = _smaps_kib(pid)
            if r is not None:
                pss += r[0] * 1024
                uss += r[1] * 1024
        return pss, uss

    def hwm(self, pids) -> dict[int, int]:
        """VmHWM (the kernel's own peak RSS since the process started), bytes."""
        out = {}
        for pid in pids:
            kib = _status_kib(pid, "VmHWM")
            if kib is not None:
                out[pid] = kib * 1024
        return out


class Sampler(threading.Thread):
    """Samples WorkerRss every `interval` s; keeps the peak of the sum and of each process."""

    def __init__(self, rss: WorkerRss, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.rss, self.interval = rss, interval
        self.peak_sum = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self.max_procs = 0
        self.peak_pss_sum = 0
        self.peak_uss_sum = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self._take()
            self._stop_evt.wait(self.interval)
        self._take()

    def _take(self) -> None:
        s = self.rss.sample()
        self.samples += 1
        self.max_procs = max(self.max_procs, len(s))
        self.peak_sum = max(self.peak_sum, sum(s.values()))
        for pid, v in s.items():
            self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), v)
        pss, uss = self.rss.shared_aware(s)
        self.peak_pss_sum = max(self.peak_pss_sum, pss)
        self.peak_uss_sum = max(self.peak_uss_sum, uss)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join()


# -- one size (child process) -------------------------------------------------------------------
def generated_text(spark, rows: int, partitions: int, words: tuple[int, int] = (5, 44)):
    """Deterministic word salad over the tiny tokenizer's vocabulary, words[0]..words[1] words a row."""
    from pyspark.sql import functions as F

    sys.path.insert(0, TESTS)
    from tiny_models import WORDS

    vocab = F.array(*[F.lit(w) for w in WORDS])
    n_words = F.pmod(F.hash("id"), F.lit(words[1] - words[0] + 1)) + words[0]
    text = F.concat_ws(" ", F.transform(
        F.sequence(F.lit(1), n_words),
        lambda i: F.element_at(vocab, (F.pmod(F.hash(F.col("id"), i), F.lit(len(WORDS))) + 1).cast("int")),
    ))
    return spark.range(rows).select("id", text.alias("text")).repartition(partitions)


def mib(b: float) -> float:
    return b / (1 << 20)


def run_one(args) -> dict[str, Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.path.insert(0, TESTS)
    from tiny_models import make_tiny_bert

    import spark_infer
    from spark_infer.sessions import build_session

    rows = args.child
    model_dir = make_tiny_bert(os.path.join(tempfile.mkdtemp(prefix="bench-mem-"), "tiny-bert"))
    conf = {"spark.sql.shuffle.partitions": str(args.partitions),
            "spark.default.parallelism": str(args.partitions), "spark.ui.enabled": "false",
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch)}
    t0 = time.perf_counter()
    spark = build_session("bench-memory", master=args.master, conf=conf)
    session_s = time.perf_counter() - t0
    words = tuple(int(w) for w in args.words.split(","))
    df = generated_text(spark, rows, args.partitions, words).cache()
    n = df.count()
    opts: dict[str, Any] = {"batch_size": args.batch_size, "max_length": args.max_length}
    if args.token_budget:
        opts["token_budget"] = args.token_budget
    opts.update(backend=args.backend, precision=args.precision)
    udf = spark_infer.predict_udf("embed", model=model_dir, **opts)

    # warm-up: workers start, import torch and load the model; what remains is the baseline
    warm = generated_text(spark, args.warmup_rows, args.partitions, words)
    warm.select(udf("text").alias("emb")).write.format("noop").mode("overwrite").save()
    rss = WorkerRss()
    base = rss.sample()
    base_pss, base_uss = rss.shared_aware(base)
    m0 = dict(udf.metrics())

    sampler = Sampler(rss, args.interval)
    sampler.start()
    t0 = time.perf_counter()
    df.select("id", udf("text").alias("emb")).write.format("noop").mode("overwrite").save()
    seconds = time.perf_counter() - t0
    sampler.stop()
    hwm = rss.hwm(sampler.peak_by_pid)
    counters = {k: v - m0.get(k, 0) for k, v in udf.metrics().items()}
    spark.stop()
    return {
        "rows": n, "seconds": seconds, "rows_per_s": n / seconds, "session_start_s": session_s,
        "backend": rss.backend, "samples": sampler.samples, "worker_processes": sampler.max_procs,
        "baseline_sum_rss": sum(base.values()), "peak_sum_rss": sampler.peak_sum,
        "peak_max_process_rss": max(sampler.peak_by_pid.values(), default=0),
        "peak_by_pid": sampler.peak_by_pid,
        "baseline_pss_sum": base_pss, "peak_pss_sum": sampler.peak_pss_sum,
        "baseline_uss_sum": base_uss, "peak_uss_sum": sampler.peak_uss_sum, "vmhwm_sum": sum(hwm.values()),
        "vmhwm_max_process": max(hwm.values(), default=0), "counters": counters,
    }


# -- driver (parent process) --------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated row counts; ratio is last/first")
    ap.add_argument("--arrow-batch", type=int, default=2000, help="spark.sql.execution.arrow.maxRecordsPerBatch")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--token-budget", type=int, default=None)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "openvino"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"])
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--warmup-rows", type=int, default=256)
    ap.add_argument("--words", default="5,44",
                    help="MIN,MAX words per generated row (the tiny tokenizer's max_length is 64 tokens; "
                         "long rows show the cost of tokenizing text that truncation throws away)")
    ap.add_argument("--interval", type=float, default=0.2, help="RSS sampling period, seconds")
    ap.add_argument("--json", dest="json_path", default=None, help="write the results as JSON here")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child is not None:
        res = run_one(args)
        with open(args.child_out, "w") as f:
            json.dump(res, f)
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"tiny BERT embed via spark_infer.predict_udf, master={args.master}, {args.partitions} partitions, "
          f"arrow.maxRecordsPerBatch={args.arrow_batch}, batch_size={args.batch_size}, "
          f"max_length={args.max_length}, {args.words.replace(',', '..')} words a row, "
          f"RSS sampled every {args.interval} s", flush=True)
    results: dict[int, dict[str, Any]] = {}
    passthrough = ["--arrow-batch", str(args.arrow_batch), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--master", args.master,
                   "--partitions", str(args.partitions), "--warmup-rows", str(args.warmup_rows),
                   "--words", args.words, "--backend", args.backend, "--precision", args.precision,
                   "--interval", str(args.interval)]
    if args.token_budget:
        passthrough += ["--token-budget", str(args.token_budget)]
    for rows in sizes:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
            out_path = tmp.name
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", str(rows),
                               "--child-out", out_path, *passthrough], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout + proc.stderr)
            print(f"{rows} rows: child failed with exit code {proc.returncode}")
            return 1
        with open(out_path) as f:
            r = json.load(f)
        os.unlink(out_path)
        r["wall_s"] = time.perf_counter() - t0
        results[rows] = r
        c = r["counters"]
        print(f"{rows:>7} rows: scored in {r['seconds']:.1f} s ({r['rows_per_s']:.0f} rows/s); "
              f"{r['worker_processes']} worker processes ({r['backend']}, {r['samples']} samples)\n"
              f"         peak RSS sum {mib(r['peak_sum_rss']):7.1f} MiB  "
              f"(after warm-up {mib(r['baseline_sum_rss']):.1f} MiB, "
              f"growth {mib(r['peak_sum_rss'] - r['baseline_sum_rss']):+.1f} MiB)\n"
              f"         peak RSS of one process {mib(r['peak_max_process_rss']):7.1f} MiB; "
              f"VmHWM sum {mib(r['vmhwm_sum']):.1f} MiB, max {mib(r['vmhwm_max_process']):.1f} MiB\n"
              f"         peak PSS sum {mib(r['peak_pss_sum']):7.1f} MiB (after warm-up {mib(r['baseline_pss_sum']):.1f}); "
              f"peak USS (private) sum {mib(r['peak_uss_sum']):.1f} MiB (after warm-up {mib(r['baseline_uss_sum']):.1f})\n"
              f"         counters: rows={c.get('rows')} micro_batches={c.get('micro_batches')} "
              f"model_loads={c.get('model_loads')} error_rows={c.get('error_rows', 0)}  "
              f"(child wall {r['wall_s']:.0f} s, session start {r['session_start_s']:.1f} s)", flush=True)

    report: dict[str, Any] = {"args": {k: v for k, v in vars(args).items() if not k.startswith("child")},
                              "results": {str(k): v for k, v in results.items()}}
    if len(sizes) >= 2:
        lo, hi = results[sizes[0]], results[sizes[-1]]
        ratios = {
            "peak_sum_rss": hi["peak_sum_rss"] / lo["peak_sum_rss"],
            "peak_max_process_rss": hi["peak_max_process_rss"] / lo["peak_max_process_rss"],
            "vmhwm_sum": hi["vmhwm_sum"] / lo["vmhwm_sum"],
            "peak_pss_sum": hi["peak_pss_sum"] / lo["peak_pss_sum"] if lo["peak_pss_sum"] else float("nan"),
        }
        growth_lo = lo["peak_sum_rss"] - lo["baseline_sum_rss"]
        growth_hi = hi["peak_sum_rss"] - hi["baseline_sum_rss"]
        report["growth_over_warmup_mib"] = {str(sizes[0]): mib(growth_lo), str(sizes[-1]): mib(growth_hi)}
        report["ratios"] = ratios
        ok = ratios["peak_sum_rss"] <= TARGET_RATIO
        report["within_target"] = ok
        print(f"ratio {sizes[-1]}/{sizes[0]}: peak RSS sum {ratios['peak_sum_rss']:.3f}, "
              f"peak one process {ratios['peak_max_process_rss']:.3f}, VmHWM sum {ratios['vmhwm_sum']:.3f}, "
              f"peak PSS sum {ratios['peak_pss_sum']:.3f} -> {'OK' if ok else 'ABOVE'} target {TARGET_RATIO}")
        print(f"growth of the RSS sum over the post-warm-up baseline: {mib(growth_lo):+.1f} MiB ({sizes[0]} rows) vs "
              f"{mib(growth_hi):+.1f} MiB ({sizes[-1]} rows)")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
