r"""Logging: the library logs through `logging.getLogger("spark_infer")`; applications pick handlers.

Job events are one line each, `event=<name> key=value ...`, already redacted when the record is made,
so whatever handler an application installs never sees a credential. The command line (and the
notebook helper) install `KeyValueHandler`, which writes those lines to stderr as they are.

Every value printed (event fields, the plan table) goes through `render`: redacted, then bare when it
is plain, JSON-quoted when it holds whitespace, a line break or any other unprintable character, a
quote, a backslash or `=`, or nothing. One record is then always one physical line, and a value can
never pass for another field or another record (a partition named `x\nevent=run_end` included).
Free text (error lines, tracebacks) goes through `render_message`, whose continuation lines are indented.

    import logging; from spark_infer.log import install_stderr_handler
    install_stderr_handler(logging.INFO)          # what `spark-infer score` does
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from spark_infer.redact import MASK, is_secret_key, redact

logger = logging.getLogger("spark_infer")
#: set on records made by `event`: already rendered and redacted value by value
_RENDERED = "spark_infer_rendered"
logger.addHandler(logging.NullHandler())


#: characters that make a value quoted besides the unprintable ones (whitespace, line breaks,
#: control and format characters, which `str.isprintable` refuses, save the ASCII space)
_QUOTE_IF = frozenset(' "\'\\=')


def render(value: Any, *, also: str = "") -> str:
    r"""One printed value: redacted, then bare when plain, else JSON-quoted with every unprintable
    character escaped (so U+2028, NEL or a bidi override cannot break or disguise the line).

        render("books") == "books";  render("a b") == '"a b"';  render("x\nevent=y") == '"x\\nevent=y"'

    `also`: more characters that force quotes where the caller's format needs them (',' in unit labels).
    """
    s = redact(f"{value:.2f}" if isinstance(value, float) else str(value))
    if s and s.isprintable() and not any(c in _QUOTE_IF or c in also for c in s):
        return s
    return _escape_unprintable(json.dumps(s, ensure_ascii=False))


def render_message(text: str) -> str:
    """Free text as printed (an error line, a traceback): redacted and kept readable, every line
    after the first indented so that none can pass for an event line, unprintable characters
    inside a line escaped."""
    text = redact(text)
    return "\n  ".join(_escape_unprintable(line) for line in text.splitlines()) if text else text


def _escape_unprintable(s: str) -> str:
    return "".join(c if c.isprintable() else json.dumps(c)[1:-1] for c in s)


def kv(**fields: Any) -> str:
    """`key=value` pairs, each value through `render`; a field whose name says secret is masked whole."""
    return " ".join(f"{k}={render(MASK if is_secret_key(k) and v not in (None, '') else v)}"
                    for k, v in fields.items())


def event(name: str, /, *, log_level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured, redacted line: `event=<name> key=value ...`."""
    if logger.isEnabledFor(log_level):
        # values were redacted one by one before quoting: a second pass over the whole line could
        # mask a quote's escape and so unbalance it, hence the mark that tells handlers to leave it
        logger.log(log_level, "%s", kv(event=name, **fields), extra={_RENDERED: True})


class KeyValueHandler(logging.StreamHandler):
    """Writes each record's message to the *current* `sys.stderr`: event lines as they are, other
    messages through `render_message`."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # follow redirections (pytest's capture, notebooks)
        if not getattr(record, _RENDERED, False):
            record.msg, record.args = render_message(record.getMessage()), None
        super().emit(record)


def install_stderr_handler(level: int = logging.INFO) -> KeyValueHandler:
    """Send spark-infer's log lines to stderr (once per process); returns the handler."""
    for h in logger.handlers:
        if isinstance(h, KeyValueHandler):
            return h
    handler = KeyValueHandler()
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
