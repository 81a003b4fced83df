"""A Spark Connect client process for tests/test_connect.py (a process of its own: PySpark decides
classic or Connect per process, so Connect clients do not share the test process).

    python tests/connect_client.py sc://localhost:PORT OUT.json MODEL_DIR

Scores fixed texts with `predict_udf` and `predict_frame` over the Connect session and writes what it
got (rows, the UDF's `.metrics()`, the frame's `ScoringMetrics`) as JSON.
"""

from __future__ import annotations

import json
import sys


def main(url: str, out_path: str, model: str) -> int:
    from pyspark.sql import SparkSession

    from spark_infer import ScoringMetrics, predict_frame, predict_udf
    from spark_infer.sessions import capabilities

    spark = SparkSession.builder.remote(url).getOrCreate()
    assert capabilities(spark).kind == "connect"
    rows = [(i, None if i % 7 == 3 else f"good great product text number {i}" + " fine" * (i % 4)) for i in range(40)]
    df = spark.createDataFrame(rows, "id long, text string")
    embed = predict_udf("embed", model=model, batch_size=8, return_error=True)
    udf_rows = sorted(df.select("id", embed("text").alias("e")).collect(), key=lambda r: r.id)
    metrics = ScoringMetrics()
    frame = predict_frame(df, "text", "embed", model=model, keys=["id"], batch_size=8, metrics=metrics)
    frame_rows = sorted(frame.collect(), key=lambda r: r.id)  # one action: the metrics are of it
    result = {
        "udf": [{"id": r.id, "prediction": r.e.prediction, "error": r.e.error} for r in udf_rows],
        "udf_metrics": embed.metrics(),
        "frame": [{"id": r.id, "prediction": r.prediction, "error": r.error} for r in frame_rows],
        "frame_metrics": metrics.value(),
        "frame_columns": frame.columns,
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
