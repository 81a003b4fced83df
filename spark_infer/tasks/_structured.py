"""`response_format` for `generate`: what a row's output must be, its Arrow type, its grammar, its parser.

A response format is given as one of

* a Spark DDL struct type, `"category STRING, urgency INT, tags ARRAY<STRING>"` (Spark's own parser
  reads it on the driver; validated options hold Spark's JSON of it);
* a JSON schema (a dict, or its JSON text starting with `{`; its property order is the struct's);
* a list of choices, `["billing", "shipping", "other"]`;
* a regular expression, `{"regex": "[A-Z]{2}-[0-9]{4}"}`;

and validated into one normalised dict (`{"struct": <Spark JSON>}`, `{"json_schema": <JSON text>}`,
`{"choices": [...]}`, `{"regex": "..."}`): the form that is fingerprinted and shipped to workers.

Decoding is constrained by xgrammar's logits processor for `transformers` (the grammar compiled once
per worker against the model's tokenizer): every token keeps the output a prefix of a valid value.
Parsing then turns the finished text into the typed value, checked against the schema with the
jsonschema library (what a grammar cannot rule out); a row that cannot be one (it ran out of
`max_new_tokens` inside an object, a number out of its type's range) raises `InvalidOutput` with the
reason, and becomes an error row.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import re
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from spark_infer.ddl import from_json, is_type_json, to_arrow, type_json

KINDS = ("struct", "json_schema", "choices", "regex")
#: integer ranges of Spark's integral types (a value outside is an error row, never a wrapped number)
_INT_RANGES = {"byte": 8, "short": 16, "integer": 32, "long": 64}


class InvalidOutput(ValueError):
    """A generated text that is not a valid value of the response format (the reason is the message)."""


# -- normalise ------------------------------------------------------------------------------------
def normalise(value: Any) -> dict[str, Any] | None:
    """The option as one `{kind: spec}` dict; ValueError naming the problem. DDL needs a session
    (without an active session the DDL parser's error propagates: the job opens one and validates
    again)."""
    if value is None:
        return None
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS:
        kind, spec = next(iter(value.items()))
        if kind == "struct":
            return {"struct": _struct_json(spec)}
        if kind == "json_schema":
            return {"json_schema": _schema_text(spec)}
        if kind == "choices":
            return {"choices": _choices(spec)}
        return {"regex": _regex(spec)}
    if isinstance(value, dict):
        if value.get("type") == "struct" and "fields" in value:  # Spark's JSON of a struct type
            return {"struct": _struct_json(json.dumps(value))}
        return {"json_schema": _schema_text(value)}
    if isinstance(value, (list, tuple)):
        return {"choices": _choices(value)}
    if isinstance(value, pa.DataType) or type(value).__module__.startswith("pyspark.sql.types"):
        return {"struct": _struct_json(value)}
    if isinstance(value, str):
        if value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"response_format looks like a JSON schema but is not JSON ({exc})") from None
            return normalise(parsed)
        return {"struct": _struct_json(value)}
    raise ValueError("response_format must be a Spark DDL struct, a JSON schema, a list of choices or "
                     f"{{'regex': ...}}, got {type(value).__name__}")


def _struct_json(spec: Any) -> str:
    text = type_json(spec) if not (isinstance(spec, str) and is_type_json(spec)) else spec
    t = json.loads(text)
    if not isinstance(t, dict) or t.get("type") != "struct":
        raise ValueError(f"response_format as a type must be a struct (fields), got {from_json(text).simpleString()}")
    json_schema_of_spark(t)  # every field must have a JSON form
    return text


def _schema_text(spec: Any) -> str:
    """The schema as JSON text: kept as text so its property order (the struct's field order) survives
    the sorted-keys JSON the options are fingerprinted as."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise ValueError(f"response_format json_schema is not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise ValueError("response_format json_schema must be a JSON object")
    arrow_of_schema(spec, "$")  # every part must have an Arrow form
    return json.dumps(spec, separators=(",", ":"), ensure_ascii=False)


def _choices(spec: Any) -> list[str]:
    if not isinstance(spec, (list, tuple)) or len(spec) < 2:
        raise ValueError("response_format choices must be a list of at least two strings")
    if any(not isinstance(c, str) or not c for c in spec):
        raise ValueError("response_format choices must be non-empty strings")
    dup = sorted({c for c in spec if list(spec).count(c) > 1})
    if dup:
        raise ValueError(f"response_format choices has duplicates {dup}")
    return list(spec)


def _regex(spec: Any) -> str:
    if not isinstance(spec, str) or not spec:
        raise ValueError("response_format regex must be a non-empty string")
    try:
        re.compile(spec)
    except re.error as exc:
        raise ValueError(f"response_format regex {spec!r} does not compile ({exc})") from None
    return spec


# -- types ----------------------------------------------------------------------------------------
def arrow_type(fmt: dict[str, Any]) -> pa.DataType:
    kind, spec = next(iter(fmt.items()))
    if kind == "struct":
        return to_arrow(spec)
    if kind == "json_schema":
        return arrow_of_schema(json.loads(spec), "$")
    return pa.string()


def arrow_of_schema(schema: dict[str, Any], path: str) -> pa.DataType:
    """A JSON schema's Arrow type: object -> struct (properties in order), array -> list, string,
    integer (int64), number (double), boolean; `[T, "null"]` / anyOf with null -> T."""
    if not isinstance(schema, dict):
        raise ValueError(f"response_format json_schema at {path}: expected an object, got {schema!r}")
    if "enum" in schema and all(isinstance(v, str) for v in schema["enum"]):
        return pa.string()
    if "const" in schema and isinstance(schema["const"], str):
        return pa.string()
    any_of = schema.get("anyOf") or schema.get("oneOf")
    if any_of:
        real = [s for s in any_of if not (isinstance(s, dict) and s.get("type") == "null")]
        if len(real) != 1:
            raise ValueError(f"response_format json_schema at {path}: anyOf/oneOf of several types has no single "
                             "column type (allowed: one type, or one type or null)")
        return arrow_of_schema(real[0], path)
    t = schema.get("type")
    if isinstance(t, list):
        real_types = [x for x in t if x != "null"]
        if len(real_types) != 1:
            raise ValueError(f"response_format json_schema at {path}: type {t} has no single column type")
        t = real_types[0]
    if t == "object":
        props = schema.get("properties")
        if props:
            return pa.struct([pa.field(k, arrow_of_schema(v, f"{path}.{k}")) for k, v in props.items()])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return pa.map_(pa.string(), arrow_of_schema(extra, f"{path}.*"))
        raise ValueError(f"response_format json_schema at {path}: an object needs properties (or "
                         "additionalProperties with a schema)")
    if t == "array":
        items = schema.get("items")
        if not isinstance(items, dict):
            raise ValueError(f"response_format json_schema at {path}: an array needs an items schema")
        return pa.list_(arrow_of_schema(items, f"{path}[]"))
    simple = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64(), "boolean": pa.bool_()}
    if t in simple:
        return simple[t]
    raise ValueError(f"response_format json_schema at {path}: type {t!r} is not supported (object, array, string, "
                     "integer, number, boolean, enum of strings)")


