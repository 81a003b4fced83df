"""The node-local model cache: a snapshot downloaded once per machine, whatever number of Python
workers ask for it at once.

Folders are keyed by the snapshot's immutable identity under `cache_dir("models")` (see
`spark_infer.local_cache`: `$SPARK_INFER_CACHE/models/`, default `~/.cache/spark-infer/models` on
Linux, a per-user temp folder when HOME is not writable). A download goes to a temporary folder, is
checked against the driver's manifest (every file, every size), and is renamed into place only when
complete, under a file lock (filelock's `FileLock`, one lock file per snapshot), so concurrent workers
on one node download once and never see half a model. A source whose download checks more (object
storage: each file's version tag) says so in a `stamp` kept in the completion marker; a copy without
that stamp is downloaded again rather than reused. Each download is recorded in `<key>.downloads`
(one line: host, pid, time), which is how the tests count downloads per node.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from spark_infer.local_cache import COMPLETE_MARKER as _COMPLETE
from spark_infer.local_cache import build_log, build_once, cache_dir

if TYPE_CHECKING:
    from spark_infer.models.base import ModelSnapshot

def snapshot_key(snapshot: ModelSnapshot) -> str:
    """The snapshot's folder name in the cache: a hash of its source and immutable identity."""
    return hashlib.sha256(f"{snapshot.source}\0{snapshot.identity}".encode()).hexdigest()[:32]


def cached_snapshot(snapshot: ModelSnapshot, download: Callable[[str], None], stamp: str = "") -> str:
    """The local folder of `snapshot`, calling `download(into_folder)` once per machine if needed.

    `stamp` says how `download` checks what it fetched (e.g. the source's version tags): it is written
    in the completion marker, and a copy whose marker does not say it (a copy made by an older, less
    careful download) is downloaded again rather than reused."""
    root = cache_dir("models")
    key = snapshot_key(snapshot)

    def build(partial: str) -> None:
        download(partial)
        _check_complete(snapshot, partial)

    return build_once(root, key, build, marker=snapshot.identity + (f"\n{stamp}" if stamp else ""),
                      ready=lambda final: _complete(final, stamp), log_name="downloads", note=snapshot.reference)


def _complete(folder: str, stamp: str) -> bool:
    """Whether `folder` holds a finished download (made with the check `stamp` names, when one is given)."""
    marker = os.path.join(folder, _COMPLETE)
    if not os.path.exists(marker):
        return False
    if not stamp:
        return True
    try:
        with open(marker) as f:
            return stamp in f.read().splitlines()[1:]
    except OSError:
        return False


def _check_complete(snapshot: ModelSnapshot, folder: str) -> None:
    """Every file of the manifest is there with its size (a cut-off download fails here)."""
    from spark_infer.errors import ModelMismatchError

    for rel, size in snapshot.manifest:
        path = os.path.join(folder, rel)
        if not os.path.isfile(path) or os.path.getsize(path) != size:
            got = os.path.getsize(path) if os.path.isfile(path) else "no file"
            raise ModelMismatchError(
                f"model {snapshot.reference!r}: the download is incomplete or changed at the source "
                f"({rel}: {got}, expected {size} bytes)"
            )


def downloads(snapshot: ModelSnapshot) -> list[str]:
    """The download records of `snapshot` in this machine's cache (one line per download)."""
    return build_log(cache_dir("models"), snapshot_key(snapshot), "downloads")
