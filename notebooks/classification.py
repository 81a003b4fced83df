# Databricks notebook source
# MAGIC %md
# MAGIC # Text classification into a Delta table
# MAGIC
# MAGIC Runs the `spark-infer` scoring job (`task = classify`) from the widgets below: each input partition is
# MAGIC classified and committed to the output Delta table once; rerunning the notebook scores only new or
# MAGIC changed partitions and commits nothing when everything is done. The notebook has no logic of its
# MAGIC own: it is `run_job` with its config taken from the widgets (shared helpers: `spark_infer.notebook`).
# MAGIC
# MAGIC * **Compute**: any access mode: dedicated clusters, standard (shared) or serverless compute (Spark
# MAGIC   Connect sessions), with `spark_infer` installed (cluster / environment library, or
# MAGIC   `%pip install /Volumes/<catalog>/<schema>/<volume>/spark_infer-0.2.0-py3-none-any.whl`).
# MAGIC   The active `spark` session is reused (Delta is built in on Databricks).
# MAGIC * **input**: a Delta table (catalog name or path). Empty = the demo sample table (`spark-infer demo`),
# MAGIC   written once under `demo_dir`.
# MAGIC * **model**: a fine-tuned sequence-classification model: a folder (for example on a Volume) or a
# MAGIC   Hugging Face id already in the cluster's Hugging Face cache. Labels come from its `id2label`.
# MAGIC * **output**: `prediction` is `struct<label, score[, probabilities]>` (`probabilities` with
# MAGIC   `return_all_scores = true`). Scores are what `pipeline("text-classification")` gives: a multi-label
# MAGIC   model (`problem_type`) scores each label with its own sigmoid; `function_to_apply` forces one.
# MAGIC
# MAGIC Outside Databricks the same file runs as plain Python (`python notebooks/classification.py`): each widget then
# MAGIC reads `$SPARK_INFER_<NAME>` (e.g. `SPARK_INFER_OUTPUT=/data/out`) or its default.
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
job_widgets(w, output="demo-output/notebook_classification", model_label="classification model",
            model="distilbert/distilbert-base-uncased-finetuned-sst-2-english")
w.dropdown("return_all_scores", "false", ["true", "false"], "add every label's probability")
w.dropdown("function_to_apply", "default", ["default", "sigmoid", "softmax", "none"],
           "default: the model's problem_type (multi-label: sigmoid), as the transformers pipeline")
w.dropdown("change_data_feed", "false", ["true", "false"], "Change Data Feed on output")

# COMMAND ----------

spark = session()                # on Databricks: the notebook's active session (classic or Spark Connect)
source = input_table(spark, w)   # the `input` widget, or the demo table (written once) when it is empty

# COMMAND ----------

config = {
    **job_fields(w, source),  # input, output, model, columns, batch size, max length, device
    "task": "classify",
    "task_options": {
        "return_all_scores": w.get("return_all_scores") == "true",
        "function_to_apply": w.get("function_to_apply"),
    },
    "change_data_feed": w.get("change_data_feed") == "true",
    "job_name": "spark-infer-classification-notebook",
}

finish(run_job(config, spark=spark), globals().get("dbutils"))  # raises (Databricks) or exits on failure

# COMMAND ----------

result = read_output(spark, config["output"])
result.groupBy("prediction.label").count().show()
result.select("id", "prediction", "error", "model", "scored_at").show(5, truncate=60)
