"""Content hashes of model folders (sha256 over relative names and file contents).

Hashes of single files are memoised per process by (path, size, mtime), so a worker or a driver
that fingerprints the same folder twice reads it once.
"""

from __future__ import annotations

import hashlib
import os

#: files that never change outputs
IGNORED_FILES = frozenset({"README.md", ".gitattributes", "LICENSE", "LICENSE.txt"})

_file_hash_memo: dict[tuple[str, int, int], str] = {}


def model_files(model_dir: str) -> list[str]:
    """Paths (relative, sorted, '/'-separated) of the files that make up a model folder."""
    out = []
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name in IGNORED_FILES or name.startswith("."):
                continue
            out.append(os.path.relpath(os.path.join(root, name), model_dir).replace(os.sep, "/"))
    return out


def file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    digest = _file_hash_memo.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = _file_hash_memo[key] = h.hexdigest()
    return digest


def hash_model_dir(model_dir: str) -> str:
    """sha256 over the model's files (relative names and contents)."""
    h = hashlib.sha256()
    for rel in model_files(model_dir):
        h.update(rel.replace("/", os.sep).encode() + b"\0" + file_sha256(os.path.join(model_dir, rel)).encode() + b"\n")
    return h.hexdigest()


def manifest(model_dir: str) -> tuple[tuple[tuple[str, int], ...], str]:
    """(relative path, size) of every model file, and the sha256 of config.json (or predictor.json):
    what a worker checks, cheaply, that it loads the same model the driver fingerprinted."""
    files = tuple((rel, os.path.getsize(os.path.join(model_dir, rel))) for rel in model_files(model_dir))
    config = ""
    for name in ("config.json", "predictor.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            config = file_sha256(path)
            break
    return files, config
