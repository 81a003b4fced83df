"""`custom`: user predictors through the runtime, and the churn example end to end through the job."""

from __future__ import annotations

import json
import os
import sys
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from jobutil import ROOT, summary

from spark_infer.cli import run_score
from spark_infer.ddl import parse_ddl, to_arrow, type_json
from spark_infer.errors import ConfigError
from spark_infer.run import ExitCode
from spark_infer.runtime import ModelCache, RuntimeOptions, make_spec, open_runner

if ROOT not in sys.path:  # the driver imports examples.churn (workers get it with addPyFile below)
    sys.path.insert(0, ROOT)

from examples.churn.churn_model import load as load_churn  # noqa: E402
from examples.churn.make_customers import make_customers  # noqa: E402
from examples.churn.package import build_zip  # noqa: E402
from examples.churn.train import train  # noqa: E402

HERE = "test_tasks_custom"  # this module, importable on the driver (tests/ is on sys.path)
FACTORY_CALLS: list[dict] = []


# -- predictors used by the runtime tests ------------------------------------------------------------
class Doubler:
    """A class factory: `output_type` is a class attribute; predict returns a numpy array."""

    output_type = "double"

    def __init__(self, device: str, factor: float = 2.0) -> None:
        FACTORY_CALLS.append({"device": device, "factor": factor})
        self.factor = factor

    def predict(self, df: pd.DataFrame):
        return (df["x"].astype(float) * self.factor).to_numpy()


def pair_factory(model_dir: str, device: str, form: str = "frame"):
    FACTORY_CALLS.append({"model_dir": model_dir, "form": form})

    class Pair:
        output_type = pa.struct([pa.field("total", pa.float64()), pa.field("tag", pa.string())])

        def predict(self, df: pd.DataFrame):
            total = df["x"].fillna(0).astype(float) + df["y"].fillna(0).astype(float)
            tag = np.where(total > 3, "big", "small")
            if form == "frame":
                return pd.DataFrame({"tag": tag, "total": total})  # any column order
            if form == "records":
                return [{"total": t, "tag": g} for t, g in zip(total, tag, strict=True)]
            return pa.StructArray.from_arrays([pa.array(total), pa.array(tag)], names=["total", "tag"])

    return Pair()


pair_factory.output_type = "struct<total:double,tag:string>"


class _Plain:
    def predict(self, df: pd.DataFrame) -> list[float]:
        return [2.0 * x for x in df["x"]]


def untyped_factory(device: str):
    """Declares no output type anywhere: the option output_type must give it."""
    return _Plain()


class LargeText:
    """Declares a pyarrow type Spark reads as string: the object's own type agrees with Spark's view."""

    output_type = pa.large_string()

    def __init__(self, device: str) -> None:
        pass

    def predict(self, df: pd.DataFrame) -> pa.Array:
        return pa.array([f"<{x}>" for x in df["x"]], pa.large_string())


def lying_factory(device: str):
    return Doubler(device)


lying_factory.output_type = "string"


@pytest.fixture
def model_folder(tmp_path) -> str:
    d = tmp_path / "predictor"
    d.mkdir()
    (d / "predictor.json").write_text(json.dumps({"version": 1}))
    return str(d)


def _run(spec, batches, batch_size=3):
    runner = open_runner(spec, RuntimeOptions(device="cpu", batch_size=batch_size), cache=ModelCache())
    results = [runner.run(b) for b in batches]
    return runner, [o for out, _ in results for o in out.to_pylist()], [e for _, err in results for e in
                                                                          err.to_pylist()]


def test_predictor_forms_columns_and_one_factory_call_per_instance(spark, model_folder):
    # spark: the DDL output types below are read by Spark's parser (the active session's)
    FACTORY_CALLS.clear()
    spec = make_spec("custom", model_folder, predictor=f"{HERE}:Doubler", columns=["x"],
                     predictor_options={"factor": 3})
    assert spec.input_columns() == ["x"]
    assert spec.output_type() == pa.float64()
    runner, out, err = _run(spec, [[{"x": 1}, {"x": 2.5}, {"x": None}, {"x": 4}], [5, 6]])  # dict rows, scalars
    assert out[:2] == [3.0, 7.5] and np.isnan(out[2]) and out[3:] == [12.0, 15.0, 18.0]
    assert err == [None] * 6
    assert FACTORY_CALLS == [{"device": "cpu", "factor": 3}]  # once for all batches and micro-batches
    assert runner.counters["micro_batches"] == 3  # batch_size 3: rows are not token-sorted, 1 each

    rows = [{"x": 1, "y": 1}, {"x": 2, "y": None}, {"x": 3, "y": 4}]
    for form in ("frame", "records", "arrow"):
        FACTORY_CALLS.clear()
        spec = make_spec("custom", model_folder, predictor=f"{HERE}:pair_factory", columns=["x", "y"],
                         predictor_options={"form": form})
        _, out, err = _run(spec, [rows])
        assert out == [{"total": 2.0, "tag": "small"}, {"total": 2.0, "tag": "small"},
                       {"total": 7.0, "tag": "big"}], form
        assert FACTORY_CALLS == [{"model_dir": model_folder, "form": form}]  # model_dir: the --model folder

    # output_type as an option: for factories that declare none
    spec = make_spec("custom", model_folder, predictor=f"{HERE}:untyped_factory", columns=["x"],
                     output_type="float")
    assert spec.output_type() == pa.float32()
    assert _run(spec, [[{"x": 2}]])[1] == [4.0]


