"""A Hugging Face model id (`org/name`), taken from the local hub cache; downloaded only where the
network and `HF_HUB_OFFLINE` allow."""

from __future__ import annotations

import os

from spark_infer.errors import ConfigError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.fingerprint import hash_model_dir, manifest


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def snapshot_dir(repo_id: str, revision: str | None = None) -> str:
    """The local snapshot folder of `repo_id` (from the cache; from the hub where allowed)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: try the hub where allowed
        if _offline():
            raise
        return snapshot_download(repo_id, revision=revision)


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
        files, config = manifest(path)
        return ModelSnapshot(source=cls.name, reference=reference, locator=reference,
                             identity=hash_model_dir(path), revision=revision, manifest=files, config_sha256=config)

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        return snapshot_dir(snapshot.locator, snapshot.revision)
