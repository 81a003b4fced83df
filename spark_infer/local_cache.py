"""Where spark-infer keeps files between runs on one machine.

- `cache_dir()`: resolved jar lists and their Ivy logs, model downloads, file hashes.
  `$SPARK_INFER_CACHE` if set (used as given: an unusable override is an error, not a silent
  fallback), else the platform's user cache folder from platformdirs (`$XDG_CACHE_HOME/spark-infer`,
  else `~/.cache/spark-infer` on Linux; `~/Library/Caches/spark-infer` on macOS).
- `data_dir()`: what Spark writes when spark-infer starts it and the user chose no place for it (the
  default `spark.sql.warehouse.dir`, Derby's home): the platform's user data folder
  (`$XDG_DATA_HOME/spark-infer`, else `~/.local/share/spark-infer` on Linux).

When the home folder is missing or not writable (executors on some clusters run with a read-only or
absent HOME) both fall back to a per-user folder under the temp dir, `<tmp>/spark-infer-<uid>/`
(mode 0700, used only if this user owns it), so a task never fails for want of a cache.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable

import platformdirs
from filelock import FileLock

log = logging.getLogger("spark_infer")

APP = "spark-infer"
CACHE_ENV = "SPARK_INFER_CACHE"


def cache_dir(*parts: str) -> str:
    """The cache folder (created), or a subfolder of it."""
    override = os.environ.get(CACHE_ENV)
    base = override or _usable_base("cache", os.environ.get("XDG_CACHE_HOME"), os.environ.get("HOME"))
    return _made(os.path.join(base, *parts))


def data_dir(*parts: str) -> str:
    """The data folder (created), or a subfolder of it."""
    return _made(os.path.join(_usable_base("data", os.environ.get("XDG_DATA_HOME"), os.environ.get("HOME")),
                              *parts))


def _made(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


@functools.lru_cache(maxsize=16)
def _usable_base(kind: str, xdg: str | None, home: str | None) -> str:  # noqa: ARG001 - the cache key
    """The platform folder of `kind`, or the temp-dir fallback; probed once per process and
    environment (the arguments are what the platform folder depends on)."""
    preferred = (platformdirs.user_cache_dir if kind == "cache" else platformdirs.user_data_dir)(
        APP, appauthor=False)
    if _writable(preferred):
        return preferred
    fallback = os.path.join(_user_temp_root(), kind)
    os.makedirs(fallback, exist_ok=True)
    log.warning("event=local_folder_fallback kind=%s wanted=%s using=%s reason=not_writable",
                kind, preferred, fallback)
    return fallback


def _writable(path: str) -> bool:
    """Whether files can really be created in `path` (created if missing). A probe file, not
    os.access: access() says yes to root on a read-only bind mount's permission bits and knows
    nothing of ACLs."""
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


def _user_temp_root() -> str:
    """`<tmp>/spark-infer-<uid>`: created 0700, and used only when it is a real folder this user owns
    (in a shared /tmp another user could have made it first, or left a symlink); otherwise a fresh
    private folder for this process."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    root = os.path.join(tempfile.gettempdir(), f"{APP}-{uid if uid is not None else getpass.getuser()}")
    try:
        os.mkdir(root, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix=f"{APP}-")
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or (uid is not None and st.st_uid != uid) or not _writable(root):
        return tempfile.mkdtemp(prefix=f"{APP}-")
    return root


#: the file a finished cache folder holds (written last, before the rename into place)
COMPLETE_MARKER = ".spark-infer-complete"


def build_once(root: str, key: str, build: Callable[[str], None], *, marker: str, log_name: str, note: str,
               ready: Callable[[str], bool] | None = None) -> str:
    """`root/key`, made by `build(into_folder)` once per machine whatever number of processes ask at once.

    Under a file lock per key: built into `<key>.partial-<pid>`, a completion marker (`marker`'s
    text) written last, renamed into place; a killed build leaves no folder that looks finished.
    Each build appends `host pid time note` to `<key>.<log_name>` (how tests count builds per node).
    `ready(final)` says whether a finished folder may be used (default: its marker exists)."""
    final = os.path.join(root, key)
    is_ready = ready or (lambda folder: os.path.exists(os.path.join(folder, COMPLETE_MARKER)))
    if is_ready(final):
        return final
    with FileLock(os.path.join(root, key + ".lock")):
        if is_ready(final):
            return final  # another worker finished it while we waited
        partial = f"{final}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # an incomplete folder from a killed build
        os.makedirs(partial)
        try:
            build(partial)
            with open(os.path.join(partial, COMPLETE_MARKER), "w") as f:
                f.write(marker)
            os.rename(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with open(os.path.join(root, f"{key}.{log_name}"), "a") as f:
            f.write(f"{socket.gethostname()} {os.getpid()} {time.time():.3f} {note}\n")
    return final


def build_log(root: str, key: str, log_name: str) -> list[str]:
    """The lines `build_once` appended for `key` (one per build on this machine)."""
    path = os.path.join(root, f"{key}.{log_name}")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f.read().splitlines() if line]
