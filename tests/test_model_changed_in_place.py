"""A model folder in object storage overwritten in place after the driver fingerprinted it (same file
names, same sizes, new bytes) is never loaded under the old fingerprint: the worker compares each
file's version tag (S3 ETag, a memory file's creation time) with the driver's and fails, naming the
file; a node's cached copy is keyed by those tags and reused only when it was checked."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from tiny_models import make_tiny_bert

from spark_infer.errors import ModelMismatchError
from spark_infer.models import resolve_model
from spark_infer.models.cache import downloads, snapshot_key
from spark_infer.runtime import RuntimeOptions, score_stream
from spark_infer.runtime.spec import make_spec

WEIGHTS = "model.safetensors"
TEXTS = ["good great product", "bad terrible service"]


def embed(model_dir: str) -> np.ndarray:
    out, _ = next(score_stream(make_spec("embed", model_dir), RuntimeOptions(), [TEXTS]))
    return np.array(out.to_pylist())


def same_size_other_bytes(data: bytes) -> bytes:
    """The weight file with its last bytes changed (same length: the size check cannot see it)."""
    return data[:-8] + bytes(b ^ 0xFF for b in data[-8:])


@pytest.fixture
def node_cache(tmp_path, monkeypatch):
    """Point the node-local cache at a fresh folder (as on a worker that never saw the model)."""
    def fresh(name: str) -> str:
        d = str(tmp_path / name)
        monkeypatch.setenv("SPARK_INFER_CACHE", d)
        return d
    fresh("driver-cache")
    return fresh


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_bert(str(tmp_path_factory.mktemp("src") / "tiny"))


@pytest.fixture(scope="module")
def s3(model_dir):
    """An S3-compatible server on 127.0.0.1 (moto) with a bucket; skipped where it does not install."""
    pytest.importorskip("s3fs", reason="s3fs (spark-infer[s3]) is not installed")
    server_mod = pytest.importorskip("moto.server", reason="moto[s3] + flask (spark-infer[test]) are not installed")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    creds = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
             "AWS_EC2_METADATA_DISABLED": "true"}
    env = pytest.MonkeyPatch()
    for k, v in creds.items():
        env.setenv(k, v)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=creds["AWS_ENDPOINT_URL"], skip_instance_cache=True)
    fs.mkdir("changed-in-place")
    try:
        yield fs
    finally:
        env.undo()
        server.stop()


def upload_s3(fs, model_dir: str) -> str:
    key = f"changed-in-place/{uuid.uuid4().hex}"
    fs.put(model_dir + "/", key + "/", recursive=True)
    return key


def test_an_s3_weight_file_overwritten_in_place_with_the_same_size_fails_the_worker_naming_it(
        s3, model_dir, node_cache):
    key = upload_s3(s3, model_dir)
    snap = resolve_model(f"s3://{key}")  # the driver: fingerprinted with the ETags it listed
    old_etag = s3.info(f"{key}/{WEIGHTS}")["ETag"].strip('"')
    data = s3.cat_file(f"{key}/{WEIGHTS}")
    s3.pipe_file(f"{key}/{WEIGHTS}", same_size_other_bytes(data))  # changed in place, same size
    new_etag = s3.info(f"{key}/{WEIGHTS}", refresh=True)["ETag"].strip('"')
    assert new_etag != old_etag and s3.size(f"{key}/{WEIGHTS}") == len(data)

    node_cache("worker-cache")  # a worker on another node: nothing cached
    with pytest.raises(ModelMismatchError) as err:
        snap.local_dir()
    msg = str(err.value)
    assert WEIGHTS in msg and old_etag in msg and new_etag in msg, msg
    assert "config.json" not in msg and "tokenizer.json" not in msg, msg  # only the changed file is named
    assert downloads(snap) == []  # nothing was put in the cache under the old fingerprint
    assert not os.path.exists(os.path.join(os.environ["SPARK_INFER_CACHE"], "models", snapshot_key(snap)))

    # re-resolving sees the new ETag: a new fingerprint, which loads the new bytes
    new = resolve_model(f"s3://{key}")
    assert new.identity != snap.identity
    with open(os.path.join(new.local_dir(), WEIGHTS), "rb") as f:
        assert f.read() == same_size_other_bytes(data)


def test_an_unchanged_s3_model_still_loads_once_per_node(s3, model_dir, node_cache):
    key = upload_s3(s3, model_dir)
    snap = resolve_model(f"s3://{key}")
    node_cache("worker-cache")
    a, b = snap.local_dir(), snap.local_dir()
    assert a == b and len(downloads(snap)) == 1
    np.testing.assert_allclose(embed(a), embed(model_dir), atol=1e-6)


def test_a_memory_file_overwritten_in_place_fails_the_worker(model_dir, node_cache):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/changed-in-place/{uuid.uuid4().hex}"
    fs.put(model_dir + "/", root + "/", recursive=True)
    snap = resolve_model(f"memory://{root}")
    data = fs.cat_file(f"{root}/{WEIGHTS}")
    fs.pipe_file(f"{root}/{WEIGHTS}", same_size_other_bytes(data))  # a new file object: a new tag
    node_cache("worker-cache")
    with pytest.raises(ModelMismatchError, match=WEIGHTS):
        snap.local_dir()


def test_a_copy_cached_without_the_version_check_is_downloaded_again(s3, model_dir, node_cache):
    """A node's copy cached by an older download (which checked sizes only, so it may hold bytes of a
    later object version) is not reused: it is fetched again under the check."""
    key = upload_s3(s3, model_dir)
    snap = resolve_model(f"s3://{key}")
    node_cache("worker-cache")
    folder = snap.local_dir()
    marker = os.path.join(folder, ".spark-infer-complete")
    with open(marker, "w") as f:  # what the completion marker said before the check existed
        f.write(snap.identity)
    with open(os.path.join(folder, WEIGHTS), "r+b") as f:  # that copy holds other bytes, same size
        data = f.read()
        f.seek(0)
        f.write(same_size_other_bytes(data))
    again = snap.local_dir()
    assert again == folder and len(downloads(snap)) == 2
    with open(os.path.join(again, WEIGHTS), "rb") as f:
        assert f.read() == data  # the object's bytes, checked against its ETag
