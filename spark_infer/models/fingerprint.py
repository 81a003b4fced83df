"""Content hashes of model folders (sha256 over relative names and file contents).

Used for sources without an immutable identity of their own (a local folder, the packaged model).
File hashes are kept by (path, size, modification time): in memory for this process and on disk
(`$SPARK_INFER_CACHE/hashes.sqlite`), so the second run over an unchanged multi-GB folder
fingerprints in milliseconds instead of re-reading every byte. A file rewritten in place gets a new
modification time, hence a new hash.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading

from spark_infer.local_cache import cache_dir

#: files that never change outputs
IGNORED_FILES = frozenset({"README.md", ".gitattributes", "LICENSE", "LICENSE.txt"})

_file_hash_memo: dict[tuple[str, int, int], str] = {}


def is_model_file(rel: str) -> bool:
    """Whether a file (path relative to the model folder) counts: not a readme, license or dotfile."""
    parts = rel.replace("\\", "/").split("/")
    return parts[-1] not in IGNORED_FILES and not any(p.startswith(".") for p in parts)


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


_db_lock = threading.Lock()


def _db() -> sqlite3.Connection:
    conn = sqlite3.connect(os.path.join(cache_dir(), "hashes.sqlite"), timeout=30)
    conn.execute("CREATE TABLE IF NOT EXISTS file_sha256 "
                 "(path TEXT, size INTEGER, mtime_ns INTEGER, sha256 TEXT, PRIMARY KEY (path, size, mtime_ns))")
    return conn


def _stored(key: tuple[str, int, int]) -> str | None:
    try:
        with _db_lock, _db() as conn:
            row = conn.execute("SELECT sha256 FROM file_sha256 WHERE path = ? AND size = ? AND mtime_ns = ?",
                               key).fetchone()
        return row[0] if row else None
    except sqlite3.Error:  # a read-only or broken cache: hash again
        return None


def _store(key: tuple[str, int, int], digest: str) -> None:
    try:
        with _db_lock, _db() as conn:
            conn.execute("DELETE FROM file_sha256 WHERE path = ?", key[:1])
            conn.execute("INSERT OR REPLACE INTO file_sha256 VALUES (?, ?, ?, ?)", (*key, digest))
    except sqlite3.Error:
        pass


def file_sha256(path: str) -> str:
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    digest = _file_hash_memo.get(key) or _stored(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        _store(key, digest)
    _file_hash_memo[key] = digest
    return digest


def hash_model_dir(model_dir: str) -> str:
    """sha256 over the model's files (relative names and contents)."""
    h = hashlib.sha256()
    for rel in model_files(model_dir):
        h.update(rel.replace("/", os.sep).encode() + b"\0" + file_sha256(os.path.join(model_dir, rel)).encode() + b"\n")
    return h.hexdigest()


def manifest(model_dir: str) -> tuple[tuple[tuple[str, int], ...], str]:
    """(relative path, size) of every model file, and the sha256 of config.json (or predictor.json, modules.json):
    what a worker checks, cheaply, that it loads the same model the driver fingerprinted."""
    files = tuple(sorted((rel, os.path.getsize(os.path.join(model_dir, rel))) for rel in model_files(model_dir)))
    config = ""
    for name in ("config.json", "predictor.json", "modules.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            config = file_sha256(path)
            break
    return files, config
