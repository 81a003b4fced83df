"""`generate` on tiny random T5 (seq2seq) and GPT-2 (decoder-only, no pad token) models.

Outputs are checked against `model.generate` called directly, one prompt at a time, so batching,
padding side, pad token, order restore and the output struct are all exercised on the real path.
"""

from __future__ import annotations

import os
import shutil

import pytest
from jobutil import rows_for, summary
from tiny_models import WORDS, make_tiny_gpt2, make_tiny_t5

from spark_infer.cli import run_score
from spark_infer.errors import ConfigError
from spark_infer.run import ExitCode
from spark_infer.runtime import ModelCache, RuntimeOptions, make_spec, open_runner, score_stream

NEW = 8
PROMPTS = [" ".join(WORDS[(i * 5 + 3 * k) % len(WORDS)] for k in range(1 + (i * 7) % 13)) for i in range(20)]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> str:
    return make_tiny_t5(str(tmp_path_factory.mktemp("models") / "tiny-t5"))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> str:
    return make_tiny_gpt2(str(tmp_path_factory.mktemp("models") / "tiny-gpt2"))


@pytest.fixture(scope="module", params=["t5", "gpt2"])
def model_dir(request, t5_dir, gpt2_dir) -> str:
    return {"t5": t5_dir, "gpt2": gpt2_dir}[request.param]


_loaded: dict[str, tuple] = {}


def _hf(model_dir: str):
    if model_dir not in _loaded:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        s2s = AutoConfig.from_pretrained(model_dir).is_encoder_decoder
        cls = AutoModelForSeq2SeqLM if s2s else AutoModelForCausalLM
        _loaded[model_dir] = (AutoTokenizer.from_pretrained(model_dir), cls.from_pretrained(model_dir).eval(), s2s)
    return _loaded[model_dir]


_refs: dict[tuple, dict] = {}


def reference(model_dir: str, prompt: str | None, new: int = NEW, ids: list[int] | None = None,
              beams: int = 1) -> dict | None:
    """model.generate on one unpadded prompt: the output struct the task must produce (memoised)."""
    import torch

    if prompt is None and ids is None:
        return None
    key = (model_dir, prompt, new, tuple(ids or ()), beams)
    if key in _refs:
        return _refs[key]
    tok, model, s2s = _hf(model_dir)
    eos = model.generation_config.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    input_ids = torch.tensor([ids if ids is not None else tok(prompt)["input_ids"]])
    with torch.inference_mode():
        seq = model.generate(input_ids=input_ids, max_new_tokens=new, do_sample=False, pad_token_id=pad,
                             num_beams=beams)[0].tolist()
    gen = seq[1:] if s2s else seq[input_ids.shape[1]:]
    if eos in gen:
        k = gen.index(eos)
        text, n, reason = tok.decode(gen[:k], skip_special_tokens=True), k + 1, "stop"
    else:
        text, n, reason = tok.decode(gen, skip_special_tokens=True), len(gen), "length"
    _refs[key] = {"text": text, "input_tokens": input_ids.shape[1], "output_tokens": n, "finish_reason": reason}
    return _refs[key]


def run_direct(spec, inputs, **runtime) -> tuple[list, list]:
    (out, err), = list(score_stream(spec, RuntimeOptions(device="cpu", **runtime), [inputs]))
    return out.to_pylist(), err.to_pylist()


# ------------------------------------------------------------------------------------------------


