#!/usr/bin/env python
"""The GPU path, proved on a real accelerator in one command (a script, not a test).

    python bench/gpu_check.py --quick --json gpu.json      # one GPU, about 5 minutes
    python bench/gpu_check.py --dry                        # CPU only: every step but the device (CI)

Steps, each a row of the printed table and a key of the JSON:

  a  parity: the packaged MiniLM's embeddings on cuda in float32 and in bfloat16 vs the CPU in
     float32, per-row cosine (minimum reported; goal for bfloat16 >= 0.999)
  b  throughput on local[1] with the GPU: spark-infer predict_udf and predict_frame vs the bare
     length-sorted torch loop on the same GPU and vs pyspark's predict_batch_udf, same model, same
     micro-batch size (goals: >= 0.9x the bare loop, >= 3x predict_batch_udf), for the packaged
     MiniLM and for a BERT-large-shaped encoder with random weights (the GPU is the bottleneck), and
     the tokenize-ahead gain (prefetch on vs off)
  c  GPU utilisation sampled with NVML (nvidia-ml-py) every 50 ms during the timed spark-infer runs
     (goal >= 90%)
  d  a real CUDA out-of-memory error forced on the large model (huge micro-batches of long rows, no
     token budget): the backoff halves the batch, every row is scored, the counter says how often
  e  peak GPU memory per Python worker, from the run record of a job run

`--dry` runs the same code on the CPU with tiny shapes: parity compares bfloat16 on the CPU, the
utilisation sampler reports "no NVML", and the OOM is raised by a stand-in that fails micro-batches
above a size, so the backoff path runs for real. CI runs it (`tests/test_gpu_check.py`) so the
script cannot rot. The README's GPU block is filled from the JSON of a real run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
sys.path.insert(0, ROOT)


# -- inputs --------------------------------------------------------------------------------------------
def corpus(rows: int, seed: int = 0) -> list[str]:
    """Real text with a long-tailed length distribution: the stdlib's docstrings (no download)."""
    from bench_embed import stdlib_docstrings

    texts, _ = stdlib_docstrings(seed=seed)
    out = []
    while len(out) < rows:
        out += texts
    return out[:rows]