def test_configuration_errors(spark, model_folder):
    cases = [
        ({"predictor": "no_such_module_xyz:load", "columns": ["x"]}, "cannot import module"),
        ({"predictor": f"{HERE}:missing", "columns": ["x"]}, "has no attribute"),
        ({"predictor": "not a path", "columns": ["x"]}, "package.module:factory"),
        ({"predictor": f"{HERE}:untyped_factory", "columns": ["x"]}, "declare the output type"),
        ({"predictor": f"{HERE}:Doubler", "columns": []}, "columns"),
        ({"predictor": f"{HERE}:Doubler", "columns": ["x"], "output_type": "struct<a:int"}, "output_type"),
        # Spark's own parser decides, and its message comes through
        ({"predictor": f"{HERE}:untyped_factory", "columns": ["x"], "output_type": "array<int"},
         r"output_type='array<int'.*PARSE_SYNTAX_ERROR"),
        ({"predictor": f"{HERE}:untyped_factory", "columns": ["x"], "output_type": "interval year to month"},
         "no Arrow equivalent"),
        # the option and the factory's own declaration must agree
        ({"predictor": f"{HERE}:Doubler", "columns": ["x"], "output_type": "string"}, "differs from the factory"),
    ]
    for options, match in cases:
        with pytest.raises(ConfigError, match=match):
            make_spec("custom", model_folder, **options)
    # the object's own output_type must agree with the declared one
    spec = make_spec("custom", model_folder, predictor=f"{HERE}:lying_factory", columns=["x"])
    with pytest.raises(ValueError, match="differs from the declared"):
        spec.load("cpu")


def test_ddl_types(spark):
    """DDL through Spark's own parser (the session's), to Spark's JSON, to Arrow without a JVM."""
    assert to_arrow(type_json("struct<churn_probability:double,label:string>")) == pa.struct(
        [pa.field("churn_probability", pa.float64()), pa.field("label", pa.string())])
    assert to_arrow(type_json("a int, b array<float>, `c d` map<string,bigint>")) == pa.struct(
        [pa.field("a", pa.int32()), pa.field("b", pa.list_(pa.float32())),
         pa.field("c d", pa.map_(pa.string(), pa.int64()))])
    assert to_arrow(type_json("DECIMAL(10, 2)")) == pa.decimal128(10, 2)
    assert to_arrow(pa.int16()) == pa.int16()
    assert parse_ddl("boolean").simpleString() == "boolean"
    for bad in ("array<int", "struct<a int,>", "blob", "map<string>", " "):
        with pytest.raises(ValueError, match="DDL"):
            to_arrow(type_json(bad))
    # char/varchar read as string (Arrow has neither), nested ones too
    assert to_arrow(type_json("a char(3), b array<varchar(5)>")) == pa.struct(
        [pa.field("a", pa.string()), pa.field("b", pa.list_(pa.string()))])
    # Spark's JSON and pyspark/pyarrow types need no parser; DDL never reaches the workers' to_arrow
    from pyspark.sql.types import DoubleType

    assert type_json(DoubleType()) == type_json("double") == type_json('"double"') == type_json(pa.float64())
    with pytest.raises(ValueError, match="Spark DDL"):
        to_arrow("double")


def test_validated_options_hold_sparks_json(spark, model_folder):
    """The spec the workers get carries the type as Spark's JSON (one spelling, one fingerprint), for
    the option and for the factory's own DDL alike."""
    upper = make_spec("custom", model_folder, predictor=f"{HERE}:untyped_factory", columns=["x"],
                      output_type="STRUCT<a: INT, b: STRING>")
    lower = make_spec("custom", model_folder, predictor=f"{HERE}:untyped_factory", columns=["x"],
                      output_type="a int, b string")
    assert json.loads(upper.options_json)["output_type"] == parse_ddl("struct<a:int,b:string>").json()
    assert upper.fingerprint == lower.fingerprint
    from_factory = make_spec("custom", model_folder, predictor=f"{HERE}:pair_factory", columns=["x", "y"])
    assert json.loads(from_factory.options.output_type)["type"] == "struct"
    # a pyarrow type as the option: no parser involved, the same JSON
    as_arrow = make_spec("custom", model_folder, predictor=f"{HERE}:untyped_factory", columns=["x"],
                         output_type=pa.struct([pa.field("a", pa.int32()), pa.field("b", pa.string())]))
    assert as_arrow.options_json == upper.options_json
    spec = make_spec("custom", model_folder, predictor=f"{HERE}:LargeText", columns=["x"])
    assert spec.output_type() == pa.string() and _run(spec, [[{"x": 1}]])[1] == ["<1>"]


