#!/usr/bin/env python
"""The embed task on each CPU backend x precision (spark_infer.backends) against the length-sorted
eager fp32 loop, in the same run: rows/s ratio and fidelity (min cosine, max element error vs fp32).

Rows are the stdlib's docstrings (bench_embed.stdlib_docstrings: real text, 1,500 by default), sorted
by token count and cut into batches of `--batch-size`; the baseline runs the packaged model's own
sentence-transformers modules in eager torch fp32 over the same batches (what `bench_embed.py
--variants b,d` measured at 0.95x for our previous path). Each variant is the task spark-infer runs
(`make_spec(...).load("cpu")`, its `predict` on the same batches), so conversion, thread setup and
the pooling modules are the real ones. Passes are interleaved (baseline, every variant, repeat) and
the best of `--rounds` is kept, so a noisy neighbour hurts every variant alike. Conversions are made
before timing (the cache folder is a fresh temp dir unless --cache is given) and reported apart.

    python bench/bench_backends.py                                  # 1,500 rows, 1 thread
    python bench/bench_backends.py --threads 1,2 --json bench/results/backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_cpu_backends import cpu_info  # noqa: E402
from bench_embed import stdlib_docstrings  # noqa: E402

VARIANTS = ["torch/bf16", "onnx/fp32", "openvino/fp32", "openvino/bf16", "openvino/int8"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", default="1", help="comma-separated intra-op thread counts")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cache", default=None, help="SPARK_INFER_CACHE (default: a fresh temp dir)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    os.environ["SPARK_INFER_CACHE"] = args.cache or tempfile.mkdtemp(prefix="bench-backends-")

    import torch

    from spark_infer.runtime.spec import make_spec

    texts = stdlib_docstrings()[0][: args.rows]
    variants = [v for v in args.variants.split(",") if v]
    tasks: dict[str, Any] = {}
    setup_s: dict[str, float] = {}
    for name in ["torch/fp32", *variants]:
        backend, precision = name.split("/")
        t0 = time.perf_counter()
        tasks[name] = make_spec("embed", None, device_kind="cpu", backend=backend, precision=precision).load("cpu")
        setup_s[name] = round(time.perf_counter() - t0, 2)  # load + conversion (cached once per machine)
    base_task = tasks["torch/fp32"]
    enc = base_task.encode(texts)
    order = np.argsort([len(r) for r in enc.ids], kind="stable")
    batches = [order[i: i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    tokens = sum(len(r) for r in enc.ids)

    st = base_task.model
    features = [st.preprocess([texts[j] for j in idx]) for idx in batches]  # tokenized before timing, as enc is

    def baseline_pass() -> tuple[float, np.ndarray]:
        """The eager loop: the model's own modules in torch fp32, over the same padded batches."""
        out = np.zeros((len(texts), 384), dtype=np.float32)
        t0 = time.perf_counter()
        for idx, feats in zip(batches, features, strict=True):
            with torch.inference_mode():
                out[idx] = st(dict(feats))["sentence_embedding"].numpy()
        return time.perf_counter() - t0, out

    def task_pass(task: Any) -> tuple[float, np.ndarray]:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        t0 = time.perf_counter()
        for idx in batches:
            out[idx] = np.asarray(task.predict(enc, idx).values).reshape(len(idx), -1)
        return time.perf_counter() - t0, out

    report: dict[str, Any] = {"cpu": cpu_info(), "rows": len(texts), "tokens": tokens,
                              "batch_size": args.batch_size, "setup_s": setup_s,
                              "versions": _versions(), "threads": {}}
    print(f"{len(texts)} docstrings, {tokens} tokens, batches of {args.batch_size}; CPU {report['cpu'].get('model')}")
    print(f"flags: {' '.join(report['cpu'].get('flags', []))}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, task in tasks.items():  # the backends' sessions were built with the load-time count
            runner = getattr(task.model[0], "runner", None)
            if runner is not None and runner.threads != threads:
                b, p = name.split("/")
                tasks[name] = make_spec("embed", None, device_kind="cpu", backend=b, precision=p).load("cpu")
        times: dict[str, list[float]] = {"eager-loop/fp32": [], **{n: [] for n in tasks}}
        outs: dict[str, np.ndarray] = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.rounds):
            s, outs["eager-loop/fp32"] = baseline_pass()
            times["eager-loop/fp32"].append(s)
            for name, task in tasks.items():
                s, outs[name] = task_pass(task)
                times[name].append(s)
        ref = outs["eager-loop/fp32"]
        base = min(times["eager-loop/fp32"])
        rows = {}
        for name, ts in times.items():
            o = outs[name]
            cos = (o * ref).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(ref, axis=1)
            rows[name] = {"seconds": round(min(ts), 3), "rows_per_s": round(len(texts) / min(ts), 1),
                          "ratio": round(base / min(ts), 2), "min_cosine": float(cos.min()),
                          "max_element_error": float(np.abs(o - ref).max())}
        report["threads"][threads] = {"load": [load0, os.getloadavg()[0]], "variants": rows}
        print(f"\nthreads={threads} (load {load0:.2f} -> {os.getloadavg()[0]:.2f})")
        print(f"  {'variant':18s} {'rows/s':>8s} {'ratio':>6s} {'min cos':>9s} {'max err':>9s}")
        for name, r in rows.items():
            print(f"  {name:18s} {r['rows_per_s']:8.1f} {r['ratio']:6.2f} {r['min_cosine']:9.6f} "
                  f"{r['max_element_error']:9.2e}")
    print(f"\nsetup (load + conversion) seconds: {setup_s}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=1)
    return 0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for dist in ("torch", "transformers", "sentence-transformers", "onnx", "onnxruntime", "openvino", "nncf"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = "none"
    return out


if __name__ == "__main__":
    sys.exit(main())
