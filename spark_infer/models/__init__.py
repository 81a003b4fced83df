"""Model references resolved by kind: `packaged:`, local folders, Hugging Face ids (see `base.py`).

    from spark_infer.models import resolve_model
    snapshot = resolve_model("packaged:all-MiniLM-L6-v2")    # driver: exact, immutable
    folder = snapshot.local_dir()                              # worker: local files of that snapshot
"""

from __future__ import annotations

from spark_infer.errors import ConfigError
from spark_infer.models.base import ModelSnapshot, ModelSource, discover, register_source, registered_sources
from spark_infer.models.packaged import DEFAULT_MODEL

__all__ = ["DEFAULT_MODEL", "ModelSnapshot", "ModelSource", "discover", "register_source", "resolve_model"]

def resolve_model(reference: str | None, revision: str | None = None) -> ModelSnapshot:
    """The snapshot `reference` names (None = the packaged default); ConfigError naming what was tried."""
    reference = DEFAULT_MODEL if reference is None else reference
    if not reference.strip():
        raise ConfigError("config field 'model'='': empty model reference")
    for source in registered_sources():
        if source.claims(reference):
            return source.resolve(reference, revision)
    kinds = ", ".join(s.name for s in registered_sources())
    raise ConfigError(f"model={reference!r}: not a reference any model source understands (sources: {kinds})")
