#!/usr/bin/env python
"""Does each backend x precision give the same vectors on another CPU? Writes the embed task's vectors
for real texts (stdlib docstrings) and what the process's libraries detect of the CPU, so two runs can
be compared: one native, one on an AVX2-only CPU (here emulated: `qemu-x86_64 -cpu Haswell`, AVX2 and
FMA, no AVX-512, no VNNI, no bf16; speed under emulation means nothing, the numbers do).

    python bench/check_cross_cpu.py --out native.npz
    qemu-x86_64 -cpu Haswell $(which python) bench/check_cross_cpu.py --out avx2.npz
    python bench/check_cross_cpu.py --compare native.npz avx2.npz

Run the native one first with the same SPARK_INFER_CACHE: conversions are then made once, natively,
and both runs load the same converted files (as two machines of a cluster would convert alike: the
conversion is deterministic, which the cache key assumes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

COMBOS = ["torch/fp32", "onnx/fp32", "openvino/fp32", "torch/bf16", "openvino/bf16", "openvino/int8"]


def detect() -> dict[str, str]:
    import torch

    info = {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    try:
        import openvino as ov

        info["openvino_capabilities"] = " ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception as exc:  # noqa: BLE001
        info["openvino_capabilities"] = f"error {exc}"
    return info


def run(out: str, rows: int, combos: list[str]) -> None:
    from bench_embed import stdlib_docstrings

    from spark_infer.runtime.spec import make_spec

    texts = stdlib_docstrings()[0][:rows]
    arrays = {}
    for name in combos:
        backend, precision = name.split("/")
        task = make_spec("embed", None, device_kind="cpu", backend=backend, precision=precision).load("cpu")
        enc = task.encode(texts)
        order = np.argsort([len(r) for r in enc.ids], kind="stable")
        vec = np.zeros((len(texts), 384), dtype=np.float32)
        for i in range(0, len(order), 32):
            idx = order[i: i + 32]
            vec[idx] = np.asarray(task.predict(enc, idx).values).reshape(len(idx), -1)
        arrays[name] = vec
        print(name, "done", flush=True)
    np.savez(out, info=json.dumps(detect()), **{k.replace("/", "_"): v for k, v in arrays.items()})
    print(json.dumps(detect()))


def compare(a_path: str, b_path: str) -> None:
    a, b = np.load(a_path), np.load(b_path)
    print("A:", a["info"], "\nB:", b["info"])
    ref = a["torch_fp32"]
    print(f"{'variant':16s} {'A vs A torch fp32':>22s} {'B vs A same variant':>22s} {'B vs A torch fp32':>22s}")
    for key in [k for k in a.files if k != "info"]:
        def err(x, y):
            cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
            return f"{np.abs(x - y).max():9.2e} / {cos.min():.6f}"
        print(f"{key:16s} {err(a[key], ref):>22s} {err(b[key], a[key]):>22s} {err(b[key], ref):>22s}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--combos", default=",".join(COMBOS))
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        run(args.out, args.rows, args.combos.split(","))
    return 0


if __name__ == "__main__":
    sys.exit(main())
