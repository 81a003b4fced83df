"""Where spark-infer keeps files between runs on one machine (resolved jar lists, model downloads,
file hashes): `$SPARK_INFER_CACHE`, else `$XDG_CACHE_HOME/spark-infer`, else `~/.cache/spark-infer`."""

from __future__ import annotations

import os


def cache_dir(*parts: str) -> str:
    """The cache folder (created), or a subfolder of it."""
    base = os.environ.get("SPARK_INFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "spark-infer"
    )
    path = os.path.join(base, *parts)
    os.makedirs(path, exist_ok=True)
    return path
