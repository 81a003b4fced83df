"""`spark-infer score ARGS` as a Spark Connect client that refuses what Databricks serverless compute
refuses (for tests/test_serverless.py):

    python tests/serverless_client.py --remote sc://127.0.0.1:PORT --input ... --output ...

The platform's constraint, reproduced at the outermost boundary (PySpark's Connect client): `persist`,
`cache` and checkpoints raise `NOT_SUPPORTED_WITH_SERVERLESS`, and setting or unsetting a Spark conf
outside serverless compute's allow-list raises `CONFIG_NOT_AVAILABLE`, with the error classes and
SQL states the platform returns. `sparkContext` and RDDs already raise on any Connect client. The
process looks like a serverless notebook/job (`DATABRICKS_RUNTIME_VERSION=client.N`) unless
SERVERLESS_CLIENT_ENV=0, so both detection and the `--session-kind serverless` flag can be tested.
Nothing of spark-infer is replaced.
"""

from __future__ import annotations

import os
import sys

#: what Databricks documents as settable on serverless compute (kept here on purpose, apart from
#: spark_infer.sessions.serverless: this file plays the platform)
PLATFORM_ALLOWED_CONFS = {
    "spark.sql.legacy.timeParserPolicy", "spark.sql.session.timeZone", "spark.sql.shuffle.partitions",
    "spark.sql.ansi.enabled", "spark.sql.files.maxPartitionBytes", "spark.databricks.execution.timeout",
}


def install_serverless_refusals() -> None:
    from pyspark.errors.exceptions.connect import AnalysisException
    from pyspark.sql.connect.conf import RuntimeConf
    from pyspark.sql.connect.dataframe import DataFrame

    def refuse_persist(self, *args, **kwargs):
        raise AnalysisException(
            message="[NOT_SUPPORTED_WITH_SERVERLESS] PERSIST TABLE is not supported on serverless compute. "
                    "SQLSTATE: 0A000",
            errorClass="NOT_SUPPORTED_WITH_SERVERLESS", messageParameters={"sqlStmt": "PERSIST TABLE"},
            sql_state="0A000")

    for name in ("persist", "cache", "checkpoint", "localCheckpoint"):
        setattr(DataFrame, name, refuse_persist)

    def refuse_conf(key: str):
        return AnalysisException(
            message=f"[CONFIG_NOT_AVAILABLE] Configuration {key} is not available. SQLSTATE: 42K0I",
            errorClass="CONFIG_NOT_AVAILABLE", messageParameters={"config": key}, sql_state="42K0I")

    real_set, real_unset = RuntimeConf.set, RuntimeConf.unset

    def set_allowed(self, key, value):
        if key not in PLATFORM_ALLOWED_CONFS:
            raise refuse_conf(key)
        return real_set(self, key, value)

    def unset_allowed(self, key):
        if key not in PLATFORM_ALLOWED_CONFS:
            raise refuse_conf(key)
        return real_unset(self, key)

    RuntimeConf.set, RuntimeConf.unset = set_allowed, unset_allowed


if __name__ == "__main__":
    install_serverless_refusals()
    if os.environ.get("SERVERLESS_CLIENT_ENV", "1") != "0":
        os.environ["DATABRICKS_RUNTIME_VERSION"] = "client.3.0"
    else:
        os.environ.pop("DATABRICKS_RUNTIME_VERSION", None)
    from spark_infer.cli import main

    sys.exit(main(["score", *sys.argv[1:]]))