def test_greedy_runtime_and_udf_equal_direct_generate(spark, model_dir):
    from pyspark.sql import functions as F

    want = [reference(model_dir, p) for p in PROMPTS]
    assert {w["finish_reason"] for w in want} == {"stop", "length"}  # both ends are exercised
    assert len({w["text"] for w in want}) > 10

    # the runtime: several micro-batches of mixed lengths, sorted and restored
    spec = make_spec("generate", model_dir, max_new_tokens=NEW)
    got, err = run_direct(spec, [*PROMPTS, None], batch_size=6)
    assert err == [None] * (len(PROMPTS) + 1)
    assert got == [*want, None]
    # beam search runs batched (padded) too
    beam = make_spec("generate", model_dir, max_new_tokens=NEW, num_beams=3)
    assert run_direct(beam, PROMPTS[:8], batch_size=4)[0] == [reference(model_dir, p, beams=3) for p in PROMPTS[:8]]

    # the Spark UDF on two partitions, a null row included
    from spark_infer.udf import predict_udf

    gen = predict_udf("generate", model=model_dir, max_new_tokens=NEW, batch_size=4)
    rows = [(i, p) for i, p in enumerate(PROMPTS)] + [(len(PROMPTS), None)]
    df = spark.createDataFrame(rows, "id int, text string").repartition(2)
    out = df.select("id", gen("text").alias("g"))
    assert out.schema["g"].dataType.simpleString() == (
        "struct<text:string,input_tokens:int,output_tokens:int,finish_reason:string>"
    )
    res = {r["id"]: (r["g"].asDict() if r["g"] is not None else None) for r in out.orderBy(F.col("id")).collect()}
    assert res == {i: (want[i] if i < len(PROMPTS) else None) for i, _ in rows}


def test_seeded_sampling_is_per_row_reproducible(gpt2_dir):
    prompts = PROMPTS[:8]
    opts = {"max_new_tokens": NEW, "do_sample": True, "temperature": 1.5, "seed": 11}
    spec = make_spec("generate", gpt2_dir, **opts)
    first, _ = run_direct(spec, prompts, batch_size=8)
    # a rerun with another micro-batch size, and another row order / batch composition: same per prompt
    assert run_direct(spec, prompts, batch_size=1)[0] == first
    assert run_direct(spec, prompts[::-1][:5], batch_size=3)[0] == first[::-1][:5]
    # sampling really samples, and the seed matters
    greedy = [reference(gpt2_dir, p) for p in prompts]
    assert sum(a["text"] != b["text"] for a, b in zip(first, greedy, strict=True)) >= 3
    other, _ = run_direct(make_spec("generate", gpt2_dir, **{**opts, "seed": 12}), prompts, batch_size=8)
    assert other != first


def test_stop_strings_cut_text_and_count_tokens(gpt2_dir):
    base = [reference(gpt2_dir, p) for p in PROMPTS]
    # a word from the middle of one length-limited output that does not occur before it
    i, k, word = next(
        (i, k, w)
        for i, b in enumerate(base) if b["finish_reason"] == "length"
        for k, w in enumerate(b["text"].split(" ")) if k >= 2 and w not in " ".join(b["text"].split(" ")[:k])
    )
    stop = " " + word
    spec = make_spec("generate", gpt2_dir, max_new_tokens=NEW, stop=[stop, "never appears here"])
    got, err = run_direct(spec, PROMPTS, batch_size=5)
    assert err == [None] * len(PROMPTS)
    assert got[i] == {**base[i], "text": " ".join(base[i]["text"].split(" ")[:k]), "output_tokens": k + 1,
                      "finish_reason": "stop"}
    for g, b in zip(got, base, strict=True):  # every row: the unstopped output cut at the stop string
        if stop in b["text"]:
            assert g["text"] == b["text"][: b["text"].index(stop)] and g["finish_reason"] == "stop"
            assert g["output_tokens"] < b["output_tokens"]
        else:
            assert g == b


def test_token_budget_counts_new_tokens_and_prompts_are_truncated(t5_dir):
    spec = make_spec("generate", t5_dir, max_new_tokens=NEW, max_length=4)
    runner = open_runner(spec, RuntimeOptions(device="cpu", token_budget=2 * (4 + NEW)), cache=ModelCache())
    prompts = PROMPTS[:10]
    enc = runner.task.encode(prompts)
    assert [enc.budget_length(j) for j in range(len(prompts))] == [len(r) + NEW for r in enc.ids]
    assert [enc.length(j) for j in range(len(prompts))] == [len(r) for r in enc.ids]
    assert max(len(r) for r in enc.ids) == 4
    n_long = sum(len(p.split()) + 1 > 4 for p in prompts)  # words + </s>
    assert enc.truncated == n_long > 0
    out, err = runner.run(prompts)
    assert err.null_count == len(prompts)
    # prompts of 4 tokens + 8 new tokens: the budget of 24 allows 2 rows per micro-batch
    assert runner.counters["micro_batches"] >= len(prompts) // 2
    assert runner.counters["truncated_rows"] == n_long
    tok = _hf(t5_dir)[0]
    for p, o in zip(prompts, out.to_pylist(), strict=True):
        ids = tok(p, truncation=True, max_length=4)["input_ids"]
        assert o == reference(t5_dir, None, ids=ids)


