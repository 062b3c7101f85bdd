"""An in-memory Hugging Face Hub for tests, served through huggingface_hub's replaceable HTTP client.

`FakeHub` holds repos (type "model", "dataset" or "space", id "org/name") whose files are bytes, and answers the
read routes that `hf_hub_download`, `snapshot_download`, `from_pretrained` and `datasets.load_dataset` use:

    GET       /api/{models,datasets,spaces}/{repo}[/revision/{rev}]    repo info (id, sha, siblings; a Space's sdk)
    GET       /api/{models,datasets,spaces}/{repo}/tree/{rev}[/{dir}]  file listing (?recursive=true)
    HEAD/GET  [/datasets|/spaces]/{repo}/resolve/{rev}/{path}         file, with ETag / X-Repo-Commit / Content-Length

and the push routes that `HfApi.create_repo` + `upload_folder` (and `push_to_hub`) use:

    POST      /api/repos/create                                        create a repo (409 if it exists)
    POST      /api/{models,datasets,spaces}/{repo}/branch/{branch}    branch off main (409 if it exists)
    POST      /api/validate-yaml                                       README.md metadata check
    POST      /api/{models,datasets,spaces}/{repo}/preupload/{rev}    every file goes "regular" (inline, no LFS)
    POST      /api/{models,datasets,spaces}/{repo}/commit/{rev}       NDJSON commit: added and deleted files

Anything else answers 404 with `X-Error-Code: EntryNotFound`, which is how the Hub says "no such file", so
probes for optional files (README.md, dataset_infos.json, ...) fall through cleanly. More routes are added with
`FakeHub.add_route`; `FakeHub.requests` records every request for assertions.

Use the `fake_hub` fixture: it installs the hub as huggingface_hub's HTTP client for one test and restores the
default client afterwards. For other processes, `serve_on_loopback` answers the same routes over HTTP on
127.0.0.1 (point HF_ENDPOINT at it).
"""

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub.utils import httpx, set_client_factory

try:  # where huggingface_hub keeps its default factory; not re-exported
    from huggingface_hub.utils._http import default_client_factory
except ImportError:  # pragma: no cover - older layouts
    default_client_factory = None

REPO = r"(?P<repo>[^/]+/[^/]+)"
REPO_TYPE_PREFIXES = {"model": "models", "dataset": "datasets", "space": "spaces"}
URL_TYPES = {prefix: repo_type for repo_type, prefix in REPO_TYPE_PREFIXES.items()}  # a URL's plural -> repo type

Handler = Callable[[httpx.Request, dict[str, str]], httpx.Response]


