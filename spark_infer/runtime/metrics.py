"""Worker-side counters, summed on the driver (an accumulator or metric rows, by session kind)."""

from __future__ import annotations

from collections import Counter

#: names every counter set carries, so reports never miss a zero
COUNTER_NAMES = (
    "rows",  # rows seen (including null inputs)
    "null_rows",  # rows whose input was null (null output, no error)
    "scored_rows",  # rows that produced an output
    "error_rows",  # rows whose output is null because scoring them raised
    "invalid_output_rows",  # error rows whose generated output is not a valid value (response_format)
    "tokens",  # real (unpadded) input tokens
    "padded_tokens",  # tokens including padding, as run by the model
    "truncated_rows",  # rows cut to max_length
    "micro_batches",
    "oom_backoffs",
    "model_loads",
)


def new_counters() -> Counter[str]:
    return Counter({k: 0 for k in COUNTER_NAMES})
