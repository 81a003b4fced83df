# Databricks notebook source
# MAGIC %md
# MAGIC # Extraction into typed columns (structured LLM output) into a Delta table
# MAGIC
# MAGIC Reads each row (e.g. a support ticket), asks a generative model to fill the fields of
# MAGIC `response_format`, and writes them as a **typed struct column**: `ticket.category`, `ticket.urgency`,
# MAGIC ... are real Spark columns, not JSON text to parse. Decoding is constrained (xgrammar), so every
# MAGIC finished row is a valid value; a row that cannot be one (it ran out of `max_new_tokens` inside the
# MAGIC object) gets a null `ticket` and the reason in `error`, and counts against `max_error_rate`.
# MAGIC This is what `ai_query(..., responseFormat => 'STRUCT<...>')` does against a serving endpoint, run
# MAGIC here on the cluster's own GPUs/CPUs with a Hugging Face model. Each input partition is committed
# MAGIC once; changing `response_format` changes the model fingerprint (the next run rescores).
# MAGIC
# MAGIC * **Compute**: a dedicated GPU cluster for real models (Spark Connect compute, standard or serverless,
# MAGIC   runs it too, on CPUs), with `spark_infer` installed. The active `spark` session is reused.
# MAGIC * **input**: a Delta table (catalog name or path). Empty = the demo sample table (`spark-infer demo`).
# MAGIC * **model**: an instruction-tuned generative model (a folder, e.g. on a Volume, or a Hugging Face id in
# MAGIC   the cluster's cache); `chat_template = true` wraps the prompt with its chat template.
# MAGIC * **response_format**: a Spark DDL struct (`category STRING, urgency INT, tags ARRAY<STRING>`); in a
# MAGIC   job file it may also be a JSON schema, a list of choices or `{regex: ...}` (docs/tasks.md).
# MAGIC
# MAGIC Outside Databricks the same file runs as plain Python (`python notebooks/extraction.py`): each widget
# MAGIC then reads `$SPARK_INFER_<NAME>` (e.g. `SPARK_INFER_MODEL=/models/qwen`) or its default.
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
job_widgets(w, output="demo-output/notebook_extraction", model="Qwen/Qwen2.5-0.5B-Instruct",
            model_label="generative model", batch_size="8")
w.text("prompt_template", "Read this product listing and fill in the fields: {text}", "prompt")
w.text("response_format", "category STRING, price_mentioned BOOLEAN, colors ARRAY<STRING>", "fields (DDL)")
w.text("max_new_tokens", "96", "max new tokens")
w.text("max_error_rate", "0.1", "share of rows allowed to end without a valid value")
w.dropdown("chat_template", "true", ["true", "false"], "use the tokenizer's chat template")

# COMMAND ----------

spark = session()                # on Databricks: the notebook's active session (classic or Spark Connect)
source = input_table(spark, w)   # the `input` widget, or the demo table (written once) when it is empty

# COMMAND ----------

config = {
    **job_fields(w, source),  # input, output, model, columns, batch size, max prompt tokens, device
    "task": "generate",
    "output_col": "extracted",
    "task_options": {
        "prompt_template": w.get("prompt_template"),
        "response_format": w.get("response_format"),   # Spark parses the DDL: the column gets this type
        "max_new_tokens": w.get("max_new_tokens"),
        "chat_template": w.get("chat_template") == "true",
    },
    "max_error_rate": w.get("max_error_rate"),
    "job_name": "spark-infer-extraction-notebook",
}

finish(run_job(config, spark=spark), globals().get("dbutils"))  # raises (Databricks) or exits on failure

# COMMAND ----------

result = read_output(spark, config["output"])
result.printSchema()                                    # extracted: struct<category, price_mentioned, colors>
result.select("id", "extracted.*", "error").show(5, truncate=60)