def git_blob_sha(content: bytes) -> str:
    """The object id git (and the Hub) gives a file's content; the Hub's ETag for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def not_found(error_code: str, message: str) -> httpx.Response:
    """A Hub-style 404, which huggingface_hub turns into EntryNotFoundError, RepositoryNotFoundError, ..."""
    return httpx.Response(404, headers={"X-Error-Code": error_code}, json={"error": message})


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str
    files: dict[str, bytes] = field(default_factory=dict)
    private: bool = False
    branches: dict[str, "FakeRepo"] = field(default_factory=dict)  # revisions other than main
    sdk: str | None = None  # a Space's, as create_repo gave it

    @property
    def sha(self) -> str:
        """A commit id that changes whenever the files do."""
        listing = sorted((path, git_blob_sha(content)) for path, content in self.files.items())
        return hashlib.sha1(json.dumps(listing).encode()).hexdigest()


class FakeHub:
    """An in-memory Hub: add repos with `add_repo`, install with `install` (or the `fake_hub` fixture)."""

    endpoint = "https://huggingface.co"

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[httpx.Request] = []
        self._routes: list[tuple[set[str], re.Pattern[str], Handler]] = []
        types = r"(?P<type>models|datasets|spaces)"
        self.add_route("GET", rf"/api/{types}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self._tree)
        self.add_route("GET", rf"/api/{types}/{REPO}(?:/revision/(?P<rev>[^/]+))?", self._repo_info)
        self.add_route(
            "HEAD GET", rf"(?:/(?P<type>datasets|spaces))?/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self._resolve
        )
        self.add_route("POST", r"/api/repos/create", self._create_repo)
        self.add_route("POST", rf"/api/{types}/{REPO}/branch/(?P<branch>[^/]+)", self._create_branch)
        self.add_route("POST", r"/api/validate-yaml", self._validate_yaml)
        self.add_route("POST", rf"/api/{types}/{REPO}/preupload/(?P<rev>[^/]+)", self._preupload)
        self.add_route("POST", rf"/api/{types}/{REPO}/commit/(?P<rev>[^/]+)", self._commit)

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> FakeRepo:
        """Create (or replace) a repo holding `files` ({path in repo: content})."""
        if repo_type not in REPO_TYPE_PREFIXES:
            raise ValueError(f"repo_type must be one of {list(REPO_TYPE_PREFIXES)}, got {repo_type!r}")
        repo = FakeRepo(repo_id, repo_type, dict(files))
        self.repos[repo_type, repo_id] = repo
        return repo

    def add_route(self, methods: str, pattern: str, handler: Handler) -> None:
        """Serve `methods` (space-separated) on URL paths fully matching `pattern` with `handler(request, groups)`.

        Routes are tried in the order they were added; the first match answers.
        """
        self._routes.append((set(methods.split()), re.compile(pattern), handler))

    def handle(self, request: httpx.Request) -> httpx.Response:
        """The MockTransport handler: dispatch a request to the first matching route."""
        self.requests.append(request)
        for methods, pattern, handler in self._routes:
            match = pattern.fullmatch(request.url.path)
            if request.method in methods and match:
                return handler(request, {k: v for k, v in match.groupdict().items() if v is not None})
        return not_found("EntryNotFound", f"{request.method} {request.url.path} is not served by the fake Hub")

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle))

    def install(self) -> None:
        """Route all of huggingface_hub's HTTP traffic to this hub."""
        set_client_factory(self.client)

    @staticmethod
    def uninstall() -> None:
        """Give huggingface_hub back its default HTTP client."""
        set_client_factory(default_client_factory or httpx.Client)

    # -- lookups shared by the routes -------------------------------------------------------------------------

    def repo(self, groups: dict[str, str]) -> FakeRepo | None:
        """The repo a route's match names (`type` is the URL's plural, absent for models on resolve URLs)."""
        return self.repos.get((URL_TYPES.get(groups.get("type"), "model"), groups["repo"]))

    def _lookup(self, groups: dict[str, str]) -> FakeRepo | httpx.Response:
        repo = self.repo(groups)
        if repo is None:
            return not_found("RepoNotFound", f"repository {groups['repo']} not found")
        revision = groups.get("rev", "main")
        for name, branch in {"main": repo, **repo.branches}.items():
            if revision in (name, branch.sha):
                return branch
        return not_found("RevisionNotFound", f"revision {revision} not found in {repo.repo_id}")

    # -- read routes --------------------------------------------------------------------------------------------

    def _repo_info(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        repo = self._lookup(groups)
        if isinstance(repo, httpx.Response):
            return repo
        info = {
            "id": repo.repo_id,
            "sha": repo.sha,
            "private": repo.private,
            "lastModified": "2024-01-01T00:00:00.000Z",
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(repo.files)],
        }
        if repo.repo_type == "space":
            info["sdk"] = repo.sdk
        return httpx.Response(200, json=info)

    def _tree(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        repo = self._lookup(groups)
        if isinstance(repo, httpx.Response):
            return repo
        folder = groups.get("path", "").strip("/")
        prefix = f"{folder}/" if folder else ""
        recursive = request.url.params.get("recursive", "false").lower() == "true"
        entries: dict[str, dict] = {}
        for path, content in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):  # the folders on the way to the file
                if depth == 1 or recursive:
                    sub = prefix + "/".join(parts[:depth])
                    entries.setdefault(sub, {"type": "directory", "path": sub, "size": 0, "oid": git_blob_sha(b"")})
            if len(parts) == 1 or recursive:
                entries[path] = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
        if folder and not entries:
            return not_found("EntryNotFound", f"{folder} not found in {repo.repo_id}")
        return httpx.Response(200, json=list(entries.values()))

    def _resolve(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        repo = self._lookup(groups)
        if isinstance(repo, httpx.Response):
            return repo
        content = repo.files.get(groups["path"])
        if content is None:
            return not_found("EntryNotFound", f"{groups['path']} not found in {repo.repo_id}")
        headers = {
            "ETag": f'"{git_blob_sha(content)}"',
            "X-Repo-Commit": repo.sha,
            "Content-Length": str(len(content)),
            "Content-Type": "application/octet-stream",
        }
        return httpx.Response(200, headers=headers, content=content if request.method == "GET" else b"")

    # -- push routes --------------------------------------------------------------------------------------------

    def _create_repo(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        payload = json.loads(request.content)
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        repo_type = payload.get("type") or "model"
        if (repo_type, repo_id) in self.repos:
            return httpx.Response(409, json={"error": f"You already created this {repo_type} repo", "url": repo_id})
        if repo_type == "space" and payload.get("sdk") not in ("gradio", "docker", "static"):
            return httpx.Response(400, json={"error": f"a Space needs an sdk (gradio, docker, static): {payload}"})
        repo = self.add_repo(repo_id, {}, repo_type)
        repo.private, repo.sdk = payload.get("visibility") == "private", payload.get("sdk")
        return httpx.Response(200, json={"url": f"{self.endpoint}/{repo_id}", "name": repo_id})

    def _create_branch(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        repo = self.repo(groups)
        if repo is None:
            return not_found("RepoNotFound", f"repository {groups['repo']} not found")
        if groups["branch"] in repo.branches:
            return httpx.Response(409, json={"error": f"branch {groups['branch']} already exists"})
        repo.branches[groups["branch"]] = FakeRepo(repo.repo_id, repo.repo_type, dict(repo.files))
        return httpx.Response(200, json={})

    def _validate_yaml(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        return httpx.Response(200, json={"errors": [], "warnings": []})

    def _preupload(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        repo = self._lookup(groups)
        if isinstance(repo, httpx.Response):
            return repo
        files = json.loads(request.content)["files"]
        modes = [{"path": file["path"], "uploadMode": "regular", "shouldIgnore": False} for file in files]
        return httpx.Response(200, json={"files": modes})

    def _commit(self, request: httpx.Request, groups: dict[str, str]) -> httpx.Response:
        """Apply an NDJSON commit (header, then `file` / `deletedFile` lines); LFS files are not served."""
        repo = self._lookup(groups)
        if isinstance(repo, httpx.Response):
            return repo
        for line in request.content.splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                repo.files.pop(item["value"]["path"], None)
            elif item["key"] != "header":
                return httpx.Response(400, json={"error": f"the fake Hub does not take {item['key']} commits"})
        commit = {"commitUrl": f"{self.endpoint}/{repo.repo_id}/commit/{repo.sha}", "commitOid": repo.sha}
        return httpx.Response(200, json=commit | {"pullRequestUrl": None})


@contextmanager
def serve_on_loopback(hub: FakeHub) -> Iterator[str]:
    """Serve `hub` over HTTP on a free 127.0.0.1 port for as long as the block runs; yields its endpoint URL."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = httpx.Request(
                self.command,
                f"http://{self.headers['Host']}{self.path}",
                headers=dict(self.headers),
                content=self.rfile.read(length) if length else b"",
            )
            response = hub.handle(request)
            body = response.read()
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "content-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", response.headers.get("Content-Length", str(len(body))))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = answer

        def log_message(self, *args) -> None:  # quiet: the hub records its requests
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """A FakeHub serving all huggingface_hub traffic for one test (no network), with Xet transfers off."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # "Online" is safe here (every request goes to the fake), and lets the tests run under HF_HUB_OFFLINE=1 too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    hub.install()
    yield hub
    hub.uninstall()
