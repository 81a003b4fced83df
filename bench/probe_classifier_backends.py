#!/usr/bin/env python
"""Issue #22 probe: can a tiny sequence classifier go through the same export paths as embed?

A random tiny BertForSequenceClassification (seeded; hidden 32, 2 layers, 3 labels) is exported to
ONNX (TorchScript exporter, dynamic batch/sequence, output `logits`) and run with ONNX Runtime fp32,
ORT dynamic int8 (per channel), OpenVINO fp32 (f32 hint), bf16, int8 weight-only; prints the max
logit error and the argmax agreement vs eager torch fp32 on random token batches.

    .venv/bin/python bench/probe_classifier_backends.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch


def main() -> int:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    rng = np.random.default_rng(0)
    batches = []
    for n, width in ((8, 5), (16, 17), (4, 64)):
        ids = rng.integers(5, 1000, size=(n, width))
        mask = np.ones_like(ids)
        for k in range(n):
            cut = rng.integers(2, width + 1)
            mask[k, cut:] = 0
            ids[k, cut:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.inference_mode():
        ref = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy() for b in batches]

    work = tempfile.mkdtemp(prefix="cls_probe_")
    path = os.path.join(work, "cls.onnx")
    b0 = batches[1]
    torch.onnx.export(model, tuple(torch.from_numpy(b0[n]) for n in names), path, input_names=names,
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}})
    runs = {}
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = os.path.join(work, "cls_int8.onnx")
    quantize_dynamic(path, q, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    for name, p in (("ort-fp32", path), ("ort-int8", q)):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        runs[name] = [s.run(None, b)[0] for b in batches]
    import nncf
    import openvino as ov

    core = ov.Core()
    m = ov.convert_model(path)
    mw = nncf.compress_weights(m.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    for name, mm, hint in (("ov-fp32", m, "f32"), ("ov-bf16", m, "bf16"), ("ov-int8w", mw, "f32")):
        cm = core.compile_model(mm, "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": hint})
        runs[name] = [next(iter(cm(b).values())) for b in batches]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        runs["torch-bf16"] = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.float().numpy()
                              for b in batches]
    for name, outs in runs.items():
        err = max(float(np.abs(o - r).max()) for o, r in zip(outs, ref, strict=True))
        agree = np.mean(np.concatenate([o.argmax(-1) == r.argmax(-1) for o, r in zip(outs, ref, strict=True)]))
        print(f"{name:10s} max logit error {err:.2e}  argmax agreement {agree:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
