"""Logging: the library logs through `logging.getLogger("spark_infer")`; applications pick handlers.

Job events are one line each, `event=<name> key=value ...`, already redacted when the record is made,
so whatever handler an application installs never sees a credential. The command line (and the
notebook helper) install `KeyValueHandler`, which writes those lines to stderr as they are.

    import logging; from spark_infer.log import install_stderr_handler
    install_stderr_handler(logging.INFO)          # what `spark-infer score` does
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from spark_infer.redact import redact

logger = logging.getLogger("spark_infer")
logger.addHandler(logging.NullHandler())


def kv(**fields: Any) -> str:
    """`key=value` pairs; values with spaces, '=' or nothing in them are JSON-quoted."""
    parts = []
    for k, v in fields.items():
        if isinstance(v, float):
            v = f"{v:.2f}"
        s = str(v)
        if " " in s or "=" in s or not s:
            s = json.dumps(s)
        parts.append(f"{k}={s}")
    return " ".join(parts)


def event(name: str, /, *, log_level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured, redacted line: `event=<name> key=value ...`."""
    if logger.isEnabledFor(log_level):
        logger.log(log_level, "%s", redact(kv(event=name, **fields)))


class KeyValueHandler(logging.StreamHandler):
    """Writes each record's message on its own line to the *current* `sys.stderr` (redacted again,
    for messages that did not come through `event`)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # follow redirections (pytest's capture, notebooks)
        record.msg, record.args = redact(record.getMessage()), None
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
