# Databricks notebook source
# MAGIC %md
# MAGIC # Embeddings into a Delta table (for a vector index)
# MAGIC
# MAGIC Runs the `spark-infer` scoring job (`task = embed`) from the widgets below: each input partition is
# MAGIC embedded and committed to the output Delta table once; rerunning the notebook scores only new or
# MAGIC changed partitions and commits nothing when everything is done. The notebook has no logic of its
# MAGIC own: it is `run_job` with its config taken from the widgets (shared helpers: `spark_infer.notebook`).
# MAGIC
# MAGIC * **Compute**: any access mode: dedicated clusters, standard (shared) or serverless compute (Spark
# MAGIC   Connect sessions), with `spark_infer` installed (cluster / environment library, or
# MAGIC   `%pip install /Volumes/<catalog>/<schema>/<volume>/spark_infer-0.2.0-py3-none-any.whl`).
# MAGIC   The active `spark` session is reused (Delta is built in on Databricks).
# MAGIC * **input**: a Delta table (catalog name such as `main.shop.products`, or a path). Empty = the demo
# MAGIC   sample table (`spark-infer demo`), written once under `demo_dir`.
# MAGIC * **output**: a Unity Catalog table name (`main.shop.product_embeddings`) to put a vector index on it.
# MAGIC * **model**: a model folder (for example on a Volume) or a Hugging Face id; empty = the packaged
# MAGIC   all-MiniLM-L6-v2 (384 dimensions).
# MAGIC
# MAGIC Outside Databricks the same file runs as plain Python (`python notebooks/embeddings_to_delta.py`):
# MAGIC each widget then reads `$SPARK_INFER_<NAME>` (e.g. `SPARK_INFER_OUTPUT=/data/emb`) or its default.
# MAGIC
# MAGIC Exit codes of the job (`spark_infer.run.ExitCode`): 0 ok, 2 bad configuration (nothing written), 3 some units
# MAGIC failed (committed units kept, rerun scores the rest), 4 a concurrent run wrote the same units (rerun
# MAGIC to finish), 5 stopped by a signal (rerun to continue). On Databricks any non-zero code fails the
# MAGIC cell (and the job task running the notebook).

# COMMAND ----------

try:
    from spark_infer.notebook import (
        finish,
        input_table,
        job_fields,
        job_widgets,
        read_output,
        session,
        widgets,
    )
except ImportError as exc:  # opened on compute without the library: say what to do, not a bare traceback
    raise ImportError("spark-infer is not installed on this compute: `%pip install spark-infer` (or the wheel "
                      "from a Volume), or add it as a cluster / environment library") from exc

from spark_infer import run_job

# COMMAND ----------

w = widgets(globals().get("dbutils"))  # dbutils.widgets on Databricks; $SPARK_INFER_<NAME> elsewhere
job_widgets(w, output="demo-output/notebook_embeddings")  # input, output, model, columns, device, demo table
w.dropdown("normalize", "model", ["model", "true", "false"], "model: as its modules say; true/false: force")
w.dropdown("change_data_feed", "true", ["true", "false"], "Change Data Feed on output")

# COMMAND ----------

spark = session()                # on Databricks: the notebook's active session (classic or Spark Connect)
source = input_table(spark, w)   # the `input` widget, or the demo table (written once) when it is empty

# COMMAND ----------

config = {
    **job_fields(w, source),  # model: empty = the packaged all-MiniLM-L6-v2
    "task": "embed",
    "task_options": {"normalize": {"true": True, "false": False}.get(w.get("normalize"))},
    "change_data_feed": w.get("change_data_feed") == "true",  # needed by a Vector Search delta-sync index
    "job_name": "spark-infer-embeddings-notebook",
}

finish(run_job(config, spark=spark), globals().get("dbutils"))  # raises (Databricks) or exits on failure

# COMMAND ----------

result = read_output(spark, config["output"])
result.select("id", "embedding", "error", "model", "scored_at").show(5, truncate=60)

# COMMAND ----------

# MAGIC %md
# MAGIC ## A Vector Search index on the output
# MAGIC
# MAGIC A Databricks Vector Search **delta-sync index** with self-managed embeddings keeps itself in step with
# MAGIC this table. It reads the table's **Change Data Feed**, which is why `change_data_feed` defaults to
# MAGIC `true` (the job sets `delta.enableChangeDataFeed = true` on the output). The output must be a Unity
# MAGIC Catalog table; `id` is unique per row (primary key) and `embedding` is `array<float>`. A rescored
# MAGIC partition is a delete + insert of its rows in the change feed, so the index follows reruns.
# MAGIC
# MAGIC ```python
# MAGIC %pip install databricks-vectorsearch
# MAGIC from databricks.vector_search.client import VectorSearchClient
# MAGIC
# MAGIC VectorSearchClient().create_delta_sync_index(
# MAGIC     endpoint_name="my-vector-search-endpoint",
# MAGIC     index_name="main.shop.product_embeddings_index",
# MAGIC     source_table_name="main.shop.product_embeddings",   # this notebook's output
# MAGIC     pipeline_type="TRIGGERED",                          # sync after each nightly run
# MAGIC     primary_key="id",
# MAGIC     embedding_dimension=384,                            # all-MiniLM-L6-v2
# MAGIC     embedding_vector_column="embedding",
# MAGIC )
# MAGIC ```
# MAGIC
# MAGIC With `pipeline_type="TRIGGERED"`, call `index.sync()` after the job (for example as the next task of
# MAGIC the Databricks job that runs this notebook). Query with the same model: embed the query text with
# MAGIC `spark_infer.predict_udf("embed")` (or sentence-transformers) and pass it as `query_vector`.
