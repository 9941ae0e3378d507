"""A local stand-in for the Hugging Face Hub, serving the routes that `huggingface_hub` 2.x uses to publish.

`HfApi.create_repo`, `create_branch` and `upload_folder` (its single-commit path, taken when Xet is
off) speak to it exactly as to huggingface.co, so tests/test_push.py runs the real client against it:

    POST /api/repos/create                               create a repo (409 when it exists)
    POST /api/models/{repo}/branch/{branch}              create a branch from main (409 when it exists)
    POST /api/validate-yaml                              check a README's metadata block
    POST /api/models/{repo}/preupload/{rev}              say, per file, "regular" (inline) or "lfs"
    POST /{repo}.git/info/lfs/objects/batch              LFS batch API: a basic-transfer upload URL per object
    PUT  /lfs-objects/{oid}                              receive an LFS object (its sha256 is checked)
    POST /{repo}.git/info/lfs/objects/verify             confirm an LFS object arrived whole
    POST /api/models/{repo}/commit/{rev}                 NDJSON commit: inline base64 files and LFS pointers

The Xet protocol is never offered: preupload answers only "regular" and "lfs", and the LFS batch
response names the basic transfer. A client with `hf_xet` installed sends "lfs" files through Xet
regardless, so a test either switches Xet off (`constants.HF_HUB_DISABLE_XET`) or sets `lfs_suffixes=()`.

Files land in `hub.repos[repo_id]["branches"][rev][path]` as bytes; `hub.requests` lists every
request as (method, path). `fail_on` names routes (`"commit"`, `"preupload"`, `"lfs-batch"`, ...)
that answer 500. The server runs on 127.0.0.1 on a free port in a daemon thread and shuts itself
down after `timeout` seconds if nobody stops it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = [
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "branch", re.compile(rf"^/api/models/{REPO}/branch/(?P<rev>[^/]+)$")),
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/models/{REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "lfs-batch", re.compile(rf"^/{REPO}\.git/info/lfs/objects/batch$")),
    ("PUT", "lfs-upload", re.compile(r"^/lfs-objects/(?P<oid>[0-9a-f]{64})$")),
    ("POST", "lfs-verify", re.compile(rf"^/{REPO}\.git/info/lfs/objects/verify$")),
    ("POST", "commit", re.compile(rf"^/api/models/{REPO}/commit/(?P<rev>[^/]+)$")),
]


class FakeHub:
    def __init__(
        self,
        *,
        token: str | None = None,
        fail_on: tuple[str, ...] = (),
        lfs_suffixes: tuple[str, ...] = (".safetensors",),
        timeout: float = 60.0,
    ):
        self.token, self.fail_on, self.lfs_suffixes = token, set(fail_on), lfs_suffixes
        self.repos: dict[str, dict] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._deadline = threading.Timer(timeout, self.stop)
        self._deadline.daemon = True

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._deadline.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._deadline.cancel()
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][rev]

    # ------------------------------------------------------------------ routes: (status, json body)

    def create(self, body: dict, **_) -> tuple[int, dict]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.url}/{repo_id}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": url}
        self.repos[repo_id] = {"private": body.get("visibility") == "private", "branches": {"main": {}}}
        return 200, {"url": url, "name": repo_id}

    def branch(self, body: dict, repo: str, rev: str) -> tuple[int, dict]:
        branches = self.repos[repo]["branches"]
        if rev in branches:
            return 409, {"error": f"Reference refs/heads/{rev} already exists"}
        branches[rev] = dict(branches[body.get("startingPoint") or "main"])
        return 200, {}

    def validate_yaml(self, body: dict, **_) -> tuple[int, dict]:
        import yaml

        match = re.match(r"^---\n(.*?)\n---\n", body["content"], re.DOTALL)
        metadata = yaml.safe_load(match.group(1)) if match else None
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "README.md has no YAML metadata block"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def preupload(self, body: dict, repo: str, rev: str) -> tuple[int, dict]:
        files = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(self.lfs_suffixes) else "regular",
                "shouldIgnore": False,
                "oid": None,
            }
            for f in body["files"]
        ]
        return 200, {"files": files, "commitOid": "0" * 40}

    def lfs_batch(self, body: dict, repo: str) -> tuple[int, dict]:
        objects = []
        for obj in body["objects"]:
            actions = {
                "upload": {"href": f"{self.url}/lfs-objects/{obj['oid']}"},
                "verify": {"href": f"{self.url}/{repo}.git/info/lfs/objects/verify"},
            }
            objects.append(
                {"oid": obj["oid"], "size": obj["size"], "authenticated": True, "actions": actions}
            )
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_upload(self, data: bytes, oid: str) -> tuple[int, dict]:
        if hashlib.sha256(data).hexdigest() != oid:
            return 400, {"error": "content does not match its sha256 oid"}
        self.lfs_objects[oid] = data
        return 200, {}

    def lfs_verify(self, body: dict, repo: str) -> tuple[int, dict]:
        data = self.lfs_objects.get(body["oid"])
        if data is None or len(data) != body["size"]:
            return 404, {"error": f"LFS object {body['oid']} not found"}
        return 200, {}

    def commit(self, lines: list[dict], repo: str, rev: str) -> tuple[int, dict]:
        branches = self.repos[repo]["branches"]
        if rev not in branches:
            return 404, {"error": f"Invalid rev id: {rev}"}
        added = {}
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
                added[value["path"]] = self.lfs_objects[value["oid"]]
            elif line["key"] != "header":
                return 400, {"error": f"unsupported commit operation {line['key']}"}
        branches[rev].update(added)
        oid = hashlib.sha1(json.dumps(sorted(added)).encode()).hexdigest()
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().strip(), 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status >= 400 and "error" in body:
                self.send_header("X-Error-Message", body["error"])
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            data = self._body()
            with hub.lock:
                hub.requests.append((method, path))
            for route_method, name, pattern in ROUTES:
                match = pattern.match(path) if route_method == method else None
                if match is None:
                    continue
                if name in hub.fail_on:
                    return self._reply(500, {"error": f"simulated server failure on {name}"})
                uploads = name in ("lfs-upload", "lfs-verify")
                if hub.token is not None and not uploads:
                    if self.headers.get("Authorization") != f"Bearer {hub.token}":
                        return self._reply(401, {"error": "Invalid credentials in Authorization header"})
                args = {k: unquote(v) for k, v in match.groupdict().items()}
                if "repo" in args and args["repo"] not in hub.repos:
                    return self._reply(404, {"error": "Repository not found"})
                if name == "lfs-upload":
                    payload = data
                elif name == "commit":
                    payload = [json.loads(line) for line in data.splitlines() if line.strip()]
                else:
                    payload = json.loads(data or b"{}")
                with hub.lock:
                    status, body = getattr(hub, name.replace("-", "_"))(payload, **args)
                return self._reply(status, body)
            return self._reply(404, {"error": f"no route {method} {path} in the test Hub"})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

    return Handler