def test_prompt_template_rows_null_fields_and_validation(gpt2_dir):
    template = "write about {name} in {category} :"
    spec = make_spec("generate", gpt2_dir, max_new_tokens=NEW, prompt_template=template)
    assert spec.input_columns() == ["name", "category"]
    rows = [{"name": "phone battery", "category": "data"}, {"name": None, "category": "food"},
            {"name": "good movie", "category": "music"}]
    got, err = run_direct(spec, rows)
    assert got[0] == reference(gpt2_dir, "write about phone battery in data :")
    assert got[2] == reference(gpt2_dir, "write about good movie in music :")
    assert got[1] is None and "['name']" in err[1] and "null" in err[1]
    assert err[0] is None and err[2] is None

    for bad in ("about {0}", "about {row.name}", "no fields", "about {name"):
        with pytest.raises(ConfigError, match="prompt_template"):
            make_spec("generate", gpt2_dir, prompt_template=bad)
    with pytest.raises(ConfigError, match="do_sample"):
        make_spec("generate", gpt2_dir, temperature=0.7)


def test_chat_template(gpt2_dir, tmp_path):
    no_template = make_spec("generate", gpt2_dir, chat_template=True)
    with pytest.raises(ValueError, match="no chat template"):
        no_template.load("cpu")

    chat_dir = str(tmp_path / "chat-gpt2")
    shutil.copytree(gpt2_dir, chat_dir)
    tok = _hf(gpt2_dir)[0]
    tok.chat_template = (
        "{% for m in messages %}{{ m['content'] }} .{% endfor %}{% if add_generation_prompt %} :{% endif %}"
    )
    tok.save_pretrained(chat_dir)
    spec = make_spec("generate", chat_dir, max_new_tokens=NEW, chat_template=True)
    got, err = run_direct(spec, PROMPTS[:4])
    assert err == [None] * 4
    assert got == [reference(gpt2_dir, f"{p} . :") for p in PROMPTS[:4]]


# ------------------------------------------------------------------------------------------------
# the scoring job
# ------------------------------------------------------------------------------------------------


def _job(tmp_path, *args, name="s.json"):
    js = str(tmp_path / name)
    code = run_score([*args, "--summary-json", js])
    return code, (summary(js) if os.path.exists(js) else None)


def test_job_generate_end_to_end_and_missing_template_column(spark, tmp_path, t5_dir, capsys):
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = rows_for("books", 0, 9) + rows_for("music", 100, 7)
    spark.createDataFrame(rows, "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(inp)

    # a template field the input lacks: exit 2 before any scoring, the column named, nothing written
    code, s = _job(tmp_path, "--input", inp, "--output", out, "--task", "generate", "--model", t5_dir,
                   "--option", "prompt_template=summarize {title} : {text}", name="bad.json")
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG, err
    assert "['title']" in err and s["status"] == "config_error"
    assert not os.path.exists(out)

    code, s = _job(tmp_path, "--input", inp, "--output", out, "--task", "generate", "--model", t5_dir,
                   "--option", "max_new_tokens=6", "--option", "prompt_template={category} : {text}",
                   "--batch-size", "4")
    assert code == ExitCode.OK, capsys.readouterr().err
    assert sorted(s["units_committed"]) == ["category=books", "category=music"]
    res = spark.read.format("delta").load(out)
    assert res.schema["prediction"].dataType.simpleString() == (
        "struct<text:string,input_tokens:int,output_tokens:int,finish_reason:string>"
    )
    got = {r["id"]: r["prediction"].asDict() for r in res.collect()}
    assert len(got) == len(rows) == res.count()
    for i, cat, text in rows:
        assert got[i] == reference(t5_dir, f"{cat} : {text}", new=6), i
