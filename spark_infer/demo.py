"""The embedded default: a deterministic sample Delta table of product texts, embedded with the
packaged all-MiniLM-L6-v2. `spark-infer demo` builds the table (once) and runs the real job on it.

Everything the demo writes stays in its folder (`--dir`, default `./demo-output`): the sample input,
the output, the run table and Spark's warehouse; nothing else lands in the working directory.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

CATEGORIES = ("books", "electronics", "garden", "kitchen", "toys")
_WORDS = {
    "books": (["novel", "cookbook", "biography", "atlas", "poetry collection", "thriller", "field guide"],
              ["gripping", "illustrated", "annotated", "award-winning", "pocket-sized", "first-edition"],
              ["about a lighthouse keeper", "on Mediterranean cooking", "of a forgotten explorer",
               "for birdwatchers", "set in 1920s Shanghai", "about learning to code", "on urban gardening"]),
    "electronics": (["headphones", "laptop stand", "USB-C charger", "e-reader", "smart speaker", "webcam",
                     "mechanical keyboard"],
                    ["wireless", "noise-cancelling", "ultra-slim", "fast-charging", "waterproof", "refurbished"],
                    ["with 30-hour battery life", "with a 4K sensor", "with hot-swappable switches",
                     "that pairs with two devices", "with a braided cable", "with a matte anti-glare screen"]),
    "garden": (["hose reel", "pruning shears", "raised bed", "compost bin", "bird feeder", "watering can",
                "seed starter kit"],
               ["galvanised", "frost-proof", "ergonomic", "cedar", "solar-powered", "collapsible"],
               ["for small balconies", "with a rust-proof finish", "that holds 200 litres",
                "for tomatoes and herbs", "with a squirrel guard", "with replaceable blades"]),
    "kitchen": (["chef's knife", "cast-iron skillet", "espresso grinder", "stand mixer", "cutting board",
                 "rice cooker", "spice rack"],
                ["hand-forged", "pre-seasoned", "dishwasher-safe", "bamboo", "non-stick", "stainless-steel"],
                ["with a walnut handle", "that goes from stovetop to oven", "with 40 grind settings",
                 "with a juice groove", "that keeps rice warm for 12 hours", "for a small kitchen"]),
    "toys": (["building blocks", "puzzle", "plush bear", "train set", "kite", "board game", "science kit"],
             ["wooden", "glow-in-the-dark", "educational", "1000-piece", "battery-free", "award-winning"],
             ["for ages 3 and up", "with 120 colourful pieces", "that teaches basic circuits",
              "for family game night", "with a figure-eight track", "that flies in light wind"]),
}
_EXTRA = [
    "Ships in recyclable packaging.", "Customers praise its build quality.", "Backed by a two-year warranty.",
    "Some reviewers found the instructions unclear.", "Available in three colours.",
    "It arrived a day late but works perfectly.", "The price is fair for what you get.",
    "A thoughtful gift for someone who has everything.", "Assembly takes about ten minutes.",
    "Note: the colour may differ slightly from the photo.",
]


def sample_rows(rows: int = 3000, seed: int = 20261129) -> list[tuple[int, str, str, str]]:
    """(id, category, title, text) rows, identical for the same seed."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        cat = CATEGORIES[i % len(CATEGORIES)]
        nouns, adjs, tails = _WORDS[cat]
        noun, adj, tail = rng.choice(nouns), rng.choice(adjs), rng.choice(tails)
        title = f"{adj.capitalize()} {noun}"
        sentences = [f"A {adj} {noun} {tail}."]
        sentences += rng.sample(_EXTRA, k=rng.randint(0, 6))
        out.append((i, cat, title, " ".join(sentences)))
    return out


def write_sample_table(spark, path: str, rows: int = 3000) -> bool:
    """Write the sample table at `path` unless a Delta table is already there. True if written."""
    from spark_infer.tables import TableRef

    if TableRef(path).exists(spark):
        return False
    df = spark.createDataFrame(sample_rows(rows), "id long, category string, title string, text string")
    df.repartition(1).write.format("delta").partitionBy("category").save(path)
    return True


def run_demo(base_dir: str = "demo-output", rows: int = 3000, master: str = "local[2]",
             overrides: dict[str, Any] | None = None) -> int:
    """Write the sample table under `base_dir` (once), embed it incrementally, show a few rows.

    Returns the job's exit code. `overrides` are extra config fields (the command line's flags).
    """
    from spark_infer.config import build_config
    from spark_infer.errors import SinkUnavailable
    from spark_infer.run import ExitCode, execute
    from spark_infer.sessions import build_session

    base = os.path.abspath(base_dir)
    inp, out = os.path.join(base, "products"), os.path.join(base, "product_embeddings")
    try:
        spark = build_session("spark-infer-demo", master, warehouse_dir=os.path.join(base, "spark-warehouse"))
    except SinkUnavailable as exc:  # Delta's jars could not be downloaded: the message says what to do
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return int(ExitCode.ERROR)
    if write_sample_table(spark, inp, rows):
        print(f"demo: wrote sample table {inp} ({rows} rows, partitioned by category)")
    fields = {"input": inp, "output": out, "task": "embed", "id_col": "id", "text_col": "text",
              "job_name": "spark-infer-demo", **(overrides or {})}
    summary = execute(lambda: build_config(overrides=fields), spark=spark, print_plan=True)
    code = int(summary.exit_code if summary.exit_code is not None else ExitCode.ERROR)
    if code == 0:
        res = spark.read.format("delta").load(out)
        print(f"demo: output {out}: {res.count()} rows")
        for r in res.orderBy("id").limit(3).collect():
            print(f"  id={r.id} category={r.category} embedding[:4]={[round(x, 4) for x in r.embedding[:4]]} "
                  f"dim={len(r.embedding)} model={r.model} error={r.error}")
    spark.stop()
    return code
