"""The model-source seam: where weights live, resolved once on the driver, found again on each worker.

A *source* turns a reference (`packaged:...`, a folder, a hub id, ...) into a `ModelSnapshot` on the
driver: an immutable, picklable description of one exact model (its identity feeds the
fingerprint), and gives a worker a local folder holding exactly that snapshot. Adding a source = one
module in `spark_infer/models/` with a class decorated `@register_source`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

_SOURCES: list[type[ModelSource]] = []
_discovered = False


def discover() -> None:
    """Import every source module of this package once (each registers itself)."""
    global _discovered
    if not _discovered:
        for mod in pkgutil.iter_modules([os.path.dirname(__file__)]):
            if mod.name not in ("base", "fingerprint", "cache") and not mod.name.startswith("_"):
                importlib.import_module(f"{__package__}.{mod.name}")
        _discovered = True


def register_source(cls: type[ModelSource]) -> type[ModelSource]:
    """Class decorator: make a model source available (checked in `priority` order)."""
    _SOURCES.append(cls)
    _SOURCES.sort(key=lambda c: c.priority)
    return cls


def registered_sources() -> list[type[ModelSource]]:
    discover()
    return list(_SOURCES)


@dataclass(frozen=True)
class ModelSnapshot:
    """One exact model: what the driver fingerprinted and every worker must load.

    `reference` is what the user wrote (shown in plans, stored in the lineage column); `locator` is
    what a worker needs to find the files (a path, a URI, a repo id); `identity` names the content
    immutably (a content hash, a registry version, a hub commit); `revision` is the resolved version
    or commit when the source has one.
    """

    source: str
    reference: str
    locator: str
    identity: str
    revision: str | None = None
    #: (relative path, size) of each file, and the config's sha256, as the driver saw them
    manifest: tuple[tuple[str, int], ...] = ()
    config_sha256: str = ""

    def local_dir(self) -> str:
        """A local folder with this snapshot's files (a worker may download it first), checked
        against the driver's manifest: ModelMismatchError when this worker's copy differs."""
        path = source_named(self.source).local_dir(self)
        if self.manifest:
            check_manifest(self, path)
        return path

    def read_file(self, rel: str) -> bytes | None:
        """One small file of the snapshot (`modules.json`, a module's config), read where the driver
        can read it without fetching the whole model; None when the snapshot has no such file.

        What plan-time checks read, so a model the workers cannot run is refused before anything is
        scored."""
        if self.manifest and rel not in {p for p, _ in self.manifest}:
            return None
        return source_named(self.source).read_file(self, rel)


def check_manifest(snapshot: ModelSnapshot, path: str) -> None:
    """Raise ModelMismatchError when the files at `path` are not the ones the driver fingerprinted."""
    from spark_infer.errors import ModelMismatchError
    from spark_infer.models.fingerprint import manifest

    files, config = manifest(path)
    if sorted(files) == sorted(snapshot.manifest) and config == snapshot.config_sha256:
        return
    want, have = dict(snapshot.manifest), dict(files)
    diffs = [f"{n}: missing here" for n in sorted(set(want) - set(have))]
    diffs += [f"{n}: not in the driver's copy" for n in sorted(set(have) - set(want))]
    diffs += [f"{n}: {have[n]} bytes here, {want[n]} on the driver" for n in sorted(set(want) & set(have))
              if want[n] != have[n]]
    if config != snapshot.config_sha256:
        diffs.append("config.json differs")
    raise ModelMismatchError(
        f"model {snapshot.reference!r} at {path} on this worker is not the snapshot the driver fingerprinted "
        f"({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}): failing the task rather than scoring "
        "with another model"
    )


class ModelSource(ABC):
    """Resolves references of one kind and finds their files on a worker."""

    name: ClassVar[str]
    #: lower is asked first whether it `claims` a reference
    priority: ClassVar[int] = 100

    @classmethod
    @abstractmethod
    def claims(cls, reference: str) -> bool:
        """True when `reference` is of this source's kind (cheap: no I/O beyond a stat)."""

    @classmethod
    @abstractmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        """The immutable snapshot `reference` names now (driver side); ConfigError when there is none."""

    @classmethod
    @abstractmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        """A local folder holding `snapshot`'s files (worker side)."""

    @classmethod
    def read_file(cls, snapshot: ModelSnapshot, rel: str) -> bytes | None:
        """One file's bytes (driver side). This default reads it from `local_dir`: right for sources
        whose snapshot is already on this machine; sources that download override it."""
        path = os.path.join(cls.local_dir(snapshot), rel)
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()


def source_named(name: str) -> type[ModelSource]:
    for cls in registered_sources():
        if cls.name == name:
            return cls
    raise ValueError(f"unknown model source {name!r}")
