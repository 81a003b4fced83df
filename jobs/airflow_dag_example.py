"""Example Airflow DAG: run the spark-infer scoring job nightly with spark-submit.

Copy into your Airflow `dags/` folder and adjust the paths and the Spark connection. Needs
`apache-airflow-providers-apache-spark` on the Airflow worker, `spark-submit` on its PATH, and
`spark_infer` installed in the Python that runs the Spark driver and executors.

Retries are safe: the job is idempotent by unit (one Delta commit per input partition, with Delta's
txnAppId/txnVersion). A rerun skips every committed unit, scores only the rest, and a finished job rerun
commits nothing. Exit codes of `jobs/score.py` (see spark_infer/cli.py):

    0  every planned unit committed (or nothing pending)                -> success
    1  unexpected error (Spark/infrastructure)                          -> retry
    2  bad configuration: nothing was written                           -> fail now, do NOT retry
    3  partial: some units failed, committed units kept                 -> retry scores the rest
    4  a concurrent run wrote the same units, committed units kept      -> retry finishes the rest
    5  stopped by SIGTERM/SIGINT (preemption, timeout), units kept      -> retry continues

SparkSubmitOperator only sees spark-submit's exit status, which is the driver's exit code in client
deploy mode (the default here). In cluster deploy mode spark-submit does not pass the driver's code
through, so every failure reads as 1 and a bad configuration is retried (harmlessly, it writes nothing).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = "/opt/spark-infer"                          # a checkout (or install) of spark-infer
CONFIG = "/opt/spark-infer/conf/products.yaml"     # the job's YAML: input, output, task, model, ...
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"  # the cluster's Spark line: delta-spark_4.0/4.1/4.2_2.13
EXIT_CONFIG = 2


class ScoreSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that does not retry a configuration error (exit code 2)."""

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as exc:
            # SparkSubmitHook: "Cannot execute: <cmd>. Error code is: <returncode>."
            m = re.search(r"Error code is: (\d+)", str(exc))
            if m and int(m.group(1)) == EXIT_CONFIG:
                raise AirflowFailException(f"spark-infer: bad configuration, not retried: {exc}") from exc
            raise


with DAG(
    dag_id="spark_infer_nightly_embeddings",
    description="Embed new/changed product partitions into the embeddings Delta table",
    schedule="0 2 * * *",                       # nightly at 02:00
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,                          # concurrent runs are safe (exit 4), but pointless
    default_args={
        "owner": "ml-platform",
        "retries": 3,                           # safe: reruns are idempotent (see above)
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),  # SIGTERM -> exit 5, committed units kept
    },
    tags=["spark-infer", "batch-inference"],
) as dag:
    score = ScoreSubmitOperator(
        task_id="score_products",
        application=f"{REPO}/jobs/score.py",
        application_args=[
            "--config", CONFIG,
            "--summary-json", "/var/log/spark-infer/{{ ds }}/{{ ti.try_number }}.json",
        ],
        conn_id="spark_default",                # master (spark://, yarn, k8s://) and deploy mode
        name="spark-infer-nightly",
        # Delta on the classpath up front; without it jobs/score.py relaunches itself with these
        packages=DELTA_PACKAGE,
        conf={
            "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
            "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        },
        env_vars={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        verbose=False,
    )
