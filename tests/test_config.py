"""The config file's sections, the flat names kept as aliases, and errors that name a field the way
the user wrote it. Pure Python: no Spark session."""

from __future__ import annotations

import pytest
import yaml

from spark_infer.cli import overrides_from, score_parser
from spark_infer.config import FLAT, SECTIONS, JobConfig, build_config
from spark_infer.errors import ConfigError

SECTIONED = """
job_name: nightly
input:
  table: /data/products
  id_col: sku
  partition_by: [category]
model:
  ref: /models/minilm
  task: embed
  options: {normalize: false}
output:
  table: /data/emb
  rows_per_file: 5000
runtime:
  batch_size: 16
resources:
  tasks_per_group: 4
  concurrent_groups: 3
  spark_conf: {spark.sql.shuffle.partitions: 8}
commit:
  group_units: 10
  max_error_rate: 0.0
report:
  progress_interval_s: 0
"""

FLAT_EQUIVALENT = {
    "job_name": "nightly", "input": "/data/products", "id_col": "sku", "partition_by": ["category"],
    "model": "/models/minilm", "task": "embed", "task_options": {"normalize": False}, "output": "/data/emb",
    "rows_per_file": 5000, "batch_size": 16, "score_partitions": 4, "concurrent_units": 3,
    "spark_conf": {"spark.sql.shuffle.partitions": 8}, "group_units": 10, "max_error_rate": 0.0,
    "progress_interval_s": 0,
}


def test_sections_and_flat_names_give_the_same_config(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(SECTIONED)
    from_file = build_config(str(path))
    assert from_file == build_config(overrides=FLAT_EQUIVALENT) == JobConfig(**FLAT_EQUIVALENT)
    assert from_file.input.table == "/data/products" and from_file.input.id_col == "sku"
    assert from_file.model.ref == "/models/minilm" and from_file.task_option_values() == {"normalize": False}
    assert from_file.resources.tasks_per_group == 4 and from_file.resources.concurrent_groups == 3
    assert from_file.resources.spark_conf == {"spark.sql.shuffle.partitions": "8"}
    assert from_file.runs_table_ref == "/data/emb_runs"


def test_every_flat_name_lands_in_its_section():
    for flat, (section, field) in FLAT.items():
        assert field in SECTIONS[section].model_fields, (flat, section, field)


def test_flags_override_fields_inside_sections_and_merge_dicts(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(SECTIONED)
    ns = score_parser().parse_args(["--config", str(path), "--batch-size", "32", "--concurrent-units", "5",
                                    "--tasks-per-group", "2", "--option", "max_length=64",
                                    "--conf", "spark.foo=bar", "--output", "/data/other"])
    cfg = build_config(ns.config, overrides_from(ns))
    assert cfg.runtime.batch_size == 32 and cfg.resources.concurrent_groups == 5
    assert cfg.resources.tasks_per_group == 2
    assert cfg.model.options == {"normalize": False, "max_length": 64}  # merged, not replaced
    assert cfg.resources.spark_conf == {"spark.sql.shuffle.partitions": "8", "spark.foo": "bar"}
    assert cfg.output.table == "/data/other" and cfg.output.rows_per_file == 5000  # the section's other fields stay
    assert cfg.input.id_col == "sku"


def test_a_config_round_trips_through_its_dump_with_overrides():
    cfg = JobConfig(**FLAT_EQUIVALENT)
    again = build_config(base=cfg.model_dump(), overrides={"batch_size": 9, "input": "/data/new"})
    assert again.runtime.batch_size == 9 and again.input.table == "/data/new"
    assert again.input.id_col == "sku" and again.resources.concurrent_groups == 3
    assert yaml.safe_load(yaml.safe_dump(cfg.model_dump(mode="json"))) == cfg.model_dump(mode="json")


@pytest.mark.parametrize(("fields", "needles"), [
    ({"input": "/a", "output": "/b", "batchsize": 3}, ["'batchsize'", "did you mean 'batch_size'"]),
    ({"input": {"table": "/a", "txet_col": "t"}, "output": "/b"}, ["'input.txet_col'", "did you mean 'input.text_col'"]),
    ({"input": "/a", "output": "/b", "batch_size": "many"}, ["config field 'batch_size'=", "many"]),
    ({"input": "/a", "output": "/b", "runtime": {"batch_size": "many"}}, ["config field 'runtime.batch_size'="]),
    ({"input": "/a", "output": "/b", "concurrent_units": 0}, ["config field 'concurrent_units'=0"]),
    ({"input": "/a", "output": {"column": "emb"}}, ["config field 'output.table' is required"]),
    ({"input": "/a"}, ["config field 'output' is required"]),
    ({"input": "/a", "output": "/a/"}, ["output must differ from input"]),
    ({"input": "/a", "output": "/b", "resources": {"gpus_per_task": 2}}, ["'resources.gpus_per_task'",
                                                                            "one GPU per task"]),
])
def test_errors_name_the_field_as_written(fields, needles):
    with pytest.raises(ConfigError) as ei:
        build_config(overrides=fields)
    for n in needles:
        assert n in str(ei.value), str(ei.value)


def test_every_flat_name_is_a_flag_too():
    """What a file can say, the command line can say (file-only fields surprise schedulers)."""
    dests = {a.dest for a in score_parser()._actions}
    covered = {FLAT[d] for d in dests if d in FLAT}
    covered |= {FLAT["spark_conf"]} if "conf" in dests else set()  # --conf KEY=VALUE
    covered |= {FLAT["task_options"]} if "option" in dests else set()  # --option KEY=VALUE
    missing = set(FLAT.values()) - covered
    assert not missing, sorted(missing)


def test_unquoted_yaml_null_means_the_on_error_option_null(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: /a\noutput: /b\non_error: null\n")
    assert build_config(str(path)).runtime.on_error == "null"
