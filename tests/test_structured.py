"""`generate` with a `response_format`: typed values, valid by construction, on tiny random models.

The models (tests/structured_models.py) are random: left unconstrained their output is not JSON at
all (checked below), so every valid value is the constraint's doing. A row either finishes with a
valid value or is an error row (null output, the reason in the error), never a half object.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from structured_models import make_bytelevel_gpt2, make_bytelevel_t5

from spark_infer.errors import ConfigError
from spark_infer.runtime import RuntimeOptions, make_spec, score_stream
from spark_infer.runtime.batching import RowError
from spark_infer.tasks import _structured as structured

WORDS = ("refund late delivery broken screen battery slow service great quality price customer asked "
         "phone order shipping invoice charged twice cancel subscription account password reset").split()

TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"enum": ["billing", "shipping", "product"]},
        "urgency": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 12},
        "customer": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                                      "vip": {"type": "boolean"}},
                     "required": ["name", "vip"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["category", "urgency", "summary", "customer", "tags"],
    "additionalProperties": False,
}
CHOICES = ["billing", "shipping", "product quality", "other"]
REGEX = r"[A-Z]{2}-[0-9]{3}"


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 25))) for _ in range(n)]


def valid_ticket(v: dict) -> bool:
    """The schema, checked independently of the code under test."""
    return (
        list(v) == ["category", "urgency", "summary", "customer", "tags"]
        and v["category"] in ("billing", "shipping", "product")
        and isinstance(v["urgency"], int) and 1 <= v["urgency"] <= 5
        and isinstance(v["summary"], str) and len(v["summary"]) <= 12
        and isinstance(v["customer"]["name"], str) and len(v["customer"]["name"]) <= 8
        and isinstance(v["customer"]["vip"], bool)
        and isinstance(v["tags"], list) and len(v["tags"]) <= 3
        and all(isinstance(t, str) and len(t) <= 6 for t in v["tags"])
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("structured-models")
    return {"causal": make_bytelevel_gpt2(str(root / "gpt2")), "seq2seq": make_bytelevel_t5(str(root / "t5"))}


def run(spec, rows, batch_size=16, **runtime):
    (out, err), = list(score_stream(spec, RuntimeOptions(device="cpu", batch_size=batch_size, **runtime), [rows]))
    return out.to_pylist(), err.to_pylist()


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_unconstrained_output_of_these_models_is_garbage(models, kind):
    out, _ = run(make_spec("generate", models[kind], max_new_tokens=40), texts(24))
    parsed = 0
    for o in out:
        try:
            json.loads(o["text"])
            parsed += 1
        except ValueError:
            pass
    assert parsed == 0


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_every_finished_row_is_valid_for_a_nested_schema_choices_and_a_regex(models, kind):
    rows = texts(120, seed=1)
    # a nested JSON schema: struct<category, urgency, summary, customer struct<name, vip>, tags array>
    spec = make_spec("generate", models[kind], response_format=TICKET_SCHEMA, max_new_tokens=160,
                     return_generation=True)
    assert str(spec.output_type().field("value").type) == (
        "struct<category: string, urgency: int64, summary: string, customer: struct<name: string, vip: bool>, "
        "tags: list<item: string>>")
    out, err = run(spec, rows)
    finished = [o for o in out if o is not None]
    assert len(finished) >= 0.9 * len(rows), [e for e in err if e][:3]
    for o, e in zip(out, err, strict=True):
        if o is None:
            # out of tokens, or a value the grammar let through that the schema check refuses (a random
            # byte-level model can spell invalid UTF-8 inside a string, which decodes longer)
            assert "max_new_tokens=160 reached" in e or "invalid output for the response_format: $." in e, e
            continue
        assert e is None and o["finish_reason"] == "stop"
        assert valid_ticket(o["value"]), o
        assert json.loads(o["text"], strict=False) == o["value"]
    # choices and a regex: every row valid
    out, err = run(make_spec("generate", models[kind], response_format=CHOICES), rows)
    assert all(o in CHOICES for o in out) and not any(err)
    out, err = run(make_spec("generate", models[kind], response_format={"regex": REGEX}), rows)
    assert all(re.fullmatch(REGEX, o) for o in out) and not any(err)


def test_a_row_out_of_new_tokens_is_an_error_row_never_a_half_object(models):
    rows = texts(20, seed=2)
    spec = make_spec("generate", models["causal"], response_format=TICKET_SCHEMA, max_new_tokens=6)
    counters: Counter[str] = Counter()
    (out, err), = list(score_stream(spec, RuntimeOptions(device="cpu", batch_size=8), [rows], counters))
    assert out.null_count == len(rows)
    assert all("max_new_tokens=6 reached before the value was complete" in e for e in err.to_pylist())
    assert counters["invalid_output_rows"] == counters["error_rows"] == len(rows)
    with pytest.raises(RowError, match="max_new_tokens=6"):
        run(spec, rows, on_error="fail")


def test_values_out_of_the_declared_type_are_error_rows_not_wrapped():
    """What the grammar cannot rule out is checked when the text becomes the typed value."""
    fmt = {"struct": json.dumps({"type": "struct", "fields": [
        {"name": "n", "type": "byte", "nullable": True, "metadata": {}},
        {"name": "price", "type": "decimal(5,2)", "nullable": True, "metadata": {}},
        {"name": "day", "type": "date", "nullable": True, "metadata": {}}]})}
    arrow = structured.arrow_type(fmt)
    ok = structured.parse(fmt, '{"n": 12, "price": 123.45, "day": "2026-12-01"}', arrow)
    assert ok["n"] == 12 and str(ok["price"]) == "123.45" and str(ok["day"]) == "2026-12-01"
    for text, reason in [('{"n": 300, "price": 1, "day": null}', "$.n: 300 is greater than the maximum of 127"),
                         ('{"n": 1, "price": 12345.6, "day": null}', "does not fit decimal(5,2)"),
                         ('{"n": 1, "price": 1, "day": "2026-13-45"}', "is not a date"),
                         ('{"n": 1, "price": 1, "day": ', "not complete JSON")]:
        with pytest.raises(structured.InvalidOutput, match=re.escape(reason)):
            structured.parse(fmt, text, arrow)
    # the grammar of a DDL struct carries the ranges of its integral types
    schema = structured.json_schema_of_spark(json.loads(fmt["struct"]))
    assert schema["properties"]["n"]["anyOf"][0] == {"type": "integer", "minimum": -128, "maximum": 127}


def test_deterministic_and_the_format_is_fingerprinted(models):
    rows = texts(16, seed=3)
    a = make_spec("generate", models["seq2seq"], response_format=TICKET_SCHEMA, max_new_tokens=120)
    b = make_spec("generate", models["seq2seq"], response_format=json.dumps(TICKET_SCHEMA), max_new_tokens=120)
    assert a.fingerprint == b.fingerprint  # the same format, given as a dict or as JSON text
    assert run(a, rows, batch_size=4) == run(b, rows, batch_size=16)  # micro-batching changes nothing
    other = dict(TICKET_SCHEMA, properties={**TICKET_SCHEMA["properties"], "urgency": {"type": "integer"}})
    fingerprints = {make_spec("generate", models["seq2seq"], **kw).fingerprint for kw in [
        {}, {"response_format": TICKET_SCHEMA}, {"response_format": other}, {"response_format": CHOICES},
        {"response_format": CHOICES[::-1]}, {"response_format": {"regex": REGEX}}]}
    assert len(fingerprints) == 6  # a changed format is a changed model: the plan rescores


def test_sampling_with_a_format_is_seeded_per_row(models):
    rows = texts(8, seed=4) * 2
    spec = make_spec("generate", models["causal"], response_format=CHOICES, do_sample=True, seed=7)
    out, err = run(spec, rows, batch_size=5)
    assert not any(err) and out[:8] == out[8:] and all(o in CHOICES for o in out)


@pytest.mark.parametrize(("options", "match"), [
    ({"response_format": CHOICES, "num_beams": 2}, "num_beams must be 1"),
    ({"response_format": CHOICES, "stop": ["\n"]}, "stop strings"),
    ({"response_format": {"regex": "[a-z"}}, "does not compile"),
    ({"response_format": '"string"'}, "must be a struct"),
    ({"response_format": {"type": "object", "properties": {"a": {"oneOf": [{"type": "string"},
                                                                            {"type": "integer"}]}}}},
     r"\$\.a: anyOf/oneOf of several types"),
    ({"response_format": ["only"]}, "at least two"),
    ({"response_format": ["a", "a", "b"]}, "duplicates"),
    ({"return_generation": True}, "applies with a response_format"),
    ({"response_format": 3}, "must be a Spark DDL struct"),
])
def test_bad_formats_are_config_errors(models, options, match):
    with pytest.raises(ConfigError, match=match):
        make_spec("generate", models["causal"], **options)


def test_udf_and_sql_return_typed_columns(spark, models):
    """The UDF with a Spark DDL struct (parsed by the session) and the same UDF through SQL."""
    from pyspark.sql import functions as F

    from spark_infer.udf import predict_udf

    rows = texts(150, seed=5)
    df = spark.createDataFrame(list(enumerate(rows)), "id int, text string").repartition(2)
    extract = predict_udf("generate", model=models["seq2seq"], max_new_tokens=100, batch_size=64,
                          response_format="category STRING, urgency TINYINT, refund BOOLEAN, tags ARRAY<STRING>, "
                                          "customer STRUCT<name: STRING, vip: BOOLEAN>",
                          return_error=True)
    label = predict_udf("generate", model=models["causal"], response_format=CHOICES, batch_size=64)
    code = predict_udf("generate", model=models["causal"], response_format={"regex": REGEX}, batch_size=64)
    out = df.select("id", extract("text").alias("x"), label("text").alias("label"), code("text").alias("code"))
    assert out.schema["x"].dataType.simpleString() == (
        "struct<prediction:struct<category:string,urgency:tinyint,refund:boolean,tags:array<string>,"
        "customer:struct<name:string,vip:boolean>>,error:string>")
    got = out.orderBy("id").collect()
    assert all(r["label"] in CHOICES for r in got)
    assert all(re.fullmatch(REGEX, r["code"]) for r in got)
    done = [r["x"]["prediction"] for r in got if r["x"]["prediction"] is not None]
    assert len(done) >= 0.5 * len(rows)  # unbounded strings: a random model runs out of tokens in some
    for r in got:
        p, e = r["x"]["prediction"], r["x"]["error"]
        assert (p is None) == (e is not None)
        if p is not None:
            # DDL fields are nullable: a value may be null, never of another type or out of range
            assert p["category"] is None or isinstance(p["category"], str)
            assert p["urgency"] is None or -128 <= p["urgency"] <= 127
            assert p["refund"] is None or isinstance(p["refund"], bool)
            assert p["customer"] is None or p["customer"]["vip"] in (True, False, None)
        else:
            assert "max_new_tokens=100 reached" in e
    spark.udf.register("ticket_label", label)
    df.createOrReplaceTempView("tickets")
    sql = spark.sql("SELECT id, ticket_label(text) AS label FROM tickets").orderBy(F.col("id")).collect()
    assert [r["label"] for r in sql] == [r["label"] for r in got]


def test_job_writes_typed_columns_counts_invalid_rows_and_applies_max_error_rate(spark, tmp_path, models):
    from spark_infer import run_job

    rows = texts(80, seed=6)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    spark.createDataFrame([(i, "a" if i % 2 else "b", t) for i, t in enumerate(rows)],
                          "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(inp)
    cfg = {"input": inp, "output": out, "model": models["seq2seq"], "task": "generate", "output_col": "ticket",
           "task_options": {"response_format": "topic STRING, urgency INT, refund BOOLEAN", "max_new_tokens": 60}}
    # a random model rambles inside strings: most rows run out of tokens. They are error rows like any
    # other, so max_error_rate (default 0.1) holds the units back...
    s = run_job(cfg, spark=spark, batch_size=32)
    assert s.exit_code == 3 and "max_error_rate" in s.error and s.units_committed == []
    assert s.counters["invalid_output_rows"] == s.counters["error_rows"] > 0.5 * len(rows)
    # ...and a run that allows them commits them as error rows (null value, the reason in `error`)
    s = run_job({**cfg, "max_error_rate": 1.0}, spark=spark, batch_size=32)
    assert s.exit_code == 0, s.error
    table = spark.read.format("delta").load(out)
    assert table.schema["ticket"].dataType.simpleString() == "struct<topic:string,urgency:int,refund:boolean>"
    res = table.collect()
    assert len(res) == len(rows)
    bad = [r for r in res if r["ticket"] is None]
    assert 0 < len(bad) < len(rows)
    assert all("max_new_tokens=60 reached" in r["error"] for r in bad)
    assert all(r["error"] is None and r["ticket"]["refund"] in (True, False, None) for r in res
               if r["ticket"] is not None)
    assert s.counters["invalid_output_rows"] == s.counters["error_rows"] == len(bad)
    record = spark.read.format("delta").load(out + "_runs").orderBy("started_at").collect()[-1]
    assert record["error_rows"] == len(bad)
