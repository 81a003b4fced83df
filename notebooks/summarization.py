# Databricks notebook source
# MAGIC %md
# MAGIC # Summaries (text generation) into a Delta table
# MAGIC
# MAGIC Runs the `spark-infer` scoring job (`task = generate`) from the widgets below: every row's columns are
# MAGIC put into `prompt_template` and the model's completion (at most `max_new_tokens` tokens) is written to
# MAGIC `prediction` (`struct<text, input_tokens, output_tokens, finish_reason>`). Each input partition is committed to the output Delta table once; rerunning the
# MAGIC notebook scores only new or changed partitions. Changing the template or `max_new_tokens` changes the
# MAGIC model fingerprint, so the next run rescores everything. The notebook has no logic of its own: it is
# MAGIC `spark-infer score` with its flags taken from the widgets.
# MAGIC
# MAGIC * **Cluster**: classic compute in *dedicated (single user)* access mode, GPU workers recommended, with
# MAGIC   `spark_infer` installed (cluster library,
# MAGIC   or `%pip install /Volumes/<catalog>/<schema>/<volume>/spark_infer-0.1.0-py3-none-any.whl`).
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
# MAGIC Exit codes of the job (`spark_infer.cli`): 0 ok, 2 bad configuration (nothing written), 3 some units
# MAGIC failed (committed units kept, rerun scores the rest), 4 a concurrent run wrote the same units (rerun
# MAGIC to finish), 5 stopped by a signal (rerun to continue). On Databricks any non-zero code fails the
# MAGIC cell (and the job task running the notebook).

# COMMAND ----------

import os
import sys
from types import SimpleNamespace

from spark_infer.cli import run_score
from spark_infer.demo import write_sample_table
from spark_infer.session import build_session
from spark_infer.tables import TableRef

# COMMAND ----------

# Widgets: on Databricks dbutils.widgets; in plain Python each reads $SPARK_INFER_<NAME>, else its default.
try:
    dbutils  # noqa: B018 - defined by Databricks
    ON_DATABRICKS = True
except NameError:
    ON_DATABRICKS = False
    _defaults = {}

    def _declare(name, default, *_args):
        _defaults[name] = default

    dbutils = SimpleNamespace(widgets=SimpleNamespace(
        text=_declare, dropdown=_declare,
        get=lambda name: os.environ.get(f"SPARK_INFER_{name.upper()}", _defaults[name]),
    ))

# COMMAND ----------

dbutils.widgets.text("input", "", "input table (empty = demo table)")
dbutils.widgets.text("output", "demo-output/notebook_summaries", "output table")
dbutils.widgets.text("model", "Qwen/Qwen2.5-0.5B-Instruct", "generative model")
dbutils.widgets.text("prompt_template", "Summarize this product description in one sentence: {text}", "prompt")
dbutils.widgets.text("max_new_tokens", "64", "max new tokens")
dbutils.widgets.dropdown("chat_template", "true", ["true", "false"], "use the tokenizer's chat template")
dbutils.widgets.text("text_col", "text", "text column")
dbutils.widgets.text("id_col", "id", "id column")
dbutils.widgets.text("batch_size", "8", "rows per model call")
dbutils.widgets.text("max_length", "", "max prompt tokens (empty = model's)")
dbutils.widgets.dropdown("device", "auto", ["auto", "cpu", "cuda"], "device")
dbutils.widgets.dropdown("change_data_feed", "false", ["true", "false"], "Change Data Feed on output")
dbutils.widgets.text("demo_dir", "demo-output", "demo table folder")
dbutils.widgets.text("demo_rows", "3000", "demo table rows")

# COMMAND ----------

spark = build_session("spark-infer-notebook")  # on Databricks: the active session

input_table = dbutils.widgets.get("input")
output_table = dbutils.widgets.get("output")
if not input_table:
    input_table = os.path.abspath(os.path.join(dbutils.widgets.get("demo_dir"), "products"))
    if write_sample_table(spark, input_table, int(dbutils.widgets.get("demo_rows"))):
        print(f"wrote the demo table {input_table}")

# COMMAND ----------

args = [
    "--input", input_table,
    "--output", output_table,
    "--task", "generate",
    "--model", dbutils.widgets.get("model"),
    "--text-col", dbutils.widgets.get("text_col"),
    "--id-col", dbutils.widgets.get("id_col"),
    "--batch-size", dbutils.widgets.get("batch_size"),
    "--device", dbutils.widgets.get("device"),
    "--option", f"prompt_template={dbutils.widgets.get('prompt_template')}",
    "--option", f"max_new_tokens={dbutils.widgets.get('max_new_tokens')}",
    "--option", f"chat_template={dbutils.widgets.get('chat_template')}",
    "--job-name", "spark-infer-summarization-notebook",
]
if dbutils.widgets.get("max_length"):
    args += ["--max-length", dbutils.widgets.get("max_length")]
if dbutils.widgets.get("change_data_feed") == "true":
    args.append("--change-data-feed")

code = run_score(args)
if code != 0:
    if not ON_DATABRICKS:
        sys.exit(code)
    raise RuntimeError(f"spark-infer score exited with code {code}; see the log above")

# COMMAND ----------

result = TableRef(output_table).read(spark)
print(f"{output_table}: {result.count()} rows")
result.select("id", "prediction.text", "prediction.finish_reason", "error").show(5, truncate=80)
