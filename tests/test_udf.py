"""The Spark shells on a real local[2] session: the Arrow UDF (DataFrame API and SQL) and predict_frame.

Kept small (tens of rows, tiny models): most of the time here is the first job starting Python
workers that import torch.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from chispa import assert_approx_df_equality, assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType
from tiny_models import WORDS

from spark_infer.runtime import RuntimeOptions, score_stream
from spark_infer.udf import new_metrics_accumulator, predict_frame, predict_udf

NULL_IDS = {5, 17}
EMPTY_ID = 11


def _text(i: int) -> str | None:
    if i in NULL_IDS:
        return None
    if i == EMPTY_ID:
        return ""
    n = 1 + (i * 7) % 13  # 1..13 words: mixed lengths within each Arrow batch
    return " ".join(WORDS[(i * 5 + 3 * k) % len(WORDS)] for k in range(n))


ROWS = [(i, _text(i)) for i in range(24)]
N_ROWS = len(ROWS)


@pytest.fixture(scope="module")
def text_df(spark):
    df = spark.createDataFrame(ROWS, "id int, text string").repartition(2)
    assert df.rdd.getNumPartitions() == 2
    return df


def _direct(spec, rows=ROWS) -> dict[int, object]:
    """Outputs of the runtime itself (no Spark), keyed by id."""
    texts = [t for _, t in rows]
    counters: Counter[str] = Counter()
    ((out, err),) = list(score_stream(spec, RuntimeOptions(device="cpu"), [texts], counters))
    assert err.to_pylist() == [None] * len(texts)
    return {i: v for (i, _), v in zip(rows, out.to_pylist(), strict=True)}


def _assert_embeddings(collected, expected: dict[int, object], col: str = "e") -> None:
    got = {r["id"]: r[col] for r in collected}
    assert set(got) == set(expected)
    for i, ref in expected.items():
        if ref is None:
            assert got[i] is None, i
        else:
            assert got[i] is not None, i
            np.testing.assert_allclose(np.array(got[i]), np.array(ref), atol=1e-5, err_msg=f"id={i}")


# ------------------------------------------------------------------------------------------------
# embed UDF: DataFrame API, withColumn, SQL
# ------------------------------------------------------------------------------------------------


def test_embed_udf_select_withcolumn_and_sql(spark, text_df, tiny_bert: str) -> None:
    emb = predict_udf("embed", model=tiny_bert)
    expected = _direct(emb.spec)
    assert expected[EMPTY_ID] is not None and all(expected[i] is None for i in NULL_IDS)
    assert len({tuple(v) for v in expected.values() if v is not None}) > 10  # real, distinct vectors

    # select: compare every vector element with chispa (approx on floats); cached so that chispa's
    # sorting and the null check below do not run the model again
    selected = text_df.select("id", emb("text").alias("e")).cache()
    assert selected.schema["e"].dataType == ArrayType(FloatType())
    actual = selected.select("id", F.posexplode("e").alias("pos", "value"))
    exp_rows = [(i, p, float(x)) for i, v in expected.items() if v is not None for p, x in enumerate(v)]
    expected_df = spark.createDataFrame(exp_rows, "id int, pos int, value float")
    assert_approx_df_equality(actual, expected_df, precision=1e-5, ignore_nullable=True,
                              ignore_row_order=True)
    nulls = selected.where(F.col("e").isNull()).select("id")
    assert_df_equality(nulls, spark.createDataFrame([(i,) for i in sorted(NULL_IDS)], "id int"),
                       ignore_nullable=True, ignore_row_order=True)
    selected.unpersist()

    # withColumn keeps the input columns
    with_col = text_df.withColumn("e", emb(F.col("text"))).collect()
    assert len(with_col) == N_ROWS
    assert {(r["id"], r["text"]) for r in with_col} == set(ROWS)
    _assert_embeddings(with_col, expected)

    # registered for SQL
    rows_before = emb.metrics()["rows"]
    spark.udf.register("emb", emb)
    text_df.createOrReplaceTempView("udf_texts")
    try:
        via_sql = spark.sql("SELECT id, emb(text) AS e FROM udf_texts").collect()
    finally:
        spark.catalog.dropTempView("udf_texts")
    _assert_embeddings(via_sql, expected)
    # the SQL job reports through the same UDF's accumulator
    assert emb.metrics()["rows"] == rows_before + N_ROWS


def test_udf_return_error_struct(spark, text_df, tiny_bert: str) -> None:
    emb = predict_udf("embed", model=tiny_bert, return_error=True)
    expected = _direct(emb.spec)
    df = text_df.select("id", emb("text").alias("r"))
    assert df.schema["r"].dataType == StructType([
        StructField("prediction", ArrayType(FloatType())), StructField("error", StringType()),
    ])
    rows = df.collect()
    assert all(r["r"] is not None and r["r"]["error"] is None for r in rows)
    _assert_embeddings([{"id": r["id"], "e": r["r"]["prediction"]} for r in rows], expected)

    # non-string inputs cannot be tokenised: every such row gets a null prediction and an error,
    # a null input stays a plain null with no error
    ints = spark.createDataFrame([(1, 10), (2, None), (3, 30)], "id int, x int")
    got = {r["id"]: r["r"] for r in ints.select("id", emb("x").alias("r")).collect()}
    assert got[2]["prediction"] is None and got[2]["error"] is None
    for i in (1, 3):
        assert got[i]["prediction"] is None
        assert "expected a string input, got int" in got[i]["error"]
    m = emb.metrics()
    assert m["error_rows"] == 2
    assert m["null_rows"] == len(NULL_IDS) + 1


# ------------------------------------------------------------------------------------------------
# per-process model cache across jobs
# ------------------------------------------------------------------------------------------------


def _loads_by_worker(metrics: dict) -> dict[str, int]:
    """Model loads per Python worker pid (the placement counters: `placement|load|<pid>|<device>`)."""
    return {k.split("|")[2]: v for k, v in metrics.items() if k.startswith("placement|load|")}


def test_model_cache_reused_across_jobs(spark, tiny_bert: str) -> None:
    # an option no other test uses: a cache key no worker has loaded yet
    spec_opts = {"max_length": 60}
    df = spark.createDataFrame(ROWS, "id int, text string")
    df4 = df.repartition(4)
    emb = predict_udf("embed", model=tiny_bert, **spec_opts)
    n1 = len(df4.select(emb("text")).collect())
    m1 = emb.metrics()
    assert n1 == N_ROWS and m1["rows"] == N_ROWS
    # Spark may start a new Python worker for a task rather than wait for a finished one to be
    # handed back (seen in CI), so the number of workers is Spark's choice; what the cache promises
    # is per worker: no worker ever loads the model twice, across jobs and UDF objects
    first = _loads_by_worker(m1)
    assert first and set(first.values()) == {1} and m1["model_loads"] == len(first)

    df.repartition(2).select(emb("text")).collect()
    m2 = emb.metrics()
    assert m2["rows"] == 2 * N_ROWS
    second = _loads_by_worker(m2)
    assert set(second.values()) == {1}  # second job with the same UDF: no worker reloads

    emb2 = predict_udf("embed", model=tiny_bert, **spec_opts)
    assert emb2.spec == emb.spec
    df.repartition(2).select(emb2("text")).collect()
    m3 = emb2.metrics()
    assert m3["rows"] == N_ROWS  # the new UDF's accumulator works ...
    # ... and a worker that loaded the model for the first UDF takes it from its cache
    assert not set(_loads_by_worker(m3)) & set(second)


# ------------------------------------------------------------------------------------------------
# predict_frame (mapInArrow) with a metrics accumulator
# ------------------------------------------------------------------------------------------------


def test_predict_frame_matches_udf(spark, text_df, tiny_bert: str) -> None:
    acc = new_metrics_accumulator(spark)
    out = predict_frame(text_df, "text", "embed", model=tiny_bert, keys=["id"], metrics=acc)
    assert out.columns == ["id", "prediction", "error"]
    assert out.schema["prediction"].dataType == ArrayType(FloatType())
    rows = out.collect()
    assert len(rows) == N_ROWS
    assert sorted(r["id"] for r in rows) == list(range(N_ROWS))
    assert all(r["error"] is None for r in rows)
    assert acc.value["rows"] == N_ROWS
    assert acc.value["null_rows"] == len(NULL_IDS)
    assert acc.value["scored_rows"] == N_ROWS - len(NULL_IDS)

    emb = predict_udf("embed", model=tiny_bert)
    by_udf = {r["id"]: r["e"] for r in text_df.select("id", emb("text").alias("e")).collect()}
    _assert_embeddings(rows, by_udf, col="prediction")
    _assert_embeddings(rows, _direct(emb.spec), col="prediction")


# ------------------------------------------------------------------------------------------------
# classify UDF
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharp_classifier(tmp_path_factory) -> str:
    """A 3-label tiny classifier with large random weights: its outputs differ clearly per text
    (the tiny_classifier fixture scores every text ~0.5017 'positive')."""
    from tiny_models import _bert_config, _word_level_tokenizer
    from transformers import BertForSequenceClassification

    path = str(tmp_path_factory.mktemp("models") / "sharp-cls")
    labels = ("negative", "neutral", "positive")
    n = _word_level_tokenizer(path)
    cfg = _bert_config(n, num_labels=3, id2label=dict(enumerate(labels)),
                       label2id={lab: i for i, lab in enumerate(labels)}, initializer_range=0.5)
    torch.manual_seed(1)
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    return path


def _direct_classify(model_dir: str) -> tuple[list[str], dict[int, np.ndarray]]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = [model.config.id2label[k] for k in range(model.config.num_labels)]
    with torch.no_grad():
        probs = {i: torch.softmax(model(**tok(t, return_tensors="pt")).logits[0], -1).numpy()
                 for i, t in ROWS if t is not None}
    return labels, probs


def test_classify_udf_matches_transformers(spark, text_df, tiny_classifier: str, sharp_classifier: str) -> None:
    cls = predict_udf("classify", model=tiny_classifier, batch_size=4)
    cls_all = predict_udf("classify", model=sharp_classifier, return_all_scores=True)
    # one UDF per job: two iterator UDFs in one select run as two chained Python evaluations, each
    # with its own Python worker (more workers = more torch imports = a slower suite)
    df_c = text_df.select("id", cls("text").alias("c"))
    df_a = text_df.select("id", cls_all("text").alias("a"))
    assert [f.name for f in df_c.schema["c"].dataType.fields] == ["label", "score"]
    assert [f.name for f in df_a.schema["a"].dataType.fields] == ["label", "score", "probabilities"]
    by_id = {r["id"]: r for r in df_a.collect()}
    rows = [{"id": r["id"], "c": r["c"], "a": by_id[r["id"]]["a"]} for r in df_c.collect()]
    assert len(rows) == N_ROWS and len(by_id) == N_ROWS

    # label/score struct vs direct transformers, compared with chispa (label exact, score approx)
    labels, probs = _direct_classify(tiny_classifier)
    expected = [(i, labels[int(probs[i].argmax())], float(probs[i].max())) if t is not None
                else (i, None, None) for i, t in ROWS]
    actual = spark.createDataFrame(
        [(r["id"], *((r["c"]["label"], r["c"]["score"]) if r["c"] is not None else (None, None)))
         for r in rows], "id int, label string, score float")
    assert_approx_df_equality(actual, spark.createDataFrame(expected, "id int, label string, score float"),
                              precision=1e-6, ignore_row_order=True)

    # a model whose outputs differ per text, with the full probability map
    labels, probs = _direct_classify(sharp_classifier)
    assert len({labels[int(p.argmax())] for p in probs.values()}) == 3
    for r in rows:
        if r["id"] in NULL_IDS:
            assert r["a"] is None and r["c"] is None
            continue
        p = probs[r["id"]]
        assert r["a"]["label"] == labels[int(p.argmax())], r["id"]
        assert r["a"]["score"] == pytest.approx(float(p.max()), abs=1e-5)
        pm = r["a"]["probabilities"]
        assert set(pm) == set(labels)
        assert sum(pm.values()) == pytest.approx(1.0, abs=1e-5)
        for k, lab in enumerate(labels):
            assert pm[lab] == pytest.approx(float(p[k]), abs=1e-5)


# ------------------------------------------------------------------------------------------------
# the packaged default model on the workers
# ------------------------------------------------------------------------------------------------


def test_packaged_minilm_udf(spark) -> None:
    rows = [(1, "Spark runs batch inference."), (2, "The cat sat on the mat."), (3, None),
            (4, "Le chat est assis sur le tapis."), (5, "")]
    emb = predict_udf()  # task embed, packaged all-MiniLM-L6-v2
    got = {r["id"]: r["e"] for r in spark.createDataFrame(rows, "id int, text string")
           .select("id", emb("text").alias("e")).collect()}
    expected = _direct(emb.spec, rows)
    assert got[3] is None
    for i in (1, 2, 4, 5):
        assert len(got[i]) == 384
        np.testing.assert_allclose(np.array(got[i]), np.array(expected[i]), atol=1e-5)


def test_predict_frame_timestamp_key(spark, tiny_bert: str) -> None:
    import datetime

    ts = datetime.datetime(2024, 1, 1, 12, 0)
    df = spark.createDataFrame([(1, ts, "good movie")], "id int, ts timestamp, text string")
    rows = predict_frame(df, "text", "embed", model=tiny_bert, keys=["id", "ts"]).collect()
    assert rows[0]["ts"] == ts
    assert rows[0]["error"] is None
    assert len(rows[0]["prediction"]) == 32


def test_options_that_cannot_apply_raise(spark, text_df, tiny_bert: str) -> None:
    """One ModelSpec and one RuntimeOptions end to end: options beside them are an error, not ignored."""
    from spark_infer.errors import ConfigError
    from spark_infer.runtime.options import RuntimeOptions
    from spark_infer.runtime.spec import make_spec

    spec = make_spec("embed", tiny_bert)
    with pytest.raises(ConfigError, match="pooling"):
        predict_frame(text_df, "text", spec=spec, pooling="cls")
    with pytest.raises(ConfigError, match="model"):
        predict_frame(text_df, "text", spec=spec, model=tiny_bert)
    with pytest.raises(ConfigError, match="batch_size"):
        predict_frame(text_df, "text", model=tiny_bert, runtime=RuntimeOptions(), batch_size=3)
    with pytest.raises(ConfigError, match="device"):
        predict_udf("embed", model=tiny_bert, device="tpu")
    out = predict_frame(text_df, "text", spec=spec, runtime=RuntimeOptions(batch_size=3), keys=["id"])
    assert out.columns == ["id", "prediction", "error"]
