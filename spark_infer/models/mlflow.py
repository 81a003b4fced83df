"""Models from an MLflow registry or run: `models:/<name>/<version>`, `models:/<name>@<alias>`,
`runs:/<run_id>/<path>` (Unity Catalog's registry too: `MLFLOW_REGISTRY_URI=databricks-uc`).

Resolved once, on the driver, through MLflow's own client (`pip install 'spark-infer[mlflow]'`;
tracking and registry URIs from `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI` or `mlflow.set_*_uri`).
A tracking URI must be set, except on Databricks (and with a Databricks registry), where it defaults to
`databricks`: MLflow's own default is a new store in the working directory (`sqlite:///mlflow.db`, or
`./mlruns`), which could only hold a registry nobody filled, so a reference without a configured
MLflow is a ConfigError naming what to set, and nothing is written. An alias becomes the
version it points to now, and that version (`models:/minilm/3`) is what the fingerprint and the
lineage column record, so moving an alias is a model change the plan shows. The snapshot is the
version (`models:/<name>/<version>`) plus its file listing (names and sizes); workers download exactly
that version once per node and load from local disk.

Files are only ever read through MLflow's artifact API for the model's URI (`ModelsArtifactRepository`
for `models:/`, `RunsArtifactRepository` for `runs:/`), on the driver and on the workers, never from the
version's raw storage location: with Unity Catalog (`databricks-uc`) that location is cloud storage no
client can read with credentials of its own, and the artifact API is what asks the registry for
short-lived, read-only access to exactly that version (credential vending) or the Files API. Workers
therefore need the registry's credentials (`DATABRICKS_HOST` / `DATABRICKS_TOKEN`, or the Databricks
runtime's own), not the storage's; the registry URI travels with the snapshot.

Inside the logged model, the loadable folder is found from its `MLmodel` file: the transformers
flavor (`model/` with the tokenizer in `components/tokenizer/`, joined into one folder on the
worker), the sentence_transformers flavor (`model.sentence_transformer/`), or any folder holding a
`config.json` / `predictor.json` (a plain folder of files, a custom predictor's folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import threading
from typing import Any

from spark_infer.errors import ConfigError
from spark_infer.models.base import ModelSnapshot, ModelSource, register_source
from spark_infer.models.cache import cached_snapshot
from spark_infer.models.fingerprint import is_model_file
from spark_infer.models.local import MODEL_MARKERS

_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))/?$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)/(?P<path>.+)$")

#: an unreachable registry fails in seconds, not after MLflow's default 7 retries (minutes)
_FAST_FAIL = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("model references models:/ and runs:/ need MLflow: pip install 'spark-infer[mlflow]'") \
            from None
    for k, v in _FAST_FAIL.items():
        os.environ.setdefault(k, v)
    return mlflow


def _tracking_uri(mlflow: Any, reference: str) -> str:
    """The tracking URI to resolve `reference` with: the one the user set, else `databricks` on
    Databricks or next to a Databricks registry; never MLflow's default store in the working directory."""
    try:
        from mlflow.tracking._tracking_service.utils import is_tracking_uri_set
    except ImportError:  # a future MLflow without it: the variable is the documented way to set it
        def is_tracking_uri_set() -> bool:
            return bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if is_tracking_uri_set():
        return str(mlflow.get_tracking_uri())
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or ""
    if "DATABRICKS_RUNTIME_VERSION" in os.environ or registry.startswith("databricks"):
        return "databricks"
    raise ConfigError(
        f"model={reference!r}: no MLflow tracking URI is set, and MLflow's default would create an empty "
        f"store in the working directory ({os.path.join(os.getcwd(), 'mlflow.db')}); set MLFLOW_TRACKING_URI "
        "to your tracking server (http://..., databricks, or sqlite:////abs/path/mlflow.db), and "
        "MLFLOW_REGISTRY_URI when the registry is elsewhere (databricks-uc for Unity Catalog)")


_URIS_LOCK = threading.Lock()


