"""A model folder on a filesystem every executor sees at the same path (local disk of a single
machine, NFS, a FUSE mount); the path is made absolute on the driver."""

from __future__ import annotations

import os

from spark_infer.errors import ConfigError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.fingerprint import hash_model_dir, manifest

#: files that make a folder a model: a transformers config, a custom predictor, or a
#: sentence-transformers module list (older folders keep the transformer's config in 0_Transformer/)
MODEL_MARKERS = ("config.json", "predictor.json", "modules.json")


def looks_like_path(reference: str) -> bool:
    """A reference that can only be a filesystem path (not a hub id like `org/name`)."""
    return reference.startswith((".", "/", "~")) or reference.count("/") > 1 or "\\" in reference


@register_source
class LocalFolderSource(ModelSource):
    name = "local"
    priority = 50

    @classmethod
    def claims(cls, reference: str) -> bool:
        return os.path.isdir(os.path.expanduser(reference)) or looks_like_path(reference)

    @classmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        path = os.path.abspath(os.path.expanduser(reference))
        if not os.path.isdir(path):
            raise ConfigError(f"model={reference!r}: no such model folder")
        if not any(os.path.exists(os.path.join(path, m)) for m in MODEL_MARKERS):
            raise ConfigError(f"model={reference!r}: folder has no config.json, predictor.json or modules.json "
                              "(not a model folder)")
        if revision is not None:
            raise ConfigError(f"model_revision={revision!r}: a local folder has no revisions")
        # workers resolve the reference from their own working directory: it is absolute from here on
        files, config = manifest(path)
        return ModelSnapshot(source=cls.name, reference=path, locator=path, identity=hash_model_dir(path),
                             manifest=files, config_sha256=config)

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        return snapshot.locator
