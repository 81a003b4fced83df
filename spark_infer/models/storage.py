"""A model folder in object storage or on a mounted volume, through fsspec:
`s3://bucket/models/minilm`, `gs://...`, `abfss://container@account.dfs.core.windows.net/...`,
`file:///mnt/models/x`, `/Volumes/catalog/schema/volume/models/x` (Databricks Unity Catalog volumes).

The driver lists the folder once: the snapshot's identity is every file's name, size and version
tag (the object's ETag, a file's modification time), so a changed object is a changed model, and
nothing is hashed. Each executor downloads the folder once per node into the local cache
(`models/cache.py`) and loads from local disk: no shared filesystem is needed.

The snapshot carries every file's version tag as the driver listed it (in its locator). The executor
lists the folder again before and after downloading and compares each file's tag with the driver's:
an object overwritten in place since the driver resolved it (same name, same size, new ETag) fails the
task with ModelMismatchError naming the file and both tags, instead of being loaded under the old
fingerprint. A node's cached copy is reused only when it was downloaded under that check.

Credentials come from the environment the way fsspec's filesystem packages read them (AWS_* and
instance profiles for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS, AZURE_* for ADLS), never from the
job's config: set them on the driver and on the executors (`spark.executorEnv.*`, instance roles).

A Unity Catalog volume is read where it is mounted (`/Volumes/...` on a Databricks driver). A process
that does not see the mount (an executor of a standard-access cluster, a Databricks Connect client)
reads the same folder through the workspace's Files API (`/api/2.0/fs/files/Volumes/...`, the
Databricks SDK's default credentials: DATABRICKS_HOST / DATABRICKS_TOKEN, or the runtime's own), so
Unity Catalog authorises the read; there is no storage location to be given access to.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from typing import Any

from spark_infer.errors import ConfigError, ModelMismatchError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.cache import cached_snapshot
from spark_infer.models.fingerprint import is_model_file
from spark_infer.models.local import MODEL_MARKERS

#: prefixes of mounted paths that are copied to local disk like object storage
_MOUNTS = ("/Volumes/", "/dbfs/")
#: fsspec packages per scheme, for the error that names what to install
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "abfss": "adlfs",
             "az": "adlfs"}


class VolumeFiles:
    """A Unity Catalog volume folder through the workspace's Files API: the three calls of fsspec's
    interface this module uses (`find`, `cat_file`, `get_file`)."""

    def __init__(self) -> None:
        try:
            from databricks.sdk import WorkspaceClient
        except ImportError:
            raise ConfigError("a /Volumes/... path that is not mounted here is read through the Databricks "
                              "Files API: pip install databricks-sdk (it comes with spark-infer[mlflow])") from None
        try:
            self.files = WorkspaceClient().files
        except Exception as exc:  # noqa: BLE001 - no host or credentials configured
            raise ConfigError(f"/Volumes/... is not mounted here and the Databricks Files API cannot be used: "
                              f"{exc} (set DATABRICKS_HOST and DATABRICKS_TOKEN, on the executors too)") from None

    def find(self, root: str, detail: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        todo = [root.rstrip("/")]
        while todo:
            for entry in self.files.list_directory_contents(todo.pop()):
                if entry.is_directory:
                    todo.append(entry.path.rstrip("/"))
                else:
                    out[entry.path] = {"type": "file", "size": entry.file_size,
                                       "last_modified": entry.last_modified}
        return out

    def cat_file(self, path: str) -> bytes:
        return self.files.download(path).contents.read()

    def get_file(self, path: str, target: str) -> None:
        contents = self.files.download(path).contents
        with open(target, "wb") as f:
            while chunk := contents.read(8 << 20):
                f.write(chunk)


def _filesystem(locator: str) -> tuple[Any, str]:
    import fsspec

    if locator.startswith("/Volumes/") and not os.path.exists(locator):
        return VolumeFiles(), locator.rstrip("/")
    url = locator
    if url.startswith("s3a://"):  # Hadoop's name for S3
        url = "s3://" + url[len("s3a://"):]
    return fsspec.core.url_to_fs(url)


def _lister(locator: str) -> str:
    """How `_filesystem` reads `locator` in this process (its version tags are comparable within one kind)."""
    return "files-api" if locator.startswith("/Volumes/") and not os.path.exists(locator) else "fsspec"


def _version_tag(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "version_id", "VersionId"):
        if info.get(key):
            return str(info[key]).strip('"')
    for key in ("mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return ""


@register_source
class StorageSource(ModelSource):
    name = "storage"
    priority = 30

    @classmethod
    def claims(cls, reference: str) -> bool:
        if reference.startswith(_MOUNTS):
            return True
        scheme = reference.split("://", 1)[0] if "://" in reference else ""
        return bool(scheme) and scheme not in ("models", "runs", "hf", "http", "https")

    @classmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        if revision is not None:
            raise ConfigError(f"model_revision={revision!r}: a storage folder has no revisions (its files are "
                              "versioned by their ETags)")
        scheme = reference.split("://", 1)[0] if "://" in reference else "file"
        try:
            fs, root = _filesystem(reference)
        except (ImportError, ValueError) as exc:
            package = _PACKAGES.get(scheme)
            hint = f" (pip install {package}, or spark-infer[{scheme.rstrip('a')}])" if package else ""
            raise ConfigError(f"model={reference!r}: cannot open {scheme}:// storage: {exc}{hint}") from None
        try:
            listing = fs.find(root, detail=True)
        except Exception as exc:  # noqa: BLE001 - unreachable, no access, no such bucket
            raise ConfigError(f"model={reference!r}: cannot list the folder ({type(exc).__name__}: {exc})") from None
        files = {posixpath.relpath(p, root.rstrip("/")): info for p, info in listing.items()
                 if info.get("type", "file") == "file"}
        files = {rel: info for rel, info in files.items() if not rel.startswith("..") and is_model_file(rel)}
        if not any(m in files for m in MODEL_MARKERS):
            raise ConfigError(f"model={reference!r}: no config.json, predictor.json or modules.json in that folder "
                              f"({len(files)} files listed): not a loadable model")
        manifest = tuple(sorted((rel, int(info.get("size") or 0)) for rel, info in files.items()))
        tags = sorted(f"{rel}|{info.get('size')}|{_version_tag(info)}" for rel, info in files.items())
        config = next(m for m in MODEL_MARKERS if m in files)
        config_sha = hashlib.sha256(fs.cat_file(posixpath.join(root, config))).hexdigest()
        identity = hashlib.sha256("\n".join([reference.rstrip("/"), *tags]).encode()).hexdigest()
        versions = {rel: _version_tag(info) for rel, info in sorted(files.items())}
        locator = json.dumps({"url": reference, "versions": versions, "lister": _lister(reference)})
        return ModelSnapshot(source=cls.name, reference=reference, locator=locator,
                             identity=identity, manifest=manifest, config_sha256=config_sha)

    @classmethod
    def read_file(cls, snapshot: ModelSnapshot, rel: str) -> bytes | None:
        # one object read, not the folder's download
        fs, root = _filesystem(json.loads(snapshot.locator)["url"])
        try:
            return fs.cat_file(posixpath.join(root.rstrip("/"), rel))
        except FileNotFoundError:
            return None

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        locator = json.loads(snapshot.locator)
        url, versions = locator["url"], locator.get("versions")
        if _lister(url) != locator.get("lister"):
            # no versions (a snapshot from an older driver), or listed another way than here (a volume
            # mounted on the driver, read through the Files API on this worker: modification times in
            # other units): names and sizes are checked, as before
            versions = None

        def download(into: str) -> None:
            fs, root = _filesystem(url)
            if versions is not None:
                _check_versions(snapshot, versions, fs, root)  # changed already: fail before downloading
            for rel, _ in snapshot.manifest:
                target = os.path.join(into, *rel.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                fs.get_file(posixpath.join(root, rel), target)
            if versions is not None:
                _check_versions(snapshot, versions, fs, root)  # changed while downloading

        return cached_snapshot(snapshot, download, stamp=_CHECKED if versions is not None else "")


#: what a cached copy's completion marker says when its files' version tags were checked
_CHECKED = "version tags checked"


def _check_versions(snapshot: ModelSnapshot, versions: dict[str, str], fs: Any, root: str) -> None:
    """Raise ModelMismatchError when a file's version tag (ETag, generation, modification time) at the
    source is not the one the driver fingerprinted: the object was changed in place."""
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()  # a listing cached by this process (s3fs, gcsfs) would hide the change
    try:
        listing = fs.find(root, detail=True)
    except Exception as exc:  # noqa: BLE001 - unreachable, no access
        raise ModelMismatchError(f"model {snapshot.reference!r}: cannot list the folder again on this worker to "
                                 f"check its files' versions ({type(exc).__name__}: {exc})") from None
    found = {posixpath.relpath(p, root.rstrip("/")): _version_tag(info) for p, info in listing.items()}
    diffs = [f"{rel}: {'no such file' if rel not in found else repr(found[rel])} at the source, "
             f"{want!r} when the driver resolved it" for rel, want in sorted(versions.items())
             if found.get(rel) != want]
    if diffs:
        raise ModelMismatchError(
            f"model {snapshot.reference!r} changed in place since the driver fingerprinted it "
            f"({'; '.join(diffs[:5])}{'; ...' if len(diffs) > 5 else ''}): failing the task rather than "
            "loading another model under the old fingerprint (re-run to score with the new one)"
        )
