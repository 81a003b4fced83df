"""The job gives what the model's own library gives, and refuses at plan time what it cannot run.

The element-wise matrix over pooling modes, Dense/Normalize, prompts, classifiers and generators is
in test_parity.py (runtime and UDF); here the same comparison goes through the real job (Spark,
Delta, the runs table), plus the plan-time refusal with exit 2 and nothing written.
"""

from __future__ import annotations

import os
import random

import numpy as np
from parity_models import UNKNOWN_MODULE_TYPE, make_st_model, make_st_unknown_module
from tiny_models import WORDS

from spark_infer.cli import run_score
from spark_infer.run import ExitCode


def _texts(n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def test_job_output_equals_sentence_transformers_for_a_dot_product_model_with_dense(spark, tmp_path):
    """A model with a Dense layer and no Normalize (dot-product family): vectors of the model's
    dimension and norm, not L2-normalised ones (the old code gave norm 1 and 32 dims here)."""
    from sentence_transformers import SentenceTransformer

    from spark_infer import run_job

    model = make_st_model(str(tmp_path / "dot-dense"), "mean", dense=True, normalize=False, seed=21)
    texts = _texts(60)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    rows = [(i, "a" if i % 2 else "b", t) for i, t in enumerate(texts)]
    spark.createDataFrame(rows, "id long, category string, text string").write.format("delta") \
        .partitionBy("category").save(inp)
    s = run_job({"input": inp, "output": out, "model": model}, spark=spark, batch_size=8)
    assert s.exit_code == 0 and s.model_assumed == [], s.error

    got = {r["id"]: r["embedding"] for r in spark.read.format("delta").load(out).collect()}
    ours = np.array([got[i] for i in range(len(texts))], dtype=np.float32)
    ref = SentenceTransformer(model, device="cpu").encode(texts, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(texts), 16)
    assert np.abs(ours - ref).max() <= 1e-5
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)  # not normalised behind its back
    runs = spark.read.format("delta").load(out + "_runs").collect()
    assert runs[-1]["model_assumed"] is None


def test_a_module_the_task_cannot_run_is_refused_at_plan_time_with_exit_2_and_nothing_written(
        spark, tmp_path, capsys):
    model = make_st_unknown_module(str(tmp_path / "unknown"))
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    spark.createDataFrame([(1, "a", "good movie")], "id long, category string, text string") \
        .write.format("delta").save(inp)
    code = run_score(["--input", inp, "--output", out, "--model", model])
    err = capsys.readouterr().err
    assert code == ExitCode.CONFIG, err
    assert UNKNOWN_MODULE_TYPE in err and "trust_remote_code" in err
    assert not os.path.exists(out)
