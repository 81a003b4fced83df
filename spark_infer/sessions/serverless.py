"""Databricks serverless compute (notebooks, jobs, and Databricks Connect to serverless): a Spark
Connect session with the platform's limits.

    from spark_infer.sessions import capabilities
    caps = capabilities(spark, "serverless")   # or detected: see `running_on_serverless`
    caps.can_persist, caps.conf_settable("spark.sql.session.timeZone"), caps.udf_memory_limit

What the platform refuses, and what the job does instead:

- no `cache`/`persist` (`NOT_SUPPORTED_WITH_SERVERLESS`): a commit group is scored into a staging
  Delta table, checked, and committed from it (`spark_infer.job.staging`);
- only an allow-list of Spark confs can be set (`CONFIG_NOT_AVAILABLE` for the rest): the job sets
  only those, and goes without the others (Arrow batch size, `maxRecordsPerFile`: see
  docs/databricks.md for what that costs);
- no `sparkContext`, RDDs, accumulators, Maven packages or cluster environment variables: the
  Connect kind already needs none of them;
- a UDF's memory is capped (1 GiB at the time of writing): a model that cannot fit is refused at
  plan time, before anything is scored.
"""

from __future__ import annotations

import os
from typing import Any

from spark_infer.sessions.base import register_kind
from spark_infer.sessions.connect import ConnectSessionKind, is_connect_session

#: Spark confs serverless compute lets a session set (Databricks: "Configure Spark properties for
#: serverless notebooks and jobs"); any other `conf.set` raises CONFIG_NOT_AVAILABLE there
ALLOWED_CONFS = frozenset({
    "spark.sql.legacy.timeParserPolicy",
    "spark.sql.session.timeZone",
    "spark.sql.shuffle.partitions",
    "spark.sql.ansi.enabled",
    "spark.sql.files.maxPartitionBytes",
    "spark.databricks.execution.timeout",
})

#: memory a UDF (the model, its inputs and the Python worker) may use on serverless compute
UDF_MEMORY_LIMIT = 1 << 30


def running_on_serverless(environ: Any = None) -> bool:
    """True in a Databricks serverless notebook or job (its runtime version is `client.N`), or in a
    Databricks Connect client configured for serverless compute."""
    env = os.environ if environ is None else environ
    return (env.get("DATABRICKS_RUNTIME_VERSION", "").startswith("client.")
            or bool(env.get("DATABRICKS_SERVERLESS_COMPUTE_ID")))


@register_kind
class ServerlessSessionKind(ConnectSessionKind):
    kind = "serverless"
    priority = 10  # before the general Connect kind
    can_persist = False
    udf_memory_limit: int | None = UDF_MEMORY_LIMIT

    @classmethod
    def handles(cls, spark: Any) -> bool:
        return is_connect_session(spark) and running_on_serverless()

    @classmethod
    def compatible(cls, spark: Any) -> bool:
        return is_connect_session(spark)

    def conf_settable(self, key: str) -> bool:
        return key in ALLOWED_CONFS
