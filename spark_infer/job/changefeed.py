"""Changed rows from the input's Change Data Feed, instead of hashing every row of a changed unit.

    feed = read_feed(spark, input_table, shape, input_df, sink, plan_version, keys, id_col=..., buckets=...)
    feed.changed      # units with changed rows -> how many ids changed
    feed.current      # those ids' rows as the input holds them now (deleted ids absent)

Where the input has `delta.enableChangeDataFeed=true`, a unit whose files changed since its output
rows were scored is planned from the feed: the rows inserted, updated or deleted after the version
the output last saw the unit (the newest `input_version` among its output rows: every change since
the unit's last commit is after it, so no change is missed, and a change the output already holds
is found unchanged by its row state). A unit with no such row is unchanged (a compaction, a rewrite of
equal rows): done, as hashing would find it. A unit with some is diffed on those ids alone
(`spark_infer.job.rowdiff`); its other rows are known unchanged without reading them.

The plan is the one hashing gives on the same changes (held to it by tests/test_row_grain.py). Any
doubt falls back to hashing: a feed not enabled over the whole range (enabled later, or its files
vacuumed), a schema change the feed reader refuses, an output unit with no `input_version`, a new id
bucket, or a row count the feed does not explain.

A unit planned from the feed records the content state `c1:<input version>`, not a content hash (that
would read every row): it is never equal to a hash, so a unit whose files change later while the feed
is off is hashed and diffed once (no row is scored again: their row states are equal).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import Window
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StructField, StructType

from spark_infer.log import event
from spark_infer.plan import bucket_expr
from spark_infer.units import UnitKey, canonical_exprs, group_predicate, key_from_row, quote_ident

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from spark_infer.inputs import InputTable
    from spark_infer.job.shape import JobShape
    from spark_infer.sinks import RowsAtVersion

log = logging.getLogger("spark_infer")

#: the content state of a unit planned from the change feed (never equal to a content hash)
FEED_STATE = "c1:{version}"


@dataclass(frozen=True)
class FeedPlan:
    """What the input's change feed says about some units since the output last saw them."""

    #: the content state units reconciled from this feed record
    state: str
    #: units with changed rows -> how many distinct ids changed
    changed: dict[UnitKey, int]
    #: (`__k<i>`, `__rd_id`): the changed ids, deleted ones included
    candidates: DataFrame
    #: the changed ids' rows at the pinned version (the input's columns, `__k<i>` and `__rd_id`)
    current: DataFrame


def feed_enabled(properties: dict[str, str]) -> bool:
    return properties.get("delta.enableChangeDataFeed", "").lower() == "true"


def read_feed(spark: SparkSession, inp: InputTable, shape: JobShape, input_df: DataFrame, output: RowsAtVersion,
              plan_version: int, keys: Sequence[UnitKey], *, id_col: str, buckets: int) -> FeedPlan | None:
    """The feed's changes to the units `keys` since the output last saw each, or None (hash them)."""
    if not keys or inp.version is None:
        return None
    cols = shape.unit_cols
    kcols = [f"__k{i}" for i in range(len(cols))]
    try:
        anchors_df = (output.rows_at(plan_version).where(group_predicate(cols, keys))
                      .selectExpr("input_version", *canonical_exprs(cols))
                      .groupBy(*kcols).agg(F.max("input_version").alias("__anchor")))
        rows = anchors_df.collect()
        anchors = {key_from_row(cols, r): r["__anchor"] for r in rows}
        if set(anchors) != set(keys) or any(v is None for v in anchors.values()):
            return _not_used("an output unit records no input version")
        start = min(int(v) for v in anchors.values()) + 1
        state = FEED_STATE.format(version=inp.version)
        empty = spark.createDataFrame([], StructType([*[anchors_df.schema[k] for k in kcols],
                                                      StructField("__rd_id", input_df.schema[id_col].dataType)]))
        if start > inp.version:  # nothing since: the files changed without a data change
            return FeedPlan(state, {}, empty, empty)
        reader = (spark.read.format("delta").option("readChangeFeed", "true")
                  .option("startingVersion", start).option("endingVersion", inp.version))
        t = inp.table
        changes = reader.load(t.location) if t.is_path else reader.table(t.name)
        if shape.bucketed:
            changes = changes.withColumn(cols[0].name, bucket_expr(id_col, buckets))
        anchor_rows = spark.createDataFrame([tuple(r) for r in rows], anchors_df.schema)
        changes = (changes.where(group_predicate(cols, keys)).where(F.col("_change_type") != "update_preimage")
                   .selectExpr("*", *canonical_exprs(cols)).withColumn("__rd_id", F.col(quote_ident(id_col))))
        changes = _after_anchor(changes, anchor_rows, kcols)
        counted = changes.groupBy(*kcols).agg(F.countDistinct("__rd_id").alias("__n")).collect()
    except Exception as exc:  # noqa: BLE001 - not enabled over the range, vacuumed, a schema change: hash
        return _not_used(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    changed = {key_from_row(cols, r): int(r["__n"]) for r in counted}
    # the newest change of each id is what the input holds now; an insert wins over a delete of the
    # same version (a file rewritten with the row kept)
    w = Window.partitionBy(*kcols, "__rd_id").orderBy(F.col("_commit_version").desc(),
                                                      (F.col("_change_type") == "delete").asc())
    latest = changes.withColumn("__rd_n", F.row_number().over(w)).where("__rd_n = 1")
    current = latest.where(F.col("_change_type") != "delete").select(
        *[quote_ident(c) for c in input_df.columns], *kcols, "__rd_id")
    candidates = changes.select(*kcols, "__rd_id").distinct()
    event("change_feed_read", units=len(keys), units_changed=len(changed), ids=sum(changed.values()),
          from_version=start, to_version=inp.version)
    return FeedPlan(state, changed, candidates, current)


def _after_anchor(changes: DataFrame, anchors: DataFrame, kcols: Sequence[str]) -> DataFrame:
    """The feed's rows committed after their unit's anchor version."""
    a = anchors.select(*[F.col(k).alias(f"__a{k}") for k in kcols], F.col("__anchor").cast(LongType()))
    cond = [changes[k].eqNullSafe(a[f"__a{k}"]) for k in kcols]
    joined = changes.join(F.broadcast(a), on=cond, how="inner")
    return joined.where(F.col("_commit_version") > F.col("__anchor")).drop(*[f"__a{k}" for k in kcols], "__anchor")


def _not_used(why: str) -> None:
    event("change_feed_not_used", log_level=logging.INFO, reason=why)
    return None
