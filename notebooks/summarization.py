# Databricks notebook source
# MAGIC %md
# MAGIC # Summaries (text generation) into a Delta table
# MAGIC
# MAGIC Runs the `spark-infer` scoring job (`task = generate`) from the widgets below: every row's columns are
# MAGIC put into `prompt_template` and the model's completion (at most `max_new_tokens` tokens) is written to
# MAGIC `prediction` (`struct<text, input_tokens, output_tokens, finish_reason>`). Each input partition is
# MAGIC committed to the output Delta table once; rerunning the notebook scores only new or changed
# MAGIC partitions. Changing the template or `max_new_tokens` changes the model fingerprint, so the next run
# MAGIC rescores everything. The notebook has no logic of its own: it is `run_job` with its config taken from
# MAGIC the widgets (shared helpers: `spark_infer.notebook`).
# MAGIC
# MAGIC * **Compute**: a dedicated GPU cluster for real models (Spark Connect compute, standard or serverless,
# MAGIC   runs it too, on CPUs), with `spark_infer` installed (cluster library, or
# MAGIC   `%pip install /Volumes/<catalog>/<schema>/<volume>/spark_infer-0.2.0-py3-none-any.whl`).
# MAGIC   The active `spark` session is reused (Delta is built in on Databricks).
# MAGIC * **input**: a Delta table (catalog name or path). Empty = the demo sample table (`spark-infer demo`),
# MAGIC   written once under `demo_dir`.
# MAGIC * **model**: a seq2seq (T5, BART) or decoder-only model: a folder (for example on a Volume) or a
# MAGIC   Hugging Face id already in the cluster's Hugging Face cache. `chat_template = true` wraps the prompt
# MAGIC   as a user message with the tokenizer's chat template (instruction-tuned models).
# MAGIC * **prompt_template**: a `str.format` template over the input's columns, e.g. `{title}`, `{text}`;
# MAGIC   a row with a null field gets a null prediction and the field named in `error`.
# MAGIC
# MAGIC Outside Databricks the same file runs as plain Python (`python notebooks/summarization.py`): each widget then
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
job_widgets(w, output="demo-output/notebook_summaries", model="Qwen/Qwen2.5-0.5B-Instruct",
            model_label="generative model", batch_size="8")
w.text("prompt_template", "Summarize this product description in one sentence: {text}", "prompt")
w.text("max_new_tokens", "64", "max new tokens")
w.dropdown("chat_template", "true", ["true", "false"], "use the tokenizer's chat template")
w.dropdown("change_data_feed", "false", ["true", "false"], "Change Data Feed on output")

# COMMAND ----------

spark = session()                # on Databricks: the notebook's active session (classic or Spark Connect)
source = input_table(spark, w)   # the `input` widget, or the demo table (written once) when it is empty

# COMMAND ----------

config = {
    **job_fields(w, source),  # input, output, model, columns, batch size, max prompt tokens, device
    "task": "generate",
    "task_options": {
        "prompt_template": w.get("prompt_template"),
        "max_new_tokens": w.get("max_new_tokens"),
        "chat_template": w.get("chat_template") == "true",
    },
    "change_data_feed": w.get("change_data_feed") == "true",
    "job_name": "spark-infer-summarization-notebook",
}

finish(run_job(config, spark=spark), globals().get("dbutils"))  # raises (Databricks) or exits on failure

# COMMAND ----------

result = read_output(spark, config["output"])
result.select("id", "prediction.text", "prediction.finish_reason", "error").show(5, truncate=80)