def json_schema_of_spark(t: Any) -> dict[str, Any]:
    """The JSON schema of a Spark type (its JSON form): structs are objects with every field required
    (a nullable field may be null), integral types carry their ranges."""
    if isinstance(t, str):
        if t in _INT_RANGES:
            bits = _INT_RANGES[t]
            return {"type": "integer", "minimum": -(2 ** (bits - 1)), "maximum": 2 ** (bits - 1) - 1}
        if t in ("float", "double") or t.startswith("decimal"):
            return {"type": "number"}
        if t == "string":
            return {"type": "string"}
        if t == "boolean":
            return {"type": "boolean"}
        if t == "date":
            return {"type": "string", "format": "date"}
        if t in ("timestamp", "timestamp_ntz"):
            return {"type": "string", "format": "date-time"}
        raise ValueError(f"response_format field type {t!r} has no JSON form (use string, numbers, boolean, date, "
                         "timestamp, array, map<string,...> or struct)")
    kind = t.get("type")
    if kind == "struct":
        props = {f["name"]: _nullable(json_schema_of_spark(f["type"]), f.get("nullable", True))
                 for f in t["fields"]}
        return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
    if kind == "array":
        return {"type": "array", "items": _nullable(json_schema_of_spark(t["elementType"]),
                                                         t.get("containsNull", True))}
    if kind == "map":
        if t["keyType"] != "string":
            raise ValueError("response_format map keys must be strings (JSON object keys)")
        return {"type": "object", "additionalProperties": _nullable(json_schema_of_spark(t["valueType"]),
                                                                        t.get("valueContainsNull", True))}
    raise ValueError(f"response_format type {kind!r} has no JSON form")


