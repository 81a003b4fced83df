"""Write a Delta table of synthetic customers, partitioned by region (the job's scoring units).

    python -m examples.churn.make_customers --out /tmp/spark-infer-churn/customers --rows 20000
"""

from __future__ import annotations

import argparse

from examples.churn.synthetic import generate_customers

SCHEMA = ("customer_id long, region string, tenure_months int, monthly_charges double, "
          "support_calls int, plan string")


def make_customers(spark, path: str, n: int = 20_000, seed: int = 42, start_id: int = 0,
                   mode: str = "overwrite") -> int:
    """Write `n` customers (ids from start_id) to the Delta table at `path`; returns n."""
    df = spark.createDataFrame(generate_customers(n, seed=seed, start_id=start_id), SCHEMA)
    df.write.format("delta").mode(mode).partitionBy("region").save(path)
    return n


def main(argv: list[str] | None = None) -> None:
    from spark_infer.sessions import build_session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/spark-infer-churn/customers")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--master", default="local[*]")
    a = ap.parse_args(argv)
    spark = build_session("churn-customers", master=a.master)
    try:
        print(f"wrote {make_customers(spark, a.out, a.rows, a.seed)} customers to {a.out}")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
