"""A stdlib-only, loopback, in-memory fake of the Hugging Face Hub HTTP API.

It implements the subset of endpoints that the real ``huggingface_hub`` 2.x, ``datasets`` 5.x and
``transformers`` 5.x clients use for ``push_to_hub`` / ``upload_folder`` / ``create_commit`` and for
``hf_hub_download`` / ``snapshot_download`` / ``load_dataset("user/repo")`` / ``from_pretrained``:

==========================================================  =========================================
``GET  /api/whoami-v2``                                     token check
``POST /api/repos/create`` / ``DELETE /api/repos/delete``   body ``{name, organization, type}``
``POST /api/validate-yaml``                                 always valid
``GET  /api/{type}s/{repo}[/revision/{rev}]``               repo info (``id``, ``sha``, ``siblings``...)
``POST /api/{type}s/{repo}/preupload/{rev}``                server decides "regular" vs "lfs"
``POST /{prefix}{repo}.git/info/lfs/objects/batch``         LFS batch; ``PUT /_lfs/{oid}`` + verify
``POST /api/{type}s/{repo}/commit/{rev}``                   NDJSON commit (412 on stale parentCommit)
``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``            ``recursive`` / ``expand``; 404 EntryNotFound
``POST /api/{type}s/{repo}/paths-info/{rev}``               form or JSON ``paths``
``GET  /api/{type}s/{repo}/refs`` and ``/commits/{rev}``    refs and history
``POST|DELETE /api/{type}s/{repo}/branch/{b}``, ``/tag/..`` branches and tags
``GET|HEAD /{prefix}{repo}/resolve/{rev}/{path}``           ``X-Repo-Commit``, ``ETag``, ``Range``
==========================================================  =========================================

Client behaviour this server accommodates:

* ``datasets`` deletes each temporary parquet right after ``preupload_lfs_files``, so parquet (and any
  binary, ``*.safetensors``, or >10 MB file) must be "lfs" (uploaded before the commit), never "regular";
* a missing tree folder must be ``404`` + ``X-Error-Code: EntryNotFound`` (an empty list breaks
  datasets); missing files/repos/revisions use ``EntryNotFound``/``RepoNotFound``/``RevisionNotFound``;
* HEAD replies never carry a body (even errors), or the HTTP/1.1 keep-alive stream is corrupted;
* ``hf_hub_download`` needs ``X-Repo-Commit`` and an ``ETag`` (LFS: ``X-Linked-Etag`` = sha256);
* preupload returns the current ``oid`` of a path so unchanged files are skipped client-side;
* ``create_repo(exist_ok=True)`` reads ``url`` from the 409 body.

Clients must run with ``HF_HUB_DISABLE_XET=1`` (otherwise LFS uploads go to a Xet CAS server) and with
``HF_ENDPOINT`` set *before* importing any HF library. Run standalone with
``python tests/hub_server.py --port 0``: it prints the base URL on one line and serves until killed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
ACTIONS = {"revision", "preupload", "commit", "tree", "paths-info", "refs", "branch", "tag", "commits"}
LFS_SUFFIXES = (".parquet", ".arrow", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npy", ".npz",
                ".h5", ".msgpack", ".onnx", ".pkl", ".zip", ".gz", ".tar", ".png", ".jpg", ".jpeg")
REGULAR_MAX = 10 * 1024 * 1024  # larger files always go through LFS, as on the real Hub
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_oid(data: bytes) -> str:
    """Git blob id: sha1 over ``blob <size>\\0<data>``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubError(Exception):
    """An HTTP error answered with ``X-Error-Code``/``X-Error-Message`` (as the client expects)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


@dataclass
class Entry:
    """One file of a commit tree. ``oid`` is the git blob id (of the pointer file for LFS files)."""

    size: int
    sha256: str
    oid: str
    lfs: bool
    commit: str  # last commit touching this path

    def describe(self, path: str, repo: "Repo", expand: bool) -> dict:
        out = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(_pointer(self))}
        if expand:
            out["lastCommit"] = repo.commits[self.commit].short()
        return out


def _pointer(e: Entry) -> bytes:
    spec = b"version https://git-lfs.github.com/spec/v1\n"
    return spec + b"oid sha256:%s\nsize %d\n" % (e.sha256.encode(), e.size)


@dataclass
class Commit:
    id: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, Entry]

    def short(self) -> dict:
        return {"id": self.id, "title": self.title, "date": self.date}


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str = field(default_factory=_now)
    refs: dict[str, str] = field(default_factory=dict)  # branches ("main", "refs/pr/1") -> commit id
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        rev = rev.removeprefix("refs/heads/")
        sha = self.refs.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[sha]


class FakeHub:
    """In-memory fake Hub served by a ``ThreadingHTTPServer`` on ``127.0.0.1`` in a daemon thread.

    ``FakeHub().start()`` returns the base URL; ``stop()`` shuts it down (also a context manager).
    ``hub.log`` lists ``(method, path, status)`` of every request; ``hub.files(repo_id, repo_type)``
    returns the ``{path: bytes}`` content of a revision, for assertions.
    """

    def __init__(self, port: int = 0, user: str = "tester", max_body: int = 1 << 30):
        self.port, self.user, self.max_body = port, user, max_body
        self.repos: dict[tuple[str, str], Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (git and LFS objects alike)
        self.log: deque[tuple[str, str, int]] = deque(maxlen=100_000)
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        if self._server is None:
            handler = type("Handler", (_Handler,), {"hub": self})
            self._server = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
            self._server.daemon_threads = True
            self._server.conns = set()
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
            self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            for conn in list(self._server.conns):  # unblock keep-alive handler threads
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "FakeHub":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- state helpers -----------------------------------------------------------------------------
    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type}s/{repo_id}", "RepoNotFound")
        return repo

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        with self.lock:
            tree = self.repo(repo_type, repo_id).resolve(revision).files
            return {p: self.blobs[e.sha256] for p, e in tree.items()}

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                raise HubError(409, f"You already created this {repo_type} repo")
            repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
            repo.refs["main"] = self._commit(repo, None, {}, "initial commit", "",
                                             {"file": [{"path": ".gitattributes", "content": GITATTRIBUTES}]})
            return repo

    def _store(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def _commit(self, repo: Repo, parent: str | None, files: dict, title: str, message: str,
                ops: dict) -> str:
        """Apply ``ops`` (lists under keys file/lfsFile/deletedFile/deletedFolder) on ``files``; return id."""
        files = dict(files)
        self._counter += 1
        seed = f"{repo.repo_id}:{parent}:{title}:{time.time_ns()}:{self._counter}"
        cid = hashlib.sha1(seed.encode()).hexdigest()
        for op in ops.get("deletedFile", []):
            if files.pop(op["path"], None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {op['path']}", "EntryNotFound")
        for op in ops.get("deletedFolder", []):
            prefix = op["path"].rstrip("/") + "/"
            gone = [p for p in files if p.startswith(prefix)]
            if not gone:
                raise HubError(404, f"A folder with this name doesn't exist: {op['path']}", "EntryNotFound")
            for p in gone:
                del files[p]
        for op in ops.get("file", []):
            data = op["content"]
            files[op["path"]] = Entry(len(data), self._store(data), git_oid(data), False, cid)
        for op in ops.get("lfsFile", []):
            if op["oid"] not in self.blobs:
                raise HubError(400, f"LFS object {op['oid']} for {op['path']} was never uploaded")
            entry = Entry(len(self.blobs[op["oid"]]), op["oid"], "", True, cid)
            entry.oid = git_oid(_pointer(entry))
            files[op["path"]] = entry
        repo.commits[cid] = Commit(cid, parent, title, message, _now(), files)
        return cid

    def repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{PREFIXES[repo.repo_type]}{repo.repo_id}"


def _dirs(files: dict[str, Entry]) -> set[str]:
    return {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}


def _folder(path: str, files: dict[str, Entry], repo: Repo, expand: bool) -> dict:
    inside = sorted((p, e) for p, e in files.items() if p.startswith(path + "/"))
    out = {"type": "directory", "path": path, "size": 0,
           "oid": hashlib.sha1("".join(p + e.oid for p, e in inside).encode()).hexdigest()}
    if expand:
        last = max((repo.commits[e.commit] for _, e in inside), key=lambda c: c.date)
        out["lastCommit"] = last.short()
    return out


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the ``FakeHub`` state; HTTP/1.1 keep-alive with exact Content-Length."""

    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections are dropped after this many seconds
    hub: FakeHub

    def setup(self):
        super().setup()
        self.server.conns.add(self.connection)

    def finish(self):
        self.server.conns.discard(self.connection)
        super().finish()

    def log_message(self, *args):  # quiet; see FakeHub.log
        pass

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = lambda self: self._dispatch()

    # -- plumbing ----------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body:
            self.close_connection = True
            raise HubError(413, "Request body too large")
        return self.rfile.read(length)

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict | None = None,
              ctype: str = "application/json") -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":  # a body after HEAD would corrupt the keep-alive stream
            self.wfile.write(body)
        self.hub.log.append((self.command, self.path, status))

    def _dispatch(self) -> None:
        try:
            self.body = self._read_body()
            url = urlsplit(self.path)
            self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            segs = [unquote(s) for s in url.path.strip("/").split("/")]
            self._route(url.path, segs)
        except HubError as err:
            headers = {"X-Error-Message": err.message.encode("ascii", "replace").decode(), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._send(err.status, {"error": err.message, **err.extra}, headers)
        except Exception as err:  # surface server bugs to the client instead of hanging it
            self._send(500, {"error": f"{type(err).__name__}: {err}"})

    def _json(self) -> dict:
        return json.loads(self.body or b"{}")

    def _route(self, raw: str, segs: list[str]) -> None:
        hub, cmd = self.hub, self.command
        if segs[:2] == ["api", "whoami-v2"]:
            return self._send(200, {"type": "user", "name": hub.user, "fullname": hub.user, "orgs": [],
                                    "auth": {"type": "access_token",
                                             "accessToken": {"displayName": "fake", "role": "write"}}})
        if segs[:2] == ["api", "validate-yaml"]:
            return self._send(200, {"errors": [], "warnings": []})
        if segs[:2] == ["api", "repos"] and len(segs) == 3:
            return self._repos(segs[2])
        if segs[0] == "api" and len(segs) >= 3 and segs[1] in ("models", "datasets", "spaces"):
            repo_type = segs[1][:-1]
            two = len(segs) >= 4 and segs[3] not in ACTIONS
            repo_id = "/".join(segs[2:4] if two else segs[2:3])
            return self._api(repo_type, repo_id, segs[4 if two else 3:])
        if segs[0] == "_lfs" and len(segs) >= 2:
            return self._lfs_object(segs[1], verify=len(segs) == 3 and segs[2] == "verify")
        repo_type = {"datasets": "dataset", "spaces": "space"}.get(segs[0], "model")
        rest = segs[1:] if repo_type != "model" else segs
        if raw.endswith(".git/info/lfs/objects/batch") and cmd == "POST":
            return self._lfs_batch()
        for n in (2, 1):  # "ns/name/resolve/..." or legacy "name/resolve/..."
            if len(rest) > n + 2 and rest[n] == "resolve" and cmd in ("GET", "HEAD"):
                return self._resolve(repo_type, "/".join(rest[:n]), rest[n + 1], "/".join(rest[n + 2:]))
        raise HubError(404, f"Not found: {cmd} {raw}")

    # -- repos -------------------------------------------------------------------------------------
    def _repos(self, action: str) -> None:
        body = self._json()
        repo_id = f"{body.get('organization') or self.hub.user}/{body['name']}"
        repo_type = body.get("type") or "model"
        if action == "create" and self.command == "POST":
            private = body.get("private") or body.get("visibility") == "private"
            url = f"{self.hub.url}/{PREFIXES[repo_type]}{repo_id}"
            try:
                self.hub.create_repo(repo_type, repo_id, bool(private))
            except HubError as err:
                err.extra = {"url": url}  # create_repo(exist_ok=True) reads the url from the 409 body
                raise
            return self._send(200, {"url": url, "name": repo_id, "id": repo_id})
        if action == "delete" and self.command == "DELETE":
            with self.hub.lock:
                self.hub.repo(repo_type, repo_id)
                del self.hub.repos[(repo_type, repo_id)]
            return self._send(200, {})
        raise HubError(404, f"Not found: {self.command} /api/repos/{action}")

    def _api(self, repo_type: str, repo_id: str, rest: list[str]) -> None:
        hub, cmd = self.hub, self.command
        with hub.lock:
            repo = hub.repo(repo_type, repo_id)
            action = rest[0] if rest else "revision"
            rev = rest[1] if len(rest) > 1 else "main"
            if action == "revision" and cmd == "GET":
                return self._send(200, self._info(repo, rev))
            if action == "preupload" and cmd == "POST":
                files = repo.resolve(rev).files if rev in repo.refs else {}
                modes = [self._upload_mode(f, files) for f in self._json()["files"]]
                return self._send(200, {"files": modes})
            if action == "commit" and cmd == "POST":
                return self._commit(repo, rev)
            if action == "tree" and cmd == "GET":
                return self._tree(repo, rev, "/".join(rest[2:]).strip("/"))
            if action == "paths-info" and cmd == "POST":
                return self._paths_info(repo, rev)
            if action == "refs" and cmd == "GET":
                def ref(name, full):
                    return {"name": name, "ref": full, "targetCommit": repo.refs.get(name) or repo.tags[name]}
                branches = [ref(b, f"refs/heads/{b}") for b in repo.refs if not b.startswith("refs/")]
                prs = [ref(b, b) for b in repo.refs if b.startswith("refs/pr/")]
                return self._send(200, {"branches": branches, "converts": [], "pullRequests": prs,
                                        "tags": [ref(t, f"refs/tags/{t}") for t in repo.tags]})
            if action == "commits" and cmd == "GET":
                out, commit = [], repo.resolve(rev)
                while commit is not None:
                    out.append({**commit.short(), "message": commit.message, "authors": [{"user": hub.user}]})
                    commit = repo.commits.get(commit.parent) if commit.parent else None
                return self._send(200, out)
            if action in ("branch", "tag") and len(rest) == 2:
                return self._ref(repo, action, rev)
        raise HubError(404, f"Not found: {cmd} {self.path}")

    def _info(self, repo: Repo, rev: str) -> dict:
        commit = repo.resolve(rev)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, e in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=e.size, blobId=e.oid)
                if e.lfs:
                    sib["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": len(_pointer(e))}
            siblings.append(sib)
        return {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
                "author": repo.repo_id.split("/")[0], "sha": commit.id, "lastModified": commit.date,
                "createdAt": repo.created, "private": repo.private, "gated": False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                "usedStorage": sum(e.size for e in commit.files.values())}

    @staticmethod
    def _upload_mode(f: dict, files: dict[str, Entry]) -> dict:
        sample = base64.b64decode(f.get("sample", ""))
        lfs = (f["path"].lower().endswith(LFS_SUFFIXES) or f["size"] > REGULAR_MAX or b"\0" in sample)
        mode = "lfs" if lfs and f["size"] > 0 else "regular"
        old = files.get(f["path"])  # the client skips files whose local oid equals this one
        oid = None if old is None or old.lfs != (mode == "lfs") else (old.sha256 if old.lfs else old.oid)
        return {"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid}

    def _commit(self, repo: Repo, rev: str) -> None:
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of the NDJSON payload must be the commit header")
        header, ops = lines[0]["value"], {}
        for line in lines[1:]:
            value = dict(line["value"])
            if line["key"] == "file":
                value["content"] = base64.b64decode(value["content"])
            ops.setdefault(line["key"], []).append(value)
        if self.query.get("create_pr") in ("1", "true", "True"):
            base = repo.resolve(rev)
            rev = f"refs/pr/{1 + sum(r.startswith('refs/pr/') for r in repo.refs)}"
            repo.refs[rev] = base.id
        if rev not in repo.refs:
            raise HubError(404, f"Invalid rev id: {rev} (commits go to a branch)", "RevisionNotFound")
        head = repo.refs[rev]
        parent = header.get("parentCommit")
        if parent and not head.startswith(parent):
            raise HubError(412, f"A commit has happened since. Parent {parent} is not the head {head}")
        cid = self.hub._commit(repo, head, repo.commits[head].files, header.get("summary") or "Commit",
                               header.get("description") or "", ops)
        repo.refs[rev] = cid
        prefix = self.hub.repo_url(repo)
        self._send(200, {"success": True, "commitOid": cid, "commitUrl": f"{prefix}/commit/{cid}",
                         "hookOutput": "", **({"pullRequestUrl": f"{prefix}/discussions/{rev.split('/')[-1]}"}
                                              if rev.startswith("refs/pr/") else {})})

    def _tree(self, repo: Repo, rev: str, path: str) -> None:
        files, expand = repo.resolve(rev).files, self.query.get("expand", "").lower() in ("1", "true")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        dirs = _dirs(files)
        if path and path not in dirs:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        prefix = path + "/" if path else ""

        def wanted(p: str) -> bool:
            return p.startswith(prefix) and (recursive or "/" not in p[len(prefix):])

        out = [_folder(d, files, repo, expand) for d in sorted(dirs) if wanted(d)]
        out += [e.describe(p, repo, expand) for p, e in sorted(files.items()) if wanted(p)]
        self._send(200, out)

    def _paths_info(self, repo: Repo, rev: str) -> None:
        if self.headers.get("Content-Type", "").startswith("application/json"):
            body = self._json()
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[-1].lower() == "true"
        files = repo.resolve(rev).files
        dirs = _dirs(files)
        out = []
        for p in (p.strip("/") for p in paths):
            if p in files:
                out.append(files[p].describe(p, repo, expand))
            elif p in dirs:
                out.append(_folder(p, files, repo, expand))
        self._send(200, out)

    def _ref(self, repo: Repo, kind: str, name: str) -> None:
        table = repo.refs if kind == "branch" else repo.tags
        if self.command == "DELETE":
            if table.pop(name, None) is None:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            return self._send(200, {})
        body = self._json()
        if kind == "branch":
            target = repo.resolve(body.get("startingPoint") or "main").id
        else:  # POST /tag/{revision} with {"tag": name}
            target, name, table = repo.resolve(name).id, body["tag"], repo.tags
        if name in table:
            raise HubError(409, f"{kind} {name} already exists")
        table[name] = target
        self._send(200, {})

    # -- LFS ---------------------------------------------------------------------------------------
    def _lfs_batch(self) -> None:
        objects = []
        for obj in self._json().get("objects", []):
            item = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.blobs:  # already-present objects get no actions
                href = f"{self.hub.url}/_lfs/{obj['oid']}"
                item.update(authenticated=True, actions={"upload": {"href": href, "header": {}},
                                                         "verify": {"href": href + "/verify"}})
            objects.append(item)
        self._send(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_object(self, oid: str, verify: bool) -> None:
        if verify and self.command == "POST":
            if oid not in self.hub.blobs:
                raise HubError(404, f"LFS object {oid} not found")
            return self._send(200, {})
        if self.command != "PUT":
            raise HubError(405, "Only PUT is supported on LFS objects")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        with self.hub.lock:
            self.hub.blobs[oid] = self.body
        self._send(200, b"", ctype="text/plain")

    # -- downloads ---------------------------------------------------------------------------------
    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        with self.hub.lock:
            commit = self.hub.repo(repo_type, repo_id).resolve(rev)
            entry = commit.files.get(path)
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
            data = self.hub.blobs[entry.sha256]
        headers = {"X-Repo-Commit": commit.id, "Accept-Ranges": "bytes",
                   "ETag": f'"{entry.sha256 if entry.lfs else entry.oid}"'}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        status, total = 200, len(data)
        spec = self.headers.get("Range", "")
        if spec.startswith("bytes="):
            start_s, _, end_s = spec[6:].split(",")[0].strip().partition("-")
            if start_s:
                start, end = int(start_s), min(int(end_s) if end_s else total - 1, total - 1)
            else:
                start, end = max(total - int(end_s), 0), total - 1
            if start >= total or start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{total}"})
            status, data = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        self._send(status, data, headers, ctype="application/octet-stream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", default="tester")
    args = parser.parse_args()
    hub = FakeHub(port=args.port, user=args.user)
    print(hub.start(), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
