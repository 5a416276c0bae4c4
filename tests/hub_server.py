"""A small stand-in for the Hugging Face Hub, for offline tests of the real client code.

It answers, on 127.0.0.1 only, the endpoints that ``huggingface_hub`` calls to create a repo,
upload a folder and download files (``HfApi.create_repo``, ``create_branch``, ``whoami``,
``upload_folder`` through ``validate-yaml`` (the card's front matter) + ``preupload`` + ``commit``,
``hf_hub_download`` through HEAD/GET ``resolve``, ``model_info``). Repos live in memory as git-like commits: each commit is a full
``{path: bytes}`` snapshot with a 40-hex id. Every upload is answered ``uploadMode: regular`` so
the client inlines file contents in the commit (no LFS / Xet storage needed).

Writes need ``Authorization: Bearer <token>`` with the server's token; private repos also need it
to be read. Errors carry the ``X-Error-Code`` headers the client maps to its exception types.
"""
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

__all__ = ['HubServer']


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


class _Repo:
    def __init__(self, private: bool):
        self.private = private
        self.commits: Dict[str, Dict[str, bytes]] = {}
        self.branches: Dict[str, str] = {}

    def commit(self, files: Dict[str, bytes], message: str, parent: Optional[str]) -> str:
        digest = hashlib.sha1(json.dumps(
            [parent, message, sorted((k, _git_blob_sha(v)) for k, v in files.items())]).encode())
        sha = digest.hexdigest()
        self.commits[sha] = dict(files)
        return sha

    def resolve(self, revision: str) -> Optional[str]:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class HubServer:
    """In-memory Hub on ``http://127.0.0.1:<free port>``; ``start()`` / ``stop()`` or ``with``.

    Args:
        token: the one access token the server accepts (as ``Authorization: Bearer <token>``).
        user: user name ``whoami`` reports; the user may write to its own namespace and to ``orgs``.
        orgs: organisations the user belongs to.

    Attributes:
        requests: ``(method, path, authorization header or None)`` of every request, in order.
        user_agents: the ``User-Agent`` header of every request, in the same order.
    """

    def __init__(self, token: str, user: str = 'tester', orgs: Tuple[str, ...] = ('timm-fgfocus',)):
        self.token = token
        self.user = user
        self.orgs = tuple(orgs)
        self.repos: Dict[str, _Repo] = {}
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.user_agents: List[Optional[str]] = []
        self._lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f'http://{host}:{port}'

    def start(self) -> 'HubServer':
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name='hub-server', daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()
            self._httpd = None

    def __enter__(self) -> 'HubServer':
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- direct access for tests ---------------------------------------------------------------

    def put_files(self, repo_id: str, files: Dict[str, bytes], revision: str = 'main',
                  private: bool = False, message: str = 'seed') -> str:
        """Commit ``files`` to ``repo_id`` (created if needed) without HTTP; returns the commit id."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo(private))
            parent = repo.branches.get(revision)
            snapshot = dict(repo.commits.get(parent, {}))
            snapshot.update(files)
            sha = repo.commit(snapshot, message, parent)
            repo.branches[revision] = sha
            return sha

    def files(self, repo_id: str, revision: str = 'main') -> Dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (branch or commit id)."""
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def corrupt(self, repo_id: str, path: str, data: bytes, revision: str = 'main') -> str:
        """Replace one file's bytes in a new commit (for truncated / corrupt file tests)."""
        return self.put_files(repo_id, {path: data}, revision=revision, message=f'corrupt {path}')


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = 'HTTP/1.1'

    def log_message(self, format, *args):  # quiet: tests read HubServer.requests instead
        pass

    # --- helpers -------------------------------------------------------------------------------

    def _authorized(self) -> bool:
        return self.headers.get('Authorization') == f'Bearer {self.hub.token}'

    def _auth_present(self) -> bool:
        return bool(self.headers.get('Authorization'))

    def _body(self) -> bytes:
        length = int(self.headers.get('Content-Length') or 0)
        return self.rfile.read(length) if length else b''

    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
              content_type: str = 'application/json', head: bool = False) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: Optional[Dict[str, str]] = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), headers, head=head)

    def _error(self, status: int, message: str, code: Optional[str] = None, head: bool = False,
               extra: Optional[Dict[str, str]] = None) -> None:
        headers = {'X-Error-Message': message, **(extra or {})}
        if code:
            headers['X-Error-Code'] = code
        self._json(status, {'error': message}, headers, head=head)

    def _unauthorized(self, head: bool = False) -> None:
        self._error(401, 'Invalid credentials in Authorization header', head=head)

    def _may_write(self, repo_id: str) -> bool:
        return repo_id.split('/')[0] in (self.hub.user, *self.hub.orgs)

    def _readable_repo(self, repo_id: str, head: bool = False) -> Optional[_Repo]:
        """The repo, or None after answering 401 / 404 the way the Hub does."""
        if self._auth_present() and not self._authorized():
            self._unauthorized(head)
            return None
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            # the Hub answers 401 + RepoNotFound for both, so private repos cannot be probed
            self._error(401 if not self._authorized() else 404, 'Repository not found', 'RepoNotFound', head)
            return None
        return repo

    # --- routing -------------------------------------------------------------------------------

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        self.hub.requests.append((method, path, self.headers.get('Authorization')))
        self.hub.user_agents.append(self.headers.get('User-Agent'))
        parts = [unquote(p) for p in path.strip('/').split('/')]
        head = method == 'HEAD'
        try:
            if method == 'POST' and parts[:3] == ['api', 'repos', 'create']:
                return self._create_repo()
            if method == 'GET' and parts[:2] == ['api', 'whoami-v2']:
                return self._whoami()
            if method == 'POST' and parts[:2] == ['api', 'validate-yaml']:
                return self._validate_yaml()
            if len(parts) >= 4 and parts[:2] == ['api', 'models']:
                repo_id, rest = '/'.join(parts[2:4]), parts[4:]
                if method == 'GET' and not rest:
                    return self._model_info(repo_id, 'main')
                if method == 'GET' and rest[:1] == ['revision'] and len(rest) >= 2:
                    return self._model_info(repo_id, '/'.join(rest[1:]))
                if method == 'POST' and rest[:1] == ['preupload'] and len(rest) >= 2:
                    return self._preupload(repo_id, '/'.join(rest[1:]))
                if method == 'POST' and rest[:1] == ['commit'] and len(rest) >= 2:
                    return self._commit(repo_id, '/'.join(rest[1:]))
                if method == 'POST' and rest[:1] == ['branch'] and len(rest) >= 2:
                    return self._create_branch(repo_id, '/'.join(rest[1:]))
            if method in ('GET', 'HEAD') and len(parts) >= 5 and parts[2] == 'resolve':
                return self._resolve('/'.join(parts[:2]), parts[3], '/'.join(parts[4:]), head)
            self._error(404, f'stand-in Hub: no route for {method} {path}', head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self._route('GET')

    def do_HEAD(self):
        self._route('HEAD')

    def do_POST(self):
        self._route('POST')

    # --- endpoints -----------------------------------------------------------------------------

    def _whoami(self) -> None:
        if not self._authorized():
            return self._unauthorized()
        self._json(200, {
            'type': 'user', 'name': self.hub.user, 'fullname': self.hub.user,
            'orgs': [{'name': o, 'type': 'org'} for o in self.hub.orgs],
            'auth': {'type': 'access_token', 'accessToken': {'displayName': 'tests', 'role': 'write'}},
        })

    def _validate_yaml(self) -> None:
        """The model card's front matter: YAML mapping, list-valued tags / datasets, string license."""
        import yaml
        content = json.loads(self._body() or b'{}').get('content', '')
        match = re.match(r'^---\n(.*?)\n---\n', content, re.S)
        if not match:
            return self._json(200, {'errors': [], 'warnings': [{'message': 'empty or missing yaml metadata'}]})
        errors = []
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as e:
            meta, errors = None, [{'message': f'invalid YAML: {e}'}]
        if not errors and not isinstance(meta, dict):
            errors.append({'message': 'metadata must be a YAML mapping'})
        elif not errors:
            for key in ('tags', 'datasets'):
                if key in meta and not (isinstance(meta[key], list) and all(isinstance(v, str) for v in meta[key])):
                    errors.append({'message': f'"{key}" must be a list of strings'})
            for key in ('license', 'library_name', 'pipeline_tag'):
                if key in meta and not isinstance(meta[key], str):
                    errors.append({'message': f'"{key}" must be a string'})
        self._json(400 if errors else 200, {'errors': errors, 'warnings': []})

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b'{}')
        if not self._authorized():
            return self._unauthorized()
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        if payload.get('type', 'model') not in (None, 'model'):
            return self._error(400, 'stand-in Hub: only model repos')
        if not self._may_write(repo_id):
            return self._error(403, f'You cannot create a repo in {repo_id.split("/")[0]}')
        with self.hub._lock:
            if repo_id in self.hub.repos:
                # the Hub's 409 body carries the url too; create_repo(exist_ok=True) reads it
                message = 'You already created this model repo'
                return self._json(409, {'error': message, 'url': f'{self.hub.url}/{repo_id}'},
                                  {'X-Error-Message': message})
            private = payload.get('visibility') == 'private' or bool(payload.get('private'))
            repo = self.hub.repos[repo_id] = _Repo(private)
            attributes = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n'
            repo.branches['main'] = repo.commit({'.gitattributes': attributes}, 'initial commit', None)
        self._json(200, {'url': f'{self.hub.url}/{repo_id}', 'name': repo_id, 'id': repo_id})

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo = self._readable_repo(repo_id)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        files = repo.commits[sha]
        self._json(200, {
            'id': repo_id, 'modelId': repo_id, 'sha': sha, 'private': repo.private,
            'siblings': [{'rfilename': p, 'size': len(b)} for p, b in sorted(files.items())],
        })

    def _writable_repo(self, repo_id: str) -> Optional[_Repo]:
        if not self._authorized():
            self._unauthorized()
            return None
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, 'Repository not found', 'RepoNotFound')
            return None
        if not self._may_write(repo_id):
            self._error(403, f'You have no write access to {repo_id}')
            return None
        return repo

    def _preupload(self, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body() or b'{}')
        repo = self._writable_repo(repo_id)
        if repo is None:
            return
        if repo.resolve(revision) is None:
            return self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        self._json(200, {'files': [
            {'path': f['path'], 'uploadMode': 'regular', 'shouldIgnore': False} for f in payload['files']]})

    def _commit(self, repo_id: str, revision: str) -> None:
        body = self._body()
        repo = self._writable_repo(repo_id)
        if repo is None:
            return
        with self.hub._lock:
            parent = repo.resolve(revision)
            if parent is None or revision not in repo.branches:
                return self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
            files = dict(repo.commits[parent])
            message = ''
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item['key'], item['value']
                if key == 'header':
                    message = value.get('summary', '')
                elif key == 'file':
                    if value.get('encoding') != 'base64':
                        return self._error(400, 'stand-in Hub: only base64 file content')
                    files[value['path']] = base64.b64decode(value['content'])
                elif key == 'deletedFile':
                    files.pop(value['path'], None)
                else:
                    return self._error(400, f'stand-in Hub: unsupported commit operation {key!r}')
            sha = repo.commit(files, message, parent)
            repo.branches[revision] = sha
        self._json(200, {'commitUrl': f'{self.hub.url}/{repo_id}/commit/{sha}', 'commitOid': sha,
                         'success': True, 'pullRequestUrl': None})

    def _create_branch(self, repo_id: str, branch: str) -> None:
        payload = json.loads(self._body() or b'{}')
        repo = self._writable_repo(repo_id)
        if repo is None:
            return
        with self.hub._lock:
            if branch in repo.branches:
                return self._error(409, f'Reference already exists: refs/heads/{branch}')
            start = repo.resolve(payload.get('startingPoint') or 'main')
            if start is None:
                return self._error(404, 'Invalid rev id', 'RevisionNotFound')
            repo.branches[branch] = start
        self._json(200, {})

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
        repo = self._readable_repo(repo_id, head)
        if repo is None:
            return
        sha = repo.resolve(revision)
        if sha is None:
            return self._error(404, f'Invalid rev id: {revision}', 'RevisionNotFound', head)
        files = repo.commits[sha]
        if filename not in files:
            return self._error(404, f'Entry not found: {filename}', 'EntryNotFound', head,
                               extra={'X-Repo-Commit': sha})
        data = files[filename]
        headers = {'X-Repo-Commit': sha, 'ETag': f'"{_git_blob_sha(data)}"', 'Accept-Ranges': 'none'}
        self._send(200, data, headers, content_type='application/octet-stream', head=head)
