"""One redaction function for every line the job prints and every record it writes.

Secrets reach log lines through table and model URIs (`s3a://KEY:SECRET@bucket`, presigned or SAS
URLs with `?sig=` / `X-Amz-Signature=`), Spark confs (`spark.hadoop.fs.s3a.secret.key=...`) and error
messages that repeat them. Redaction is deliberately eager: masking a harmless value costs nothing,
printing a key costs a rotation.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

#: `scheme://userinfo@`: everything up to the '@' before the host, so secrets holding '/', '+' or ':'
#: (AWS secret keys) are masked whole
_USERINFO = re.compile(r"(?P<scheme>\b(?P<name>[a-zA-Z][a-zA-Z0-9+.-]*)://)(?P<info>[^\s@'\"]*)@")
#: schemes whose user info is a container name, not a credential (abfss://container@account.dfs...)
_CONTAINER_SCHEMES = {"abfs", "abfss", "wasb", "wasbs"}

#: query-string parameters that carry credentials (SAS tokens, presigned S3/GCS URLs, OAuth)
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential|token|access_token|id_token|api[_-]?key|apikey|key|password|"
    r"secret|client_secret|code|sv|se|sp|skoid|sktid|skt|ske|sks|skv)=)(?P<value>[^&\s'\"#]+)",
    re.IGNORECASE,
)

#: `key=value`, `key: value`, `"key": "value"`; the key is secret when one of its words (split at
#: . _ -) is a secret word, so `fs.s3a.secret.key` and `HF_TOKEN` are masked but `tokens` is not
_KEY_VALUE = re.compile(r"(?P<key>[A-Za-z][\w.\-]*)(?P<sep>[\"']?\s*[=:]\s*[\"']?)(?P<value>[^\s,;&'\"}\]]+)")
_SECRET_WORDS = {"secret", "password", "passwd", "pwd", "token", "credential", "credentials", "sas",
                 "signature", "auth", "authorization", "apikey", "secretkey", "accesskey", "sig"}
_SECRET_PAIRS = {("api", "key"), ("access", "key"), ("account", "key"), ("private", "key"), ("client", "secret")}

#: AWS access key ids and Hugging Face / GitHub style tokens appearing on their own
_BARE_TOKENS = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{12,}\b|\bhf_[A-Za-z0-9]{16,}\b|\bgh[pousr]_[A-Za-z0-9]{20,}\b")


def is_secret_key(key: str) -> bool:
    """Whether a key (`fs.s3a.secret.key`, `HF_TOKEN`, `password`) names a secret: one of its words
    (split at . _ -) is a secret word, so `tokens` is not."""
    words = [w for w in re.split(r"[._\-]", key.lower()) if w]
    return any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_PAIRS for p in zip(words, words[1:], strict=False))


def _mask_userinfo(m: re.Match) -> str:
    if m.group("name").lower() in _CONTAINER_SCHEMES and ":" not in m.group("info"):
        return m.group(0)
    return m.group("scheme") + MASK + "@"


def _mask_pair(m: re.Match) -> str:
    if m.group("value") == MASK or "://" in m.group(0) or not is_secret_key(m.group("key")):
        return m.group(0)
    return m.group("key") + m.group("sep") + MASK


def redact(text: str) -> str:
    """`text` with credentials masked: URI user info, secret query parameters, secret key=value pairs.

        >>> redact("s3a://AKIAXX:ab/c+d@bucket/t?X-Amz-Signature=f00 spark.hadoop.fs.s3a.secret.key=zz")
        's3a://***@bucket/t?X-Amz-Signature=*** spark.hadoop.fs.s3a.secret.key=***'
    """
    if not text:
        return text
    text = _USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, text)
    text = _KEY_VALUE.sub(_mask_pair, text)
    return _BARE_TOKENS.sub(MASK, text)


def redact_value(value: Any) -> Any:
    """`redact` applied to every string inside dicts, lists and tuples (for JSON records)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value