def _repository(uri: str, tracking_uri: str | None, registry_uri: str | None) -> Any:
    """MLflow's artifact repository for a `models:/` or `runs:/` URI: for Unity Catalog the one that
    reads through the registry's vended credentials (or the Files API), never the raw location.

    MLflow resolves a non-Unity-Catalog `models:/` URI with the process's registry URI, whatever is
    passed in: for the moment the repository is made, the snapshot's URIs are the process's (through
    MLflow's own variables, restored after), so a worker that has none set finds the same registry."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    pinned = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": registry_uri}
    with _URIS_LOCK:
        saved = {k: os.environ.get(k) for k in pinned}
        try:
            os.environ.update({k: v for k, v in pinned.items() if v})
            return get_artifact_repository(uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _listing(repo: Any, prefix: str = "") -> list[tuple[str, int]]:
    """(path relative to the repository's root, size) of every artifact (MLflow lists one level at a time)."""
    out: list[tuple[str, int]] = []
    for f in repo.list_artifacts(prefix or None):
        rel = posixpath.join(prefix, posixpath.basename(f.path.rstrip("/")))
        if f.is_dir:
            out += _listing(repo, rel)
        else:
            out.append((rel, int(f.file_size or 0)))
    return out


def _read_bytes(repo: Any, rel: str) -> bytes:
    """One artifact's bytes, downloaded through the repository."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="spark-infer-mlflow-") as tmp:
        with open(repo.download_artifacts(rel, dst_path=tmp), "rb") as f:
            return f.read()


def _layout(repo: Any, files: list[tuple[str, int]]) -> dict[str, str]:
    """Where the loadable model is inside the logged artifacts: {"model": dir, "tokenizer": dir?}."""
    names = {rel for rel, _ in files}
    if "MLmodel" in names:
        import yaml

        text = _read_bytes(repo, "MLmodel").decode("utf-8")
        flavors = (yaml.safe_load(text) or {}).get("flavors") or {}
        tf = flavors.get("transformers")
        if tf and tf.get("model_binary"):
            layout = {"model": tf["model_binary"]}
            if "tokenizer" in (tf.get("components") or []):
                layout["tokenizer"] = "components/tokenizer"
            return layout
        st = flavors.get("sentence_transformers")
        data = (flavors.get("python_function") or {}).get("data")
        if st and data:
            return {"model": data}
    # the shallowest folder holding a model marker
    candidates = sorted((rel.count("/"), posixpath.dirname(rel)) for rel in names
                        if posixpath.basename(rel) in MODEL_MARKERS)
    if candidates:
        return {"model": candidates[0][1]}
    return {}


@register_source
class MlflowSource(ModelSource):
    name = "mlflow"
    priority = 20

    @classmethod
    def claims(cls, reference: str) -> bool:
        return reference.startswith(("models:/", "runs:/"))

    @classmethod
    def resolve(cls, reference: str, revision: str | None = None) -> ModelSnapshot:
        m, r = _MODELS.match(reference), _RUNS.match(reference)
        if not m and not r:
            raise ConfigError(f"model={reference!r}: expected models:/<name>/<version>, models:/<name>@<alias> "
                              "or runs:/<run_id>/<path>")
        mlflow = _mlflow()
        from mlflow.exceptions import MlflowException

        tracking_uri = _tracking_uri(mlflow, reference)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        registry_uri = getattr(client, "_registry_uri", None) or mlflow.get_registry_uri()
        try:
            if m:
                name, version, alias = m["name"], m["version"], m["alias"]
                if revision is not None:
                    if alias:
                        raise ConfigError(f"model={reference!r} names an alias: drop model_revision={revision!r} "
                                          "or name the model without the alias")
                    version = revision
                if alias:
                    version = str(client.get_model_version_by_alias(name, alias).version)
                elif version in ("latest", None):
                    versions = client.search_model_versions(f"name = '{name}'")
                    if not versions:
                        raise ConfigError(f"model={reference!r}: registered model {name!r} has no versions")
                    version = str(max(int(v.version) for v in versions))
                mv = client.get_model_version(name, version)
                resolved = f"models:/{name}/{mv.version}"
                pinned = f"{name}/{mv.version}"
                # part of the identity only (a registry call, no storage read): the files are read
                # through `resolved` with the artifact API
                where = client.get_model_version_download_uri(name, str(mv.version))
            else:
                if revision is not None:
                    raise ConfigError(f"model_revision={revision!r}: a runs:/ reference is already one run's files")
                run = client.get_run(r["run"])
                from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

                where = RunsArtifactRepository.get_underlying_uri(reference)
                resolved, pinned = reference, run.info.run_id
            repo = _repository(resolved, tracking_uri, registry_uri)
            files = _listing(repo)
            if not files:
                raise ConfigError(f"model={reference!r}: no artifacts at {resolved}")
            layout = _layout(repo, files)
            config_bytes = None
            if layout:
                manifest = tuple((rel, size) for rel, size in _assembled(files, layout) if is_model_file(rel))
                config = next((rel for rel, _ in manifest if rel in MODEL_MARKERS), None)
                if config:
                    config_bytes = _read_bytes(repo, posixpath.join(layout["model"], config))
        except MlflowException as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"model={reference!r}: the MLflow registry could not resolve it: {msg} "
                              f"(tracking URI {tracking_uri!r}, registry URI {registry_uri!r})") from None
        if not layout:
            raise ConfigError(f"model={reference!r}: the artifacts of {resolved} hold no loadable model "
                              "(no MLmodel transformers/sentence_transformers flavor, no config.json or "
                              "predictor.json)")
        config_sha = hashlib.sha256(config_bytes).hexdigest() if config_bytes is not None else ""
        identity = hashlib.sha256(json.dumps([resolved, where, sorted(files)]).encode()).hexdigest()
        locator = json.dumps({"uri": resolved, "layout": layout, "tracking_uri": tracking_uri,
                              "registry_uri": registry_uri})
        return ModelSnapshot(source=cls.name, reference=resolved, locator=locator, identity=identity,
                             revision=pinned, manifest=manifest, config_sha256=config_sha)

    @classmethod
    def read_file(cls, snapshot: ModelSnapshot, rel: str) -> bytes | None:
        # one artifact through the repository, not the version's download (the model folder's file,
        # which wins over a tokenizer file of the same name, as in the assembled folder)
        loc = json.loads(snapshot.locator)
        _mlflow()
        repo = _repository(loc["uri"], loc.get("tracking_uri"), loc.get("registry_uri"))
        layout = loc["layout"]
        for key in ("model", "tokenizer"):
            base = layout.get(key)
            if base is None:
                continue
            try:
                return _read_bytes(repo, posixpath.join(base, rel) if base else rel)
            except Exception:  # noqa: BLE001 - not in this part of the layout: try the next
                continue
        return None

    @classmethod
    def local_dir(cls, snapshot: ModelSnapshot) -> str:
        loc = json.loads(snapshot.locator)

        def download(into: str) -> None:
            _mlflow()
            raw = os.path.join(into, ".artifacts")
            os.makedirs(raw)
            layout = loc["layout"]
            # through the artifact API for the version's URI (credential vending on Unity Catalog)
            repo = _repository(loc["uri"], loc.get("tracking_uri"), loc.get("registry_uri"))
            repo.download_artifacts("", dst_path=raw)
            # one folder as every task loads it: the model's files, plus the tokenizer's beside them
            # (only the manifest's: MLflow may add files of its own, e.g. registered_model_meta)
            wanted = {rel for rel, _ in snapshot.manifest}
            for rel, src in _assembled_sources(_artifacts_root(raw, layout), layout):
                if rel.replace(os.sep, "/") not in wanted:
                    continue
                target = os.path.join(into, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(src, target)
            shutil.rmtree(raw, ignore_errors=True)

        return cached_snapshot(snapshot, download)


def _assembled(files: list[tuple[str, int]], layout: dict[str, str]) -> list[tuple[str, int]]:
    """(path in the assembled folder, size): the model folder's files, then the tokenizer's ones."""
    out: dict[str, int] = {}
    for key in ("tokenizer", "model"):  # model files win over tokenizer files of the same name
        base = layout.get(key)
        if base is None:
            continue
        prefix = base.rstrip("/") + "/" if base else ""
        for rel, size in files:
            if rel.startswith(prefix):
                out[rel[len(prefix):]] = size
    return sorted(out.items())


def _artifacts_root(raw: str, layout: dict[str, str]) -> str:
    """Where the logged model's top is inside a download folder (MLflow may add the URI's last name)."""
    for candidate in [raw, *(os.path.join(raw, d) for d in sorted(os.listdir(raw)))]:
        if os.path.isdir(os.path.join(candidate, layout["model"])) and any(
                os.path.exists(os.path.join(candidate, layout["model"], m)) for m in MODEL_MARKERS):
            return candidate
    return raw


def _assembled_sources(raw: str, layout: dict[str, str]) -> list[tuple[str, str]]:
    """(path in the assembled folder, downloaded file) pairs, model files winning over tokenizer files."""
    out: dict[str, str] = {}
    for key in ("tokenizer", "model"):
        base = layout.get(key)
        if base is None:
            continue
        top = os.path.join(raw, base) if base else raw
        for root, _, names in os.walk(top):
            for n in names:
                src = os.path.join(root, n)
                out[os.path.relpath(src, top)] = src
    return sorted(out.items())
