"""One redaction function for every printed line and record: the shapes secrets take in real URIs."""

from __future__ import annotations

import json
import logging

import pytest

from spark_infer.log import event, install_stderr_handler
from spark_infer.redact import redact, redact_value
from spark_infer.report import RunSummary

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(("text", "secret"), [
    (f"s3a://AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}@bucket/path", AWS_SECRET),
    (f"s3a://AKIAIOSFODNN7EXAMPLE:{AWS_SECRET}@bucket/path", "AKIAIOSFODNN7EXAMPLE"),
    ("https://acct.blob.core.windows.net/c/f?sv=2021-08-06&se=2030&sr=b&sp=r&sig=a%2Bb%2Fc%3D", "a%2Bb%2Fc%3D"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=0123abcd", "0123abcd"),
    ("https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F2026&X-Amz-Signature=0123abcd", "AKIA%2F2026"),
    ("https://storage.googleapis.com/b/o?X-Goog-Signature=feedface", "feedface"),
    ("https://ghp_token1234@github.com/org/repo", "ghp_token1234"),
    ("spark.hadoop.fs.s3a.secret.key=" + AWS_SECRET, AWS_SECRET),
    ("spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net=c2VjcmV0+/==", "c2VjcmV0+/=="),
    ('{"password": "hunter2", "user": "bob"}', "hunter2"),
    ("HF_TOKEN=hf_FAKE0123456789SECRETTOKEN", "hf_FAKE0123456789SECRETTOKEN"),
    ("loaded with token hf_FAKE0123456789SECRETTOKEN from env", "hf_FAKE0123456789SECRETTOKEN"),
    ("mlflow uri https://user:pa%40ss@mlflow.example.com/api", "pa%40ss"),
])
def test_secrets_are_masked(text, secret):
    assert secret not in redact(text), redact(text)


@pytest.mark.parametrize("text", [
    "event=progress units=3/4 rows_done=30/40 tokens=1234 author=bob",
    "abfss://container@account.dfs.core.windows.net/tables/products",
    "/Volumes/main/shop/models/minilm",
    "models:/minilm@champion",
    "config field 'batch_size'=\"many\": Input should be a valid integer",
])
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_records_and_log_lines_go_through_it(capsys):
    install_stderr_handler(logging.INFO)
    event("run_start", input=f"s3a://KEY:{AWS_SECRET}@b/p", name="x")  # a field called name is fine too
    s = RunSummary(run_id="r", job_name="j", input=f"s3a://KEY:{AWS_SECRET}@b/p", error=f"failed on s3a://K:{AWS_SECRET}@b")
    logging.getLogger("spark_infer").warning("raw message with secret.key=%s", AWS_SECRET)
    err = capsys.readouterr().err
    assert AWS_SECRET not in err and "event=run_start" in err and "s3a://***@b/p" in err
    assert AWS_SECRET not in s.to_json() and AWS_SECRET not in json.dumps(s.record())
    assert redact_value({"a": [f"x?sig={AWS_SECRET}"]}) == {"a": ["x?sig=***"]}
