"""Row grain: inside units that changed, which rows to score, which to delete and which to keep.

    diff = RowDiff(spark, shape, input_df, input_ref, sink, plan_version, fingerprint, ...)
    counts = diff.counts(keys)           # per unit: RowCounts (one Spark job), for the plan
    rows = diff.to_score(keys)           # input rows to score (a DataFrame), for the group
    kept = diff.kept(keys)               # output rows carried over unchanged, for the commit

The diff joins the input's rows (at the pinned version) with the output's rows (at the version the
run planned at, so the plan, the scoring and the commit all see the same rows) on (unit, id), and
compares each row's state (`spark_infer.row_state`) with the `input_row_state` its result records:

| input row | output row                                                    | action            |
|-----------|---------------------------------------------------------------|-------------------|
| yes       | none                                                          | score (new)       |
| none      | yes                                                           | delete            |
| yes       | state differs, or unknown                                     | score (changed)   |
| yes       | same state, another model, `on_model_change: rescore`         | score (model)     |
| yes       | same state, an error row, `rescore_errors`                    | score (errors)    |
| yes       | same state otherwise                                          | keep              |

A unit planned from the input's change feed (`spark_infer.job.changefeed`) is diffed on the ids the
feed names alone: its input side is those ids' current rows, and every other output row of the unit
is known unchanged (kept, unless its model or an error row makes it scored); no other input row is
read, except those a model change or `rescore_errors` scores.

Outputs written before row states existed have none: a row's state is then computed from the input
at the version its result records (`input_version`), which is what it was scored from; where that
version cannot be read any more (vacuumed), the row counts as changed and is scored again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyspark.sql import functions as F

from spark_infer.errors import ConfigError
from spark_infer.plan import RowCounts, bucket_expr
from spark_infer.row_state import ROW_STATE_COLUMN, row_state_expr
from spark_infer.units import UnitKey, canonical_exprs, group_predicate, key_from_row, quote_ident

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from spark_infer.job.changefeed import FeedPlan
    from spark_infer.job.shape import JobShape
    from spark_infer.sinks import RowsAtVersion
    from spark_infer.tables import TableRef

log = logging.getLogger("spark_infer")

NEW, CHANGED, MODEL, ERRORS, DELETE, KEEP = "new", "changed", "model", "errors", "delete", "keep"
SCORED = (NEW, CHANGED, MODEL, ERRORS)
#: the diff's own columns (prefixed so that no input column name can collide)
_ID, _IN_STATE, _OUT_STATE, _ACTION = "__rd_id", "__rd_in", "__rd_out", "__rd_action"


class RowDiff:
    """The row-level diff of a run's changed units (see the module docstring)."""

    def __init__(self, spark: SparkSession, shape: JobShape, input_df: DataFrame, input_ref: TableRef,
                 output: RowsAtVersion, plan_version: int, fingerprint: str, *, id_col: str, buckets: int,
                 on_model_change: str = "rescore", rescore_errors: bool = False, feed: FeedPlan | None = None) -> None:
        self.spark, self.shape, self.input_df = spark, shape, input_df
        self.input_ref, self.output, self.plan_version = input_ref, output, plan_version
        self.fingerprint, self.id_col, self.buckets = fingerprint, id_col, buckets
        self.on_model_change, self.rescore_errors = on_model_change, rescore_errors
        self._keys = [f"__k{i}" for i in range(len(shape.unit_cols))]
        #: input versions that output rows without a row state were scored from
        self._versions: list[int] | None = None
        #: each diffed unit's canonical key values as Spark returns them (they join rows to lineage)
        self.values: dict[UnitKey, tuple] = {}
        #: the change feed of the units planned from it (`feed.changed`)
        self.feed = feed
        #: feed units with rows to score that the feed does not hold (a model change, error rows)
        self._reads_input: set[UnitKey] = set()

    # -- the two sides ----------------------------------------------------------------------------
    def _input_side(self, keys: Sequence[UnitKey]) -> DataFrame:
        """The units' input rows with their canonical unit key, id and row state."""
        df = self.input_df.where(group_predicate(self.shape.unit_cols, keys))
        return df.selectExpr("*", *canonical_exprs(self.shape.unit_cols)).select(
            "*", F.col(quote_ident(self.id_col)).alias(_ID), row_state_expr(df.schema, self.shape.read).alias(_IN_STATE))

    def output_rows(self, keys: Sequence[UnitKey]) -> DataFrame:
        """The units' output rows at the plan's version."""
        return self.output.rows_at(self.plan_version).where(group_predicate(self.shape.unit_cols, keys))

    def _output_side(self, keys: Sequence[UnitKey]) -> DataFrame:
        """(unit key, id, recorded row state, fingerprint, error) of the units' output rows; the state of
        rows written before row states existed computed from the input version they were scored from."""
        out = self.output_rows(keys)
        has_state = ROW_STATE_COLUMN in out.columns
        state = F.col(ROW_STATE_COLUMN) if has_state else F.lit(None).cast("long")
        side = out.selectExpr("*", *canonical_exprs(self.shape.unit_cols)).select(
            *self._keys, F.col(quote_ident(self.id_col)).alias(_ID), state.alias(_OUT_STATE),
            F.col("model_fingerprint").alias("__rd_fp"), F.col("error").alias("__rd_err"),
            F.col("input_version").alias("__rd_v"))
        legacy = self._legacy_states(side, keys)
        if legacy is None:
            return side
        cond = [side[k].eqNullSafe(legacy[f"__l{k}"]) for k in self._keys] + [
            side[_ID].eqNullSafe(legacy["__l_id"]), side["__rd_v"] == legacy["__l_v"]]
        return side.join(legacy, on=cond, how="left").select(
            *self._keys, _ID, F.coalesce(F.col(_OUT_STATE), F.col("__l_state")).alias(_OUT_STATE),
            "__rd_fp", "__rd_err")

    def _legacy_states(self, side: DataFrame, keys: Sequence[UnitKey]) -> DataFrame | None:
        """Row states of output rows that record none, from the input at their `input_version`."""
        if self._versions is None:  # asked once, for all of the plan's row-grain units (a superset later)
            self._versions = sorted(r[0] for r in side.where(F.col(_OUT_STATE).isNull()).select("__rd_v")
                                    .distinct().collect() if r[0] is not None)
        parts = []
        for v in self._versions:
            try:
                old = self.input_ref.read(self.spark, int(v))
                if any(c not in old.columns for c in self.shape.read):
                    continue  # a column the task reads did not exist then: those rows score again
                if self.shape.bucketed:
                    old = old.withColumn(self.shape.unit_cols[0].name, bucket_expr(self.id_col, self.buckets))
                old = old.where(group_predicate(self.shape.unit_cols, keys))
                parts.append(old.selectExpr("*", *canonical_exprs(self.shape.unit_cols)).select(
                    *[F.col(k).alias(f"__l{k}") for k in self._keys], F.col(quote_ident(self.id_col)).alias("__l_id"),
                    row_state_expr(old.schema, self.shape.read).alias("__l_state"), F.lit(int(v)).alias("__l_v"))
                    .dropDuplicates([*[f"__l{k}" for k in self._keys], "__l_id"]))
            except Exception as exc:  # noqa: BLE001 - vacuumed or unreadable: those rows count as changed
                log.debug("input version %s not readable for row states: %s", v, exc)
        if not parts:
            return None
        legacy = parts[0]
        for p in parts[1:]:
            legacy = legacy.unionByName(p)
        return legacy

    def _action(self) -> Column:
        # `__rd_same`: a row the change feed did not name, unchanged without comparing states
        a = F.when(F.col("__rd_o").isNull(), F.lit(NEW)).when(F.col("__rd_i").isNull(), F.lit(DELETE)).when(
            ~F.col("__rd_same") & (F.col(_OUT_STATE).isNull() | (F.col(_OUT_STATE) != F.col(_IN_STATE))),
            F.lit(CHANGED))
        if self.on_model_change == "rescore":
            a = a.when(~F.col("__rd_fp").eqNullSafe(F.lit(self.fingerprint)), F.lit(MODEL))
        if self.rescore_errors:
            a = a.when(F.col("__rd_err").isNotNull(), F.lit(ERRORS))
        return a.otherwise(F.lit(KEEP))

    def _feed_keys(self, keys: Sequence[UnitKey]) -> tuple[list[UnitKey], list[UnitKey]]:
        """`keys` split into (units diffed on all their rows, units diffed on the feed's ids)."""
        fed = set(self.feed.changed) if self.feed is not None else set()
        return [k for k in keys if k not in fed], [k for k in keys if k in fed]

    def frame(self, keys: Sequence[UnitKey]) -> DataFrame:
        """Every input and output row of the units, joined on (unit, id), with its action: the input's
        columns (null for a deleted row, and for a feed unit's row the feed did not name), `__k<i>`,
        `__rd_id`, `__rd_same` (not named by the feed) and `__rd_action`."""
        whole, fed = self._feed_keys(keys)
        parts = []
        if whole:
            parts.append(self._joined(self._input_side(whole), whole, None))
        if fed:
            assert self.feed is not None
            cur = self.feed.current.where(group_predicate(self.shape.unit_cols, fed))
            cur = cur.withColumn(_IN_STATE, row_state_expr(cur.schema, self.shape.read))
            parts.append(self._joined(cur, fed, self.feed.candidates))
        out = parts[0]
        for p in parts[1:]:
            out = out.unionByName(p)
        return out

    def _joined(self, i: DataFrame, keys: Sequence[UnitKey], named: DataFrame | None) -> DataFrame:
        """Input side `i` full-outer-joined with the units' output rows; with `named` (the feed's ids),
        output rows it does not name are present and unchanged."""
        i = i.withColumn("__rd_i", F.lit(True))
        o = self._output_side(keys).withColumn("__rd_o", F.lit(True))
        o = o.select(*[F.col(k).alias(f"__o{k}") for k in self._keys], F.col(_ID).alias("__o_id"),
                     _OUT_STATE, "__rd_fp", "__rd_err", "__rd_o")
        if named is None:
            o = o.withColumn("__rd_same", F.lit(False))
        else:
            n = named.select(*[F.col(k).alias(f"__n{k}") for k in self._keys], F.col(_ID).alias("__n_id"),
                             F.lit(True).alias("__rd_named"))
            ncond = [o[f"__o{k}"].eqNullSafe(n[f"__n{k}"]) for k in self._keys] + [o["__o_id"].eqNullSafe(n["__n_id"])]
            o = o.join(n, on=ncond, how="left").withColumn("__rd_same", F.col("__rd_named").isNull()).drop(
                *[f"__n{k}" for k in self._keys], "__n_id", "__rd_named")
        cond = [i[k].eqNullSafe(o[f"__o{k}"]) for k in self._keys] + [i[_ID].eqNullSafe(o["__o_id"])]
        joined = i.join(o, on=cond, how="full_outer")
        # a deleted row has no input side: its unit key and id come from the output side
        for k in self._keys:
            joined = joined.withColumn(k, F.coalesce(F.col(k), F.col(f"__o{k}")))
        same = F.coalesce(F.col("__rd_same"), F.lit(False))
        return (joined.withColumn(_ID, F.coalesce(F.col(_ID), F.col("__o_id")))
                .withColumn("__rd_i", F.when(same, F.lit(True)).otherwise(F.col("__rd_i")))
                .withColumn("__rd_same", same)
                .withColumn(_IN_STATE, F.when(same, F.col(_OUT_STATE)).otherwise(F.col(_IN_STATE)))
                .withColumn(_ACTION, self._action()))

    # -- what the plan, the group and the commit need ---------------------------------------------
    def counts(self, keys: Sequence[UnitKey]) -> dict[UnitKey, RowCounts]:
        """Per unit, its rows by action (one Spark job)."""
        if not keys:
            return {}
        rows = self.frame(keys).groupBy(*self._keys, _ACTION, "__rd_same").agg(
            F.count(F.lit(1)).alias("count"), F.count("__rd_err").alias("errors")).collect()
        acc: dict[UnitKey, dict[str, int]] = {k: {} for k in keys}
        for r in rows:
            key = key_from_row(self.shape.unit_cols, r)
            self.values[key] = tuple(r[k] for k in self._keys)
            a = acc.setdefault(key, {})
            a[r[_ACTION]] = a.get(r[_ACTION], 0) + int(r["count"])
            if r[_ACTION] == KEEP:
                a["kept_errors"] = a.get("kept_errors", 0) + int(r["errors"])
            if r["__rd_same"] and r[_ACTION] in SCORED:
                self._reads_input.add(key)
        return {k: RowCounts(new=a.get(NEW, 0), changed=a.get(CHANGED, 0), errors=a.get(ERRORS, 0),
                             model=a.get(MODEL, 0), deleted=a.get(DELETE, 0), kept=a.get(KEEP, 0),
                             kept_errors=a.get("kept_errors", 0))
                for k, a in acc.items()}

    def to_score(self, keys: Sequence[UnitKey]) -> DataFrame:
        """The units' input rows that are scored (input columns only, as the input reads)."""
        cols = [quote_ident(c) for c in self.input_df.columns]
        scored = self.frame(keys).where(F.col(_ACTION).isin(*SCORED))
        out = scored.where(~F.col("__rd_same")).select(*cols)
        unnamed = [k for k in self._feed_keys(keys)[1] if k in self._reads_input]
        if unnamed:  # rows the feed did not name that are scored all the same: read from the input
            want = scored.where(F.col("__rd_same")).select(
                *[F.col(k).alias(f"__w{k}") for k in self._keys], F.col(_ID).alias("__w_id"))
            src = self.input_df.where(group_predicate(self.shape.unit_cols, unnamed)).selectExpr(
                "*", *canonical_exprs(self.shape.unit_cols))
            cond = [src[k].eqNullSafe(want[f"__w{k}"]) for k in self._keys] + [
                src[quote_ident(self.id_col)].eqNullSafe(want["__w_id"])]
            out = out.unionByName(src.join(want, on=cond, how="left_semi").select(*cols))
        return out

    def kept(self, keys: Sequence[UnitKey]) -> DataFrame:
        """The units' output rows that stay as they are (output columns at the plan's version, the
        unit's canonical key `__k<i>`, and `__rd_in`: the row's state, equal to what it records, or
        what it would record for a row written before row states)."""
        keep = self.frame(keys).where(F.col(_ACTION) == KEEP).select(
            *[F.col(k).alias(f"__x{k}") for k in self._keys], F.col(_ID).alias("__x_id"), _IN_STATE)
        out = self.output_rows(keys)
        side = out.selectExpr("*", *canonical_exprs(self.shape.unit_cols))
        cond = [side[k].eqNullSafe(keep[f"__x{k}"]) for k in self._keys] + [
            side[quote_ident(self.id_col)].eqNullSafe(keep["__x_id"])]
        return side.join(keep, on=cond, how="inner").select(
            *[quote_ident(c) for c in out.columns], *self._keys, _IN_STATE)


def check_unique_ids(input_df: DataFrame, shape: JobShape, keys: Sequence[UnitKey] | None, id_col: str,
                     show: int = 5) -> None:
    """ConfigError (exit 2, before any write) naming a few ids that more than one input row of the
    units `keys` (all when None) holds: an id names one row, and one output row."""
    df = input_df if keys is None else input_df.where(group_predicate(shape.unit_cols, keys))
    dup = (df.groupBy(F.col(quote_ident(id_col)).alias("__id")).count().where("count > 1")
           .orderBy(F.col("count").desc(), F.col("__id")).limit(show + 1).collect())
    if dup:
        listed = ", ".join(f"{repr(r['__id'])[:60]} ({r['count']} rows)" for r in dup[:show])
        more = " and more" if len(dup) > show else ""
        raise ConfigError(f"input column {id_col!r} (config field 'id_col') must name one row per id, but ids "
                          f"{listed}{more} are on several rows; nothing was written. Deduplicate the input, or "
                          "choose a unique id column")