#: run in a process without any Spark session: what a worker (or a driver before its session) can do
NO_SESSION = f"""
import json, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import pyarrow as pa
from pyspark import SparkContext
from spark_infer.errors import NeedsSparkSession
from spark_infer.runtime import ModelCache, RuntimeOptions, make_spec, open_runner
spec = make_spec("custom", sys.argv[1], predictor="{HERE}:untyped_factory", columns=["x"], output_type='"double"')
runner = open_runner(spec, RuntimeOptions(device="cpu", batch_size=4), cache=ModelCache())
out, err = runner.run([{{"x": 1}}, {{"x": 2.5}}])
arrow = make_spec("custom", sys.argv[1], predictor="{HERE}:untyped_factory", columns=["x"], output_type=pa.int64())
try:
    # a bare atomic name (Doubler's "double") is read without Spark (ddl.ATOMIC_DDL); a composite is not
    make_spec("custom", sys.argv[1], predictor="{HERE}:Doubler", columns=["x"])
    make_spec("custom", sys.argv[1], predictor="{HERE}:untyped_factory", columns=["x"], output_type="array<double>")
    ddl = "parsed"
except NeedsSparkSession as exc:
    ddl = str(exc)
print(json.dumps({{"out": out.to_pylist(), "arrow": str(arrow.output_type()), "ddl": ddl,
                  "jvm": SparkContext._gateway is not None}}))
"""


def test_workers_read_the_json_without_a_session_and_ddl_asks_for_one(model_folder):
    import subprocess

    r = subprocess.run([sys.executable, "-c", NO_SESSION, model_folder], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["out"] == [2.0, 5.0] and got["arrow"] == "int64"
    assert "'array<double>' is a Spark DDL type" in got["ddl"] and "active Spark session" in got["ddl"]
    assert got["jvm"] is False  # nothing here started a JVM


# -- the churn example through the job ----------------------------------------------------------------
def test_churn_example_end_to_end(spark, tmp_path, capsys):
    from delta.tables import DeltaTable

    model_dir, inp, out = str(tmp_path / "model"), str(tmp_path / "customers"), str(tmp_path / "scores")
    metrics = train(model_dir, n=2000, epochs=150)
    assert metrics["holdout_accuracy"] >= 0.85, metrics
    assert sorted(os.listdir(model_dir)) == ["model.safetensors", "predictor.json"]
    n = make_customers(spark, inp, n=240, seed=5)
    # one customer with missing values: scored too (mean tenure, no plan)
    spark.createDataFrame([(10_000, "north", None, 50.0, 1, None)], spark.read.format("delta").load(inp).schema) \
        .write.format("delta").mode("append").save(inp)
    # ship the example's code to the Python workers the way a cluster job would (--py-files)
    spark.sparkContext.addPyFile(build_zip(str(tmp_path / f"churn_py_{uuid.uuid4().hex[:8]}.zip")))

    def job(name):
        js = str(tmp_path / name)
        code = run_score(["--config", os.path.join(ROOT, "examples", "churn", "job.yaml"), "--input", inp,
                          "--output", out, "--model", model_dir, "--summary-json", js])
        return code, summary(js)

    code, s = job("s1.json")
    assert code == ExitCode.OK, capsys.readouterr().err
    customers = spark.read.format("delta").load(inp).toPandas().sort_values("customer_id")
    regions = sorted(customers["region"].unique())
    assert sorted(s["units_committed"]) == [f"region={r}" for r in regions]
    res = spark.read.format("delta").load(out)
    assert res.schema["churn"].dataType.simpleString() == "struct<churn_probability:double,label:string>"
    got = res.select("customer_id", "region", "churn", "error", "task").toPandas()
    assert len(got) == n + 1 == got["customer_id"].nunique()
    assert got["error"].isna().all() and set(got["task"]) == {"custom"}

    # the model's own outputs on the same rows
    direct = load_churn(model_dir).predict(
        customers[["tenure_months", "monthly_charges", "support_calls", "plan"]].reset_index(drop=True))
    want = dict(zip(customers["customer_id"], zip(direct["churn_probability"], direct["label"], strict=True),
                    strict=True))
    for cid, churn in zip(got["customer_id"], got["churn"], strict=True):
        p, label = want[cid]
        assert churn["churn_probability"] == pytest.approx(p, abs=1e-6), cid
        assert churn["label"] == label
    labels = {c["label"] for c in got["churn"]}
    assert labels == {"churn", "stay"}

    version = DeltaTable.forPath(spark, out).history(1).first()["version"]
    code, s2 = job("s2.json")
    assert code == ExitCode.OK and s2["units_committed"] == [] and s2["rows_scored"] == 0
    assert DeltaTable.forPath(spark, out).history(1).first()["version"] == version  # rerun commits nothing

    # a column the predictor needs but the input lacks: exit 2 before scoring
    code = run_score(["--config", os.path.join(ROOT, "examples", "churn", "job.yaml"), "--input", inp,
                      "--output", str(tmp_path / "other"), "--model", model_dir, "--option",
                      'columns=["tenure_months","contract"]'])
    assert code == ExitCode.CONFIG and "['contract']" in capsys.readouterr().err