def _nullable(schema: dict[str, Any], nullable: bool) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]} if nullable else schema


def grammar_json_schema(fmt: dict[str, Any]) -> dict[str, Any] | None:
    kind, spec = next(iter(fmt.items()))
    if kind == "struct":
        return json_schema_of_spark(json.loads(spec))
    if kind == "json_schema":
        return json.loads(spec)
    return None


def choices_ebnf(choices: list[str]) -> str:
    # JSON string literals are EBNF string literals for xgrammar (same escapes)
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def compile_grammar(compiler: Any, fmt: dict[str, Any]) -> Any:
    """The format compiled for one tokenizer (`xgrammar.GrammarCompiler`)."""
    kind, spec = next(iter(fmt.items()))
    if kind in ("struct", "json_schema"):
        return compiler.compile_json_schema(json.dumps(grammar_json_schema(fmt)), any_whitespace=False)
    if kind == "choices":
        return compiler.compile_grammar(choices_ebnf(spec))
    return compiler.compile_regex(spec)


def compile_for(tokenizer: Any, vocab_size: int, stop_token_ids: list[int], fmt: dict[str, Any]) -> Any:
    """The format's grammar for one model's tokenizer (`vocab_size`: the logits' width, which may
    exceed the tokenizer's vocabulary); its end is one of `stop_token_ids`."""
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
    return compile_grammar(xgr.GrammarCompiler(info), fmt)


def logits_processors(grammar: Any) -> Any:
    """`generate`'s logits_processor for one call (a fresh processor: it holds each row's grammar state)."""
    import xgrammar as xgr
    from transformers import LogitsProcessorList

    return LogitsProcessorList([xgr.contrib.hf.LogitsProcessor(grammar)])


