"""A Databricks workspace on 127.0.0.1, as much of it as MLflow's Unity Catalog client and the
Databricks SDK use to read a registered model: the Unity Catalog model registry's REST calls and the
Files API over `/Models/<catalog>/<schema>/<model>/<version>/...` (how Unity Catalog hands out a model
version's files: the caller is authorised by the registry, never by the storage).

The model versions' storage locations are where Unity Catalog keeps the files in the cloud: no
client can read them with credentials of its own. Here they are `file://` folders that do not exist
on this machine (the server reads its own copy), so a client that read the raw storage location
instead of asking the platform finds nothing.

    with uc_workspace(token="t") as ws:
        ws.register("main.ml.tiny", model_dir, aliases=["champion"])   # version 1
        os.environ.update(DATABRICKS_HOST=ws.host, DATABRICKS_TOKEN="t", MLFLOW_REGISTRY_URI="databricks-uc")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

UC = "/api/2.0/mlflow/unity-catalog"
FILES = "/api/2.0/fs/files"
DIRS = "/api/2.0/fs/directories"


class Workspace:
    def __init__(self, root: str, token: str) -> None:
        self.root = root  # the platform's own copy of the files (what its storage holds)
        self.token = token
        self.models: dict[str, dict[str, dict]] = {}  # name -> version -> model version JSON
        self.aliases: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []
        self.host = ""

    def register(self, name: str, model_dir: str, aliases: tuple[str, ...] = ()) -> str:
        """A new version of `name` holding a copy of `model_dir`; returns the version."""
        versions = self.models.setdefault(name, {})
        version = str(len(versions) + 1)
        shutil.copytree(model_dir, self.files_dir(name, version))
        now = int(time.time() * 1000)
        versions[version] = {
            "name": name, "version": version, "status": "READY", "creation_timestamp": now,
            "last_updated_timestamp": now, "source": f"dbfs:/databricks/mlflow-tracking/1/{uuid.uuid4().hex}/model",
            # where the cloud storage keeps it: unreadable from any client (not on this machine)
            "storage_location": f"file:///nonexistent-uc-storage/{uuid.uuid4().hex}/models/{name}/{version}",
        }
        for alias in aliases:
            self.aliases[(name, alias)] = version
        return version

    def files_dir(self, name: str, version: str) -> str:
        return os.path.join(self.root, "Models", *name.split("."), version)

    def model_version(self, name: str, version: str) -> dict | None:
        mv = self.models.get(name, {}).get(version)
        if mv is None:
            return None
        aliases = [{"alias": a, "version": v} for (n, a), v in self.aliases.items() if n == name and v == version]
        return {**mv, "aliases": aliases}


def _handler(ws: Workspace) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "application/json",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: dict) -> None:
            self._send(code, json.dumps(obj).encode())

        def _missing(self, what: str) -> None:
            self._json(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{what} does not exist"})

        def _route(self) -> None:
            url = urlparse(self.path)
            path, q = unquote(url.path), {k: v[0] for k, v in parse_qs(url.query).items()}
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n) or b"{}") if n else {}
            q.update({k: str(v) for k, v in body.items()} if isinstance(body, dict) else {})
            ws.requests.append((self.command, path))
            if path.startswith("/.well-known/"):
                return self._missing(path)
            if self.headers.get("Authorization") != f"Bearer {ws.token}":
                return self._json(401, {"error_code": "UNAUTHENTICATED", "message": "bad token"})
            if path.startswith(UC):
                return self._registry(path[len(UC):], q)
            if path.startswith(DIRS):
                return self._directory(path[len(DIRS):])
            if path.startswith(FILES):
                return self._file(path[len(FILES):])
            return self._missing(path)

        def _registry(self, call: str, q: dict[str, str]) -> None:
            name = q.get("name", "")
            if call == "/registered-models:is-databricks-sdk-models-artifact-repository-enabled":
                return self._json(200, {"is_databricks_sdk_models_artifact_repository_enabled": True})
            if call in ("/model-versions/get", "/model-versions/get-download-uri"):
                mv = ws.model_version(name, q.get("version", ""))
                if mv is None:
                    return self._missing(f"model version {name}/{q.get('version')}")
                if call.endswith("download-uri"):
                    return self._json(200, {"artifact_uri": mv["storage_location"]})
                return self._json(200, {"model_version": mv})
            if call == "/registered-models/alias":
                version = ws.aliases.get((name, q.get("alias", "")))
                if version is None:
                    return self._missing(f"alias {q.get('alias')} of {name}")
                return self._json(200, {"model_version": ws.model_version(name, version)})
            if call == "/registered-models/get":
                if name not in ws.models:
                    return self._missing(f"registered model {name}")
                return self._json(200, {"registered_model": {"name": name}})
            if call == "/model-versions/search":
                name = q.get("filter", "").split("=", 1)[-1].strip().strip("'\"")
                return self._json(200, {"model_versions": [ws.model_version(name, v) for v in ws.models.get(name, {})]})
            if call.startswith("/model-versions/") or call.startswith("/registered-models"):
                return self._json(200, {})  # lineage and other notifications: accepted
            return self._missing(call)

        def _local(self, fs_path: str) -> str:
            return os.path.join(ws.root, *[p for p in fs_path.split("/") if p not in ("", ".", "..")])

        def _directory(self, fs_path: str) -> None:
            local = self._local(fs_path)
            if not os.path.isdir(local):
                return self._missing(fs_path)
            if self.command == "HEAD":
                return self._send(200)
            contents = []
            for entry in sorted(os.scandir(local), key=lambda e: e.name):
                item = {"path": fs_path.rstrip("/") + "/" + entry.name, "name": entry.name,
                        "is_directory": entry.is_dir()}
                if entry.is_file():
                    st = entry.stat()
                    item.update(file_size=st.st_size, last_modified=int(st.st_mtime * 1000))
                contents.append(item)
            self._json(200, {"contents": contents})

        def _file(self, fs_path: str) -> None:
            local = self._local(fs_path)
            if not os.path.isfile(local):
                return self._missing(fs_path)
            with open(local, "rb") as f:
                data = f.read()
            self._send(200, data, "application/octet-stream",
                       {"Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                       time.gmtime(os.path.getmtime(local)))})

        do_GET = do_POST = do_HEAD = do_PATCH = _route

    return Handler


@contextlib.contextmanager
def uc_workspace(root: str, token: str = "dapi-test-token"):
    ws = Workspace(root, token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ws))
    ws.host = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ws
    finally:
        server.shutdown()
        server.server_close()
