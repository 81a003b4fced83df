"""A Hugging Face model id (`org/name`, `revision` optional), pinned to one commit.

The driver resolves the id (and a branch or tag given as `model_revision`) to the commit hash of the
snapshot it finds (the local hub cache, or the hub where the network and `HF_HUB_OFFLINE` allow);
that commit is the snapshot's identity and what the lineage records. Workers load exactly that
commit from their own hub cache (or download it) and fail when they cannot: never another revision.
"""

from __future__ import annotations

import hashlib
import os
import re

from spark_infer.errors import ConfigError, ModelMismatchError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.fingerprint import manifest

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def snapshot_dir(repo_id: str, revision: str | None = None) -> str:
    """The local snapshot folder of `repo_id` (from the cache; from the hub where allowed)."""
    from huggingface_hub import snapshot_download

    # the cache folder as the environment says now (huggingface_hub reads it once, at import)
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True, cache_dir=cache)
    except Exception:  # noqa: BLE001 - not cached: try the hub where allowed
        if _offline():
            raise
        return snapshot_download(repo_id, revision=revision, cache_dir=cache)


@register_source
class HubSource(ModelSource):
    name = "hub"
    priority = 90

    @classmethod
    def claims(cls, reference: str) -> bool:
        return "://" not in reference and ":" not in reference

    @classmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        try:
            path = snapshot_dir(reference, revision)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"model={reference!r}: not a local folder and not loadable as a Hugging Face model id "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        commit = os.path.basename(os.path.normpath(path))
        if not _COMMIT.match(commit):
            raise ConfigError(f"model={reference!r}: the hub snapshot at {path} names no commit")
        files, config = manifest(path)
        identity = hashlib.sha256(f"hf:{reference}@{commit}".encode()).hexdigest()
        return ModelSnapshot(source=cls.name, reference=f"{reference}@{commit}", locator=reference, identity=identity,
                             revision=commit, manifest=files, config_sha256=config)

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        try:
            path = snapshot_dir(snapshot.locator, snapshot.revision)
        except Exception as exc:  # noqa: BLE001
            raise ModelMismatchError(
                f"model {snapshot.locator!r} at commit {snapshot.revision} is not in this worker's hub cache and "
                f"cannot be downloaded here ({type(exc).__name__}); the job fingerprinted that commit only"
            ) from None
        if os.path.basename(os.path.normpath(path)) != snapshot.revision:
            raise ModelMismatchError(f"model {snapshot.locator!r}: this worker found {path}, not commit "
                                     f"{snapshot.revision} the job fingerprinted")
        return path
