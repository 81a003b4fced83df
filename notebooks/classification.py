# Databricks notebook source
# MAGIC %md
# MAGIC # Text classification into a Delta table
# MAGIC
# MAGIC Runs the `spark-infer` scoring job (`task = classify`) from the widgets below: each input partition is
# MAGIC classified and committed to the output Delta table once; rerunning the notebook scores only new or
# MAGIC changed partitions and commits nothing when everything is done. The notebook has no logic of its
# MAGIC own: it is `spark-infer score` with its flags taken from the widgets.
# MAGIC
# MAGIC * **Cluster**: classic compute in *dedicated (single user)* access mode, with `spark_infer` installed
# MAGIC   (cluster library,
# MAGIC   or `%pip install /Volumes/<catalog>/<schema>/<volume>/spark_infer-0.1.0-py3-none-any.whl`).
# MAGIC   The active `spark` session is reused (Delta is built in on Databricks).
# MAGIC * **input**: a Delta table (catalog name or path). Empty = the demo sample table (`spark-infer demo`),
# MAGIC   written once under `demo_dir`.
# MAGIC * **model**: a fine-tuned sequence-classification model: a folder (for example on a Volume) or a
# MAGIC   Hugging Face id already in the cluster's Hugging Face cache. Labels come from its `id2label`.
# MAGIC * **output**: `prediction` is `struct<label, score[, probabilities]>` (`probabilities` with
# MAGIC   `return_all_scores = true`; `multi_label = true` scores each label with its own sigmoid).
# MAGIC
# MAGIC Outside Databricks the same file runs as plain Python (`python notebooks/classification.py`): each widget then
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
dbutils.widgets.text("output", "demo-output/notebook_classification", "output table")
dbutils.widgets.text("model", "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "classification model")
dbutils.widgets.text("text_col", "text", "text column")
dbutils.widgets.text("id_col", "id", "id column")
dbutils.widgets.text("batch_size", "64", "rows per model call")
dbutils.widgets.text("max_length", "", "max tokens (empty = model's)")
dbutils.widgets.dropdown("return_all_scores", "false", ["true", "false"], "add every label's probability")
dbutils.widgets.dropdown("multi_label", "false", ["true", "false"], "independent label scores")
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
    "--task", "classify",
    "--model", dbutils.widgets.get("model"),
    "--text-col", dbutils.widgets.get("text_col"),
    "--id-col", dbutils.widgets.get("id_col"),
    "--batch-size", dbutils.widgets.get("batch_size"),
    "--device", dbutils.widgets.get("device"),
    "--option", f"return_all_scores={dbutils.widgets.get('return_all_scores')}",
    "--option", f"multi_label={dbutils.widgets.get('multi_label')}",
    "--job-name", "spark-infer-classification-notebook",
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
result.groupBy("prediction.label").count().show()
result.select("id", "prediction", "error", "model", "scored_at").show(5, truncate=60)
