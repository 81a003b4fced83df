"""`zero_shot` with the packaged all-MiniLM-L6-v2 on a small hand-labelled set of real sentences."""

from __future__ import annotations

import numpy as np
import pytest

from spark_infer.errors import ConfigError
from spark_infer.runtime import ModelCache, RuntimeOptions, make_spec, open_runner, score_stream
from spark_infer.tasks.zero_shot import ZeroShotTask

LABELS = ["sports", "cooking", "technology", "finance"]
LABELLED = [
    ("The striker scored twice in the second half to win the match.", "sports"),
    ("She finished the marathon in under three hours.", "sports"),
    ("The referee showed a red card after the tackle.", "sports"),
    ("Our basketball team made it to the playoffs this season.", "sports"),
    ("He served an ace to take the final set at Wimbledon.", "sports"),
    ("The goalkeeper saved a penalty in extra time.", "sports"),
    ("The cyclists climbed the mountain stage of the Tour de France.", "sports"),
    ("The coach praised the players after the championship game.", "sports"),
    ("Simmer the onions in butter until they turn golden.", "cooking"),
    ("Knead the dough for ten minutes, then let it rise.", "cooking"),
    ("Add a pinch of salt and stir the sauce gently.", "cooking"),
    ("Roast the chicken at 200 degrees for an hour.", "cooking"),
    ("Whisk the eggs with sugar before folding in the flour.", "cooking"),
    ("This soup recipe needs fresh basil and garlic.", "cooking"),
    ("Grill the vegetables and drizzle them with olive oil.", "cooking"),
    ("Bake the cake until a toothpick comes out clean.", "cooking"),
    ("The new smartphone has a faster processor and more memory.", "technology"),
    ("Install the latest software update to fix the security bug.", "technology"),
    ("The startup released an open source machine learning library.", "technology"),
    ("Cloud servers run the application in several data centers.", "technology"),
    ("The laptop's battery lasts twelve hours on a single charge.", "technology"),
    ("Engineers are building a faster wireless network chip.", "technology"),
    ("The programming language added support for async functions.", "technology"),
    ("The central bank raised interest rates by a quarter point.", "finance"),
    ("Stock markets fell after the quarterly earnings report.", "finance"),
    ("She moved her savings into a low-cost index fund.", "finance"),
    ("The company issued bonds to refinance its debt.", "finance"),
    ("Inflation pushed mortgage payments higher this year.", "finance"),
    ("Investors sold shares as the currency weakened.", "finance"),
    ("The bank approved a loan for the small business.", "finance"),
]
TEXTS = [t for t, _ in LABELLED]


def test_udf_accuracy_far_above_chance(spark):
    from pyspark.sql import functions as F

    from spark_infer.udf import predict_udf

    zs = predict_udf("zero_shot", labels=LABELS, return_all_scores=True, batch_size=8)
    rows = [(i, t) for i, t in enumerate(TEXTS)] + [(len(TEXTS), None)]
    df = spark.createDataFrame(rows, "id int, text string").repartition(2)
    out = df.select("id", zs("text").alias("z"))
    assert out.schema["z"].dataType.simpleString() == (
        "struct<label:string,score:float,scores:map<string,float>>"
    )
    got = {r["id"]: r["z"] for r in out.orderBy(F.col("id")).collect()}
    assert got[len(TEXTS)] is None
    acc = np.mean([got[i]["label"] == lab for i, (_, lab) in enumerate(LABELLED)])
    assert acc >= 0.8, acc  # chance is 0.25
    for i in range(len(TEXTS)):
        z = got[i]
        assert set(z["scores"]) == set(LABELS)
        assert sum(z["scores"].values()) == pytest.approx(1.0, abs=1e-4)
        assert z["score"] == pytest.approx(z["scores"][z["label"]]) == pytest.approx(max(z["scores"].values()))


def test_scores_are_softmax_of_cosines_and_labels_embedded_once(monkeypatch):
    calls = []
    orig = ZeroShotTask._embed_labels

    def counting(self):
        calls.append(1)
        return orig(self)

    monkeypatch.setattr(ZeroShotTask, "_embed_labels", counting)
    descriptions = {"finance": "Money, banks, markets and investing."}
    spec = make_spec("zero_shot", labels=LABELS, label_descriptions=descriptions, temperature=0.1)
    runner = open_runner(spec, RuntimeOptions(device="cpu", batch_size=4), cache=ModelCache())
    outs = []
    for start in range(0, len(TEXTS), 10):  # three Arrow batches, three micro-batches each
        out, err = runner.run(TEXTS[start:start + 10])
        assert err.null_count == len(out)
        outs.extend(out.to_pylist())
    assert len(calls) == 1  # once per task instance (= per worker and device), not per batch
    assert runner.counters["micro_batches"] == 9

    # the documented formula, from the embed task's own vectors
    embed = make_spec("embed")
    hyps = [descriptions.get(lab, f"This text is about {lab}.") for lab in LABELS]
    (vecs, _), = list(score_stream(embed, RuntimeOptions(device="cpu"), [TEXTS + hyps]))
    v = np.array(vecs.to_pylist(), dtype=np.float64)
    cos = v[: len(TEXTS)] @ v[len(TEXTS):].T
    p = np.exp(cos / 0.1)
    p /= p.sum(axis=1, keepdims=True)
    for o, c, pi in zip(outs, cos, p, strict=True):
        assert o["label"] == LABELS[int(c.argmax())]
        assert o["score"] == pytest.approx(pi.max(), abs=1e-4)
        assert "scores" not in o


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"labels": ["only"]}, "labels"),
        ({}, "labels"),
        ({"labels": ["a", "b", "a"]}, "duplicate"),
        ({"labels": ["a", "b"], "label_descriptions": {"c": "x"}}, "not in labels"),
        ({"labels": ["a", "b"], "hypothesis_template": "no placeholder"}, r"\{label\}"),
        ({"labels": ["a", "b"], "temperature": 0}, "temperature"),
    ],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_spec("zero_shot", **options)
