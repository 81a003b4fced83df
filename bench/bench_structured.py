"""Constrained (response_format) vs unconstrained generation throughput on CPU, in the same run.

    python bench/bench_structured.py                      # tiny and small random GPT-2s, 200 rows each
    python bench/bench_structured.py --rows 400 --sizes 32x2,256x4,512x8

For each model size, the same prompts are generated through spark_infer's runtime (the code a Spark
worker runs) without a format and with each kind of format: a nested JSON schema, a Spark DDL
struct, a list of choices, a regex. Rows/s and generated tokens/s are reported as ratios to the
unconstrained run of the same model in the same process (machines are noisy; ratios travel).
Constrained rows usually stop earlier (the value ends, then eos), so tokens/s is the fairer figure
for the per-token cost of the grammar; rows/s is what a job sees.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "shipping", "product"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 24},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["category", "urgency", "summary", "tags"],
    "additionalProperties": False,
}
FORMATS = {
    "none": None,
    "json_schema": SCHEMA,
    "ddl_struct": '{"type":"struct","fields":[{"name":"category","type":"string","nullable":true,"metadata":{}},'
                  '{"name":"urgency","type":"integer","nullable":true,"metadata":{}}]}',
    "choices": ["billing", "shipping", "product quality", "other"],
    "regex": {"regex": r"[A-Z]{2}-[0-9]{4}"},
}
WORDS = "refund late delivery broken screen battery slow service great quality price customer order".split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--sizes", default="32x2,256x4", help="hidden x layers of each random GPT-2")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from structured_models import make_bytelevel_gpt2

    from spark_infer.runtime import RuntimeOptions, make_spec, score_stream
    from spark_infer.runtime.cache import MODEL_CACHE

    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30))) for _ in range(args.rows)]
    print(f"rows={args.rows} max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} "
          f"threads={args.threads}")
    print("| model | format | rows/s | tokens/s | rows/s ratio | tokens/s ratio | valid rows |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            hidden, layers = (int(x) for x in size.split("x"))
            model = make_bytelevel_gpt2(os.path.join(tmp, size), hidden=hidden, layers=layers)
            base: tuple[float, float] | None = None
            for name, fmt in FORMATS.items():
                opts = {"max_new_tokens": args.max_new_tokens}
                if fmt is not None:  # the details show each row's tokens; generation is the same
                    opts.update(response_format=fmt, return_generation=True)
                spec = make_spec("generate", model, **opts)
                runtime = RuntimeOptions(device="cpu", batch_size=args.batch_size)
                list(score_stream(spec, runtime, [prompts[:8]]))  # load + compile outside the clock
                t0 = time.perf_counter()
                spec_out = list(score_stream(spec, runtime, [prompts]))
                seconds = time.perf_counter() - t0
                rows = spec_out[0][0].to_pylist()
                # an error row (null) ran to max_new_tokens: count those tokens too
                tokens = sum(o["output_tokens"] if o else args.max_new_tokens for o in rows)
                valid = "-" if fmt is None else f"{sum(o is not None for o in rows)}/{len(rows)}"
                rps, tps = len(prompts) / seconds, tokens / seconds
                if base is None:
                    base = (rps, tps)
                print(f"| {size} | {name} | {rps:.1f} | {tps:.0f} | {rps / base[0]:.2f} | {tps / base[1]:.2f} | "
                      f"{valid} |", flush=True)
                MODEL_CACHE.clear()


if __name__ == "__main__":
    main()