def large_encoder(path: str, dry: bool) -> str:
    """A BERT-large-shaped encoder with random weights (safetensors) and MiniLM's tokenizer."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel

    from spark_infer.models import resolve_model

    minilm = resolve_model(None).local_dir()
    cfg = BertConfig(vocab_size=30522, hidden_size=64 if dry else 1024, num_hidden_layers=2 if dry else 24,
                     num_attention_heads=4 if dry else 16, intermediate_size=128 if dry else 4096,
                     max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(cfg).eval().save_pretrained(path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if os.path.exists(os.path.join(minilm, f)):
            shutil.copy(os.path.join(minilm, f), path)
    return path


# -- the baselines -------------------------------------------------------------------------------------
def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def bare_loop(model_dir: str, texts: list[str], batch_size: int, device: str, dtype: str, max_length: int
              ) -> tuple[np.ndarray, float]:
    """The best a script can do: tokenize once, sort by length, padded micro-batches, mean pooling."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
    t0 = time.perf_counter()
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([len(e) for e in enc], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            batch = tok.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            emb = mean_pool(model(input_ids=ids, attention_mask=mask).last_hidden_state, mask).float()
            out[idx] = torch.nn.functional.normalize(emb, dim=1).cpu().numpy()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


# -- GPU utilisation ------------------------------------------------------------------------------------
class Utilisation:
    """Samples the GPU's utilisation with NVML every 50 ms while active."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.reason = ""
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # noqa: BLE001 - no NVML (CPU, or nvidia-ml-py missing)
            self._nvml, self.reason = None, f"no NVML ({type(exc).__name__})"

    def __enter__(self) -> Utilisation:
        self._stop.clear()
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(int(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join(timeout=1)

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


# -- Spark variants ---------------------------------------------------------------------------------------
def spark_variants(spark, model_dir: str, texts: list[str], batch_size: int, max_length: int, device: str,
                   util: Utilisation) -> dict[str, Any]:
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import ArrayType, FloatType

    from spark_infer import predict_frame, predict_udf

    df = spark.createDataFrame([(i, t) for i, t in enumerate(texts)], "id long, text string").repartition(1).cache()
    df.count()
    # the warm-up reads every row of a small frame: a Python worker whose task stopped reading early
    # (`limit`) is not reused, so the timed run would pay for a new worker (torch import, model load)
    small = spark.createDataFrame([(i, t) for i, t in enumerate(texts[:8])], "id long, text string").repartition(1)
    res: dict[str, Any] = {}

    def timed(name: str, make, sample_util: bool = False) -> None:
        make(small).write.format("noop").mode("overwrite").save()  # the model loads outside the timing
        out_df = make(df)
        t0 = time.perf_counter()
        if sample_util:
            with util:
                out_df.write.format("noop").mode("overwrite").save()
        else:
            out_df.write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - t0
        res[name] = {"seconds": seconds, "rows_per_s": len(texts) / seconds}

    for prefetch in ("on", "off"):
        udf = predict_udf("embed", model=model_dir, batch_size=batch_size, max_length=max_length, device=device,
                          prefetch=prefetch)
        timed(f"predict_udf prefetch={prefetch}", lambda d, u=udf: d.select("id", u("text").alias("e")),
              sample_util=prefetch == "on")
    timed("predict_frame", lambda d: predict_frame(d, "text", "embed", model=model_dir, keys=["id"],
                                                   batch_size=batch_size, max_length=max_length, device=device))

    def make_predict_fn():
        import torch
        from transformers import AutoModel, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModel.from_pretrained(model_dir).to(device).eval()

        def predict(batch: np.ndarray) -> np.ndarray:
            enc = tok(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            with torch.inference_mode():
                mask = enc["attention_mask"].to(device)
                hidden = model(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state
                return torch.nn.functional.normalize(mean_pool(hidden, mask).float(), dim=1).cpu().numpy()

        return predict

    pbu = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=batch_size)
    timed("predict_batch_udf", lambda d: d.select("id", pbu("text").alias("e")))
    df.unpersist()
    return res


# -- OOM ---------------------------------------------------------------------------------------------------
def oom_check(model_dir: str, texts: list[str], device: str, dry: bool) -> dict[str, Any]:
    """Micro-batches far too big for the device, no token budget: the runtime backs off and finishes."""
    from collections import Counter

    import torch

    from spark_infer.runtime import MODEL_CACHE, RuntimeOptions, score_stream
    from spark_infer.runtime.spec import make_spec

    long_texts = [" ".join([t] * 40) for t in texts]
    spec = make_spec("embed", model_dir, max_length=512)
    counters: Counter[str] = Counter()
    restore = None
    if dry:  # a stand-in device that fails micro-batches of more than 8 rows, as a full GPU would
        from spark_infer.tasks.embed import EmbedTask

        real = EmbedTask.predict

        def small_device(self, encoding, idx):
            if len(idx) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (stand-in)")
            return real(self, encoding, idx)

        EmbedTask.predict, restore = small_device, real
    try:
        MODEL_CACHE.clear()
        t0 = time.perf_counter()
        outs = list(score_stream(spec, RuntimeOptions(batch_size=len(long_texts), device=device),
                                 [long_texts], counters))
        seconds = time.perf_counter() - t0
    finally:
        if restore is not None:
            from spark_infer.tasks.embed import EmbedTask

            EmbedTask.predict = restore
        MODEL_CACHE.clear()
    out, err = outs[0]
    return {"rows": len(long_texts), "scored": len(long_texts) - out.null_count, "errors": err.null_count,
            "oom_backoffs": counters["oom_backoffs"], "seconds": seconds}


def job_memory(spark, model_dir: str, texts: list[str], device: str) -> dict[str, Any]:
    """A job run on a tiny table: its record's peak GPU memory per worker (and that it ran)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from spark_infer import run_job

    base = tempfile.mkdtemp(prefix="gpu-check-job-")
    write_deltalake(os.path.join(base, "in"), pa.table({"id": pa.array(range(len(texts)), pa.int64()),
                                                          "text": texts}))
    s = run_job({"input": os.path.join(base, "in"), "output": os.path.join(base, "out"), "model": model_dir,
                 "device": device, "buckets": 2}, spark=spark)
    return {"exit_code": s.exit_code, "error": s.error, "gpu_memory_peak": s.gpu_memory_peak,
            "rows": s.rows_scored}


# -- main ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU only, tiny shapes: every step but the device")
    p.add_argument("--quick", action="store_true", help="fewer rows (fits in 5 minutes on one GPU)")
    p.add_argument("--json", help="write the results here")
    ns = p.parse_args(argv)
    import torch

    device = "cpu" if ns.dry else "cuda:0"
    if not ns.dry and not torch.cuda.is_available():
        print("no CUDA device: run with --dry on a CPU", file=sys.stderr)
        return 2
    rows = 48 if ns.dry else (4000 if ns.quick else 20000)
    batch = 16 if ns.dry else 128
    texts = corpus(rows)
    from spark_infer.models import resolve_model
    from spark_infer.sessions import build_session

    minilm = resolve_model(None).local_dir()
    large = large_encoder(tempfile.mkdtemp(prefix="gpu-check-large-"), ns.dry)
    result: dict[str, Any] = {"device": device if ns.dry else torch.cuda.get_device_name(0), "dry": ns.dry,
                              "rows": rows, "batch_size": batch}

    # a: parity
    ref, _ = bare_loop(minilm, texts, batch, "cpu", "float32", 256)
    fp32, _ = bare_loop(minilm, texts, batch, device, "float32", 256)
    bf16, _ = bare_loop(minilm, texts, batch, device, "bfloat16", 256)
    result["parity"] = {"cosine_min_float32": cosine_min(fp32, ref), "cosine_min_bfloat16": cosine_min(bf16, ref),
                        "goal_bfloat16": 0.999}

    # b, c: throughput and utilisation
    spark = build_session("gpu-check", "local[1]", {"spark.sql.execution.arrow.maxRecordsPerBatch": "1024",
                                                    "spark.ui.enabled": "false"})
    util = Utilisation()
    result["throughput"] = {}
    models = [("minilm", minilm), ("bert-large-shape", large)] if not ns.dry else [("tiny encoder", large)]
    for name, model in models:
        max_length = 256
        _, bare_s = bare_loop(model, texts, batch, device, "bfloat16" if not ns.dry else "float32", max_length)
        r = spark_variants(spark, model, texts, batch, max_length, device, util)
        bare_rps = rows / bare_s
        r["bare loop (sorted)"] = {"seconds": bare_s, "rows_per_s": bare_rps}
        udf = r["predict_udf prefetch=on"]["rows_per_s"]
        r["ratios"] = {
            "predict_udf / bare loop (goal >= 0.9)": udf / bare_rps,
            "predict_frame / bare loop (goal >= 0.9)": r["predict_frame"]["rows_per_s"] / bare_rps,
            "predict_udf / predict_batch_udf (goal >= 3)": udf / r["predict_batch_udf"]["rows_per_s"],
            "tokenize ahead: prefetch on / off": udf / r["predict_udf prefetch=off"]["rows_per_s"],
        }
        result["throughput"][name] = r
    result["gpu_utilisation"] = {"mean_pct": util.mean(), "samples": len(util.samples), "goal_pct": 90,
                                 "note": util.reason}

    # d: out of memory, e: memory per worker
    result["oom"] = oom_check(large, texts[: (64 if ns.dry else 512)], device, ns.dry)
    result["job"] = job_memory(spark, minilm, texts[:64], device)
    spark.stop()

    print(f"\nGPU check on {result['device']} ({'dry run on the CPU: ratios say nothing' if ns.dry else 'real device'}),"
          f" {rows} rows, micro-batches of {batch}")
    print("| step | measured | goal |")
    print("| --- | --- | --- |")
    par = result["parity"]
    print(f"| a parity float32 (min cosine vs CPU float32) | {par['cosine_min_float32']:.6f} | 1.0 |")
    print(f"| a parity bfloat16 (min cosine vs CPU float32) | {par['cosine_min_bfloat16']:.6f} | >= 0.999 |")
    for name, r in result["throughput"].items():
        for k, v in r["ratios"].items():
            goal = k.split("(goal ")[-1].rstrip(")") if "goal" in k else ""
            print(f"| b {name}: {k.split(' (goal')[0]} | {v:.2f}x | {goal} |")
        print(f"| b {name}: spark-infer rows/s | {r['predict_udf prefetch=on']['rows_per_s']:.1f} | |")
    u = result["gpu_utilisation"]
    shown = f"{u['mean_pct']:.1f}%" if u["mean_pct"] is not None else u["note"]
    print(f"| c GPU utilisation (mean during predict_udf) | {shown} | >= 90% |")
    o = result["oom"]
    print(f"| d forced OOM: backoffs, rows scored | {o['oom_backoffs']}, {o['scored']}/{o['rows']} | all rows |")
    j = result["job"]
    peak = max(j["gpu_memory_peak"].values()) / (1 << 20) if j["gpu_memory_peak"] else None
    print(f"| e peak GPU memory per worker (job record) | {f'{peak:.0f} MiB' if peak else 'n/a (CPU)'} | |")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    ok = j["exit_code"] == 0 and o["scored"] == o["rows"] and o["oom_backoffs"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
