"""One renderer for every printed value: hostile partition values can neither break a record's line nor
print a record of their own, in the event lines and in the plan table alike; redaction still applies."""

from __future__ import annotations

import json
import logging
import re

import pytest

from spark_infer.inputs import InputUnit
from spark_infer.log import event, install_stderr_handler, kv, render, render_message
from spark_infer.plan import CHANGED, NEW, Plan
from spark_infer.report import format_plan
from spark_infer.sinks.base import Committed
from spark_infer.units import UnitColumn

FORGED = "event=run_end status=succeeded exit_code=0"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
HOSTILE = [
    f"evil\n{FORGED}",
    f'quo"te\\ {FORGED}',
    f"cr\r{FORGED}",
    f"ls\u2028{FORGED}",
    f"ps\u2029nel\x85vt\x0bff\x0cfs\x1c{FORGED}",
    f"bidi\u202e and zero\u200bwidth and tab\t{FORGED}",
    "a,b=c",
    "lsep\u2028only",
    'quote"only',
    "",
]
#: one `key=value` field: a JSON-quoted value or a bare run of non-space characters
FIELD = re.compile(r'(?:^| )([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)')


def parse(line: str) -> dict[str, str]:
    """A rendered line's fields, every quoted value read back as JSON; asserts nothing is left over."""
    fields, pos = {}, 0
    for m in FIELD.finditer(line):
        assert m.start() == pos, f"unparsed text {line[pos:m.start()]!r} in {line!r}"
        k, v = m.groups()
        assert k not in fields, f"field {k} twice in {line!r}"
        fields[k] = json.loads(v) if v.startswith('"') else v
        pos = m.end()
    assert pos == len(line), f"unparsed tail {line[pos:]!r}"
    return fields


def physical_lines(text: str) -> list[str]:
    """Lines as any reader may split them: str.splitlines breaks at \\r, U+2028, NEL, FS, ... too."""
    return text.splitlines()


@pytest.mark.parametrize("value", HOSTILE)
def test_render_keeps_a_value_on_one_line_and_reads_back(value):
    out = render(value)
    assert len(physical_lines(out)) == 1 and out.isprintable()
    assert json.loads(out) == value  # quoted (each of these needs it) and exact
    assert parse(f"k={out}") == {"k": value}


def test_plain_values_stay_bare():
    assert [render(v) for v in ("books", "a-b_c.d/e:f", 3, 1.5, "café", "s3a://b/p")] == [
        "books", "a-b_c.d/e:f", "3", "1.50", "café", "s3a://b/p"]


def test_event_lines_with_hostile_values_are_one_record(capsys):
    install_stderr_handler(logging.INFO)
    for value in HOSTILE:
        event("group_committed", group=value, first=value, rows=3)
    # a free-text message (a traceback's last line) cannot start a line of its own either
    logging.getLogger("spark_infer").error("ValueError: bad partition %s", HOSTILE[0])
    lines = physical_lines(capsys.readouterr().err)
    assert len(lines) == len(HOSTILE) + 2  # the free-text message keeps its line break, indented
    assert [ln for ln in lines if ln.startswith("event=")] == lines[:len(HOSTILE)]
    for value, line in zip(HOSTILE, lines, strict=False):
        assert parse(line) == {"event": "group_committed", "group": value, "first": value, "rows": "3"}
    assert lines[-1].startswith("  ")


def hostile_plan() -> Plan:
    cols = (UnitColumn("category", "string"),)
    units = [InputUnit((v,), rows=i + 1, state=None, files=None) for i, v in enumerate(HOSTILE)]
    return Plan(cols, False, 7, pending=[(u, NEW if i % 2 else CHANGED) for i, u in enumerate(units[:4])],
                done=units[4:7], stale_model=units[7:9],
                orphaned=[((units[9].key[0],), Committed(state="s", fingerprint="f", rows=10))])


def test_plan_table_has_exactly_one_line_per_unit():
    text = format_plan(hostile_plan(), f"s3a://KEY:{SECRET}@bucket/in\n{FORGED}", "id")
    lines = physical_lines(text)
    assert len(lines) == 1 + len(HOSTILE) + 1 == len(text.split("\n"))  # header, one per unit, counts
    assert not [ln for ln in lines if ln.startswith("event=")]
    header, units, counts = lines[0], lines[1:-1], lines[-1]
    assert parse(header.removeprefix("plan: ")) == {
        "input": f"s3a://***@bucket/in\n{FORGED}", "version": "7", "units": "category"}
    assert SECRET not in text  # redaction still applies to every rendered value
    for value, line in zip(HOSTILE, units, strict=True):
        m = re.search(r' category=("(?:[^"\\]|\\.)*"|\S+) +rows=(\d+)(?: score=\d+(?: \([a-z=0-9 ]+\) delete=\d+ keep=\d+)?)?$',
                      line)
        assert m, line
        assert json.loads(m.group(1)) == value  # the unit's own value, read back exactly
    assert [ln.split()[0] for ln in units] == ["pending"] * 4 + ["done"] * 3 + ["kept"] * 2 + ["orphaned"]
    assert parse(counts.removeprefix("plan: "))["units_total"] == "9"


def test_plan_table_limits_and_plain_labels():
    plan = Plan((UnitColumn("category", "string"), UnitColumn("day", "date")), False, 1,
                pending=[(InputUnit(("books", "2026-01-0" + str(d)), 5, None, None), NEW) for d in range(1, 4)])
    text = format_plan(plan, "/data/in", "id", max_lines=2)
    assert "pending  new           category=books,day=2026-01-01" in text  # ordinary values unquoted
    assert "  ... 1 more pending" in text and len(text.splitlines()) == 1 + 2 + 1 + 1


def test_secret_fields_and_values_are_masked_before_quoting(capsys):
    install_stderr_handler(logging.INFO)
    fields = dict(token="abc def", conf=f"spark.hadoop.fs.s3a.secret.key={SECRET}",
                  note='a password=x" status=succeeded')
    event("x", **fields)
    printed = capsys.readouterr().err.rstrip("\n")
    for line in (kv(event="x", **fields), printed):  # the record as made, and as the handler wrote it
        got = parse(line)
        assert got["token"] == "***" and SECRET not in line
        assert got["conf"] == "spark.hadoop.fs.s3a.secret.key=***"
        assert "status" not in got  # masking inside a quoted value never unbalances its quotes


def test_free_text_keeps_its_lines_but_none_passes_for_an_event():
    text = render_message(f"error: unit {HOSTILE[0]} failed\r\n{FORGED}\u2028{FORGED} s3a://KEY:{SECRET}@b/p")
    lines = physical_lines(text)
    assert text.split("\n") == lines  # every line break (\r\n, U+2028 too) is one plain \n now
    assert len(lines) == 4 and lines[0] == "error: unit evil"
    assert all(ln.startswith("  event=run_end") for ln in lines[1:])  # indented: no line is an event
    assert SECRET not in text