def check_grammar(fmt: dict[str, Any]) -> None:
    """Plan time: the format is one xgrammar can build (no tokenizer needed); ValueError otherwise."""
    import xgrammar as xgr

    kind, spec = next(iter(fmt.items()))
    try:
        if kind in ("struct", "json_schema"):
            xgr.Grammar.from_json_schema(json.dumps(grammar_json_schema(fmt)), any_whitespace=False)
        elif kind == "choices":
            xgr.Grammar.from_ebnf(choices_ebnf(spec))
        else:
            xgr.Grammar.from_regex(spec)
    except Exception as exc:  # noqa: BLE001 - xgrammar's own errors name the construct
        raise ValueError(f"response_format: the constrained-decoding grammar cannot be built: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def values(fmt: dict[str, Any], value_type: pa.DataType, texts: Sequence[str], reasons: Sequence[str],
           new_tokens: int) -> tuple[pa.Array, list[str | None]]:
    """The typed values of generated rows, and per row the reason it has none (None when it has one)."""
    out: list[pa.Array] = []
    errors: list[str | None] = []
    for text, reason in zip(texts, reasons, strict=True):
        try:
            value = parse(fmt, text, value_type)
            if reason == "length" and not complete_at_limit(fmt, text):
                raise InvalidOutput("the value may continue past the end")
            out.append(pa.array([value], type=value_type))
            errors.append(None)
        except InvalidOutput as exc:
            errors.append(f"max_new_tokens={new_tokens} reached before the value was complete ({exc})"
                          if reason == "length" else f"invalid output for the response_format: {exc}")
            out.append(pa.nulls(1, type=value_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            errors.append(f"invalid output for the response_format: {exc}")
            out.append(pa.nulls(1, type=value_type))
    return (pa.concat_arrays(out) if out else pa.nulls(0, type=value_type)), errors


def complete_at_limit(fmt: dict[str, Any], text: str) -> bool:
    """Whether a valid text that hit max_new_tokens is surely the whole value: a JSON object or array
    is closed; a choice no longer choice starts with; never a regex match (it might go on)."""
    kind, spec = next(iter(fmt.items()))
    if kind in ("struct", "json_schema"):
        return True  # parsed: its closing brace was generated
    if kind == "choices":
        return not any(c != text and c.startswith(text) for c in spec)
    return False


# -- parse ----------------------------------------------------------------------------------------
def parse(fmt: dict[str, Any], text: str, arrow: pa.DataType) -> Any:
    """The typed value of one finished generation; InvalidOutput with the reason when it is not one."""
    kind, spec = next(iter(fmt.items()))
    if kind == "choices":
        if text not in spec:
            raise InvalidOutput(f"output {text[:80]!r} is not one of the choices")
        return text
    if kind == "regex":
        if re.fullmatch(spec, text) is None:
            raise InvalidOutput(f"output {text[:80]!r} does not match the regex")
        return text
    try:
        # strict=False: a raw control character inside a string is still that string
        value = json.loads(text, parse_float=decimal.Decimal, strict=False)
    except ValueError as exc:
        raise InvalidOutput(f"output is not complete JSON ({exc.args[0] if exc.args else exc})") from None
    problem = _validator(json.dumps(grammar_json_schema(fmt), sort_keys=True)).best_match(value)
    if problem is not None:
        # what the grammar could not rule out (e.g. maxLength counted over bytes that decode otherwise)
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.absolute_path)
        raise InvalidOutput(f"{where}: {problem.message[:200]}")
    spark = json.loads(spec) if kind == "struct" else None
    return _coerce(value, arrow, spark, "$")


@functools.lru_cache(maxsize=32)
def _validator(schema_text: str) -> Any:
    """A JSON-schema validator (the jsonschema library) for one schema, built once per worker."""
    import jsonschema

    schema = json.loads(schema_text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)

    class _Best:
        def __init__(self) -> None:
            self.validator = cls(schema)

        def best_match(self, value: Any) -> Any:
            return jsonschema.exceptions.best_match(self.validator.iter_errors(value))

    return _Best()


def _coerce(v: Any, t: pa.DataType, spark: Any, path: str) -> Any:
    if v is None:
        return None
    if pa.types.is_struct(t):
        if not isinstance(v, dict):
            raise InvalidOutput(f"{path}: expected an object")
        fields = {f["name"]: f["type"] for f in spark["fields"]} if isinstance(spark, dict) else {}
        return {t.field(i).name: _coerce(v.get(t.field(i).name), t.field(i).type, fields.get(t.field(i).name),
                                         f"{path}.{t.field(i).name}") for i in range(t.num_fields)}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if not isinstance(v, list):
            raise InvalidOutput(f"{path}: expected an array")
        el = spark.get("elementType") if isinstance(spark, dict) else None
        return [_coerce(x, t.value_type, el, f"{path}[{i}]") for i, x in enumerate(v)]
    if pa.types.is_map(t):
        if not isinstance(v, dict):
            raise InvalidOutput(f"{path}: expected an object")
        vt = spark.get("valueType") if isinstance(spark, dict) else None
        return [(k, _coerce(x, t.item_type, vt, f"{path}.{k}")) for k, x in v.items()]
    if pa.types.is_integer(t):
        if isinstance(v, bool) or not isinstance(v, int):
            raise InvalidOutput(f"{path}: expected an integer, got {v!r}")
        bits = t.bit_width
        if not -(2 ** (bits - 1)) <= v < 2 ** (bits - 1):
            raise InvalidOutput(f"{path}: {v} is out of range for a {bits}-bit integer")
        return v
    if pa.types.is_floating(t):
        if isinstance(v, bool) or not isinstance(v, (int, decimal.Decimal)):
            raise InvalidOutput(f"{path}: expected a number, got {v!r}")
        f = float(v)
        if f in (float("inf"), float("-inf")):
            raise InvalidOutput(f"{path}: {v} is out of range for a float")
        return f
    if pa.types.is_decimal(t):
        if isinstance(v, bool) or not isinstance(v, (int, decimal.Decimal)):
            raise InvalidOutput(f"{path}: expected a number, got {v!r}")
        d = decimal.Decimal(v).quantize(decimal.Decimal(1).scaleb(-t.scale))
        if len(d.as_tuple().digits) > t.precision:
            raise InvalidOutput(f"{path}: {v} does not fit decimal({t.precision},{t.scale})")
        return d
    if pa.types.is_boolean(t):
        if not isinstance(v, bool):
            raise InvalidOutput(f"{path}: expected true or false, got {v!r}")
        return v
    if pa.types.is_date32(t):
        try:
            return dt.date.fromisoformat(v)
        except (TypeError, ValueError):
            raise InvalidOutput(f"{path}: {v!r} is not a date (YYYY-MM-DD)") from None
    if pa.types.is_timestamp(t):
        try:
            return dt.datetime.fromisoformat(v)
        except (TypeError, ValueError):
            raise InvalidOutput(f"{path}: {v!r} is not a timestamp (ISO 8601)") from None
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if not isinstance(v, str):
            raise InvalidOutput(f"{path}: expected a string, got {v!r}")
        return v
    raise InvalidOutput(f"{path}: no conversion to {t}")
