"""A FAKE of the Kubernetes API: just enough of apps/v1 Deployments for the kill switch.

No real Kubernetes API server can run on this machine, so the kubernetes method is tested
against this fake, which speaks the real wire format the official `kubernetes` client uses
(GET and strategic-merge PATCH of /apis/apps/v1/namespaces/{ns}/deployments/{name}). Ready
replicas follow spec.replicas at once, as if the controller were instant, unless a test sets
them with `add(..., ready=N)` or `set_ready()` (pods that never become ready). The
Authorization header of every request is kept in `authorizations`.

It also fakes core/v1 Secrets for rotate_secret: GET, PATCH (merge of `data`, a null value
removes a key) and PUT (replace) of /api/v1/namespaces/{ns}/secrets/{name}, with a
resourceVersion bumped on every write; a write that carries a stale metadata.resourceVersion
gets 409 Conflict, as from a real API server. `add_secret()` creates one from plain text values,
`secret_data()` reads them back decoded; `fail_writes` makes every Secret write answer 500.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = re.compile(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/?]+)")
SECRET_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/secrets/([^/?]+)")


def _merge(into: dict, patch: dict) -> None:
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


class FakeKubernetes:
    def __init__(self):
        self.deployments: dict[tuple[str, str], dict] = {}
        self.secrets: dict[tuple[str, str], dict] = {}
        self.fail_writes = False
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _find(self):
                m = PATH.match(self.path)
                key = (m.group(1), m.group(2)) if m else None
                return key, fake.deployments.get(key) if key else None

            def _secret(self, method):
                """core/v1 Secrets: GET, PATCH and PUT, with resourceVersion checks."""
                m = SECRET_PATH.match(self.path)
                key = (m.group(1), m.group(2))
                secret = fake.secrets.get(key)
                not_found = {"kind": "Status", "status": "Failure", "reason": "NotFound",
                             "message": "secrets not found", "code": 404}
                if secret is None:
                    return self._reply(404, not_found)
                if method == "GET":
                    return self._reply(200, secret)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if fake.fail_writes:
                    return self._reply(500, {"kind": "Status", "code": 500, "reason": "InternalError"})
                wanted = (body.get("metadata") or {}).get("resourceVersion")
                if wanted is not None and wanted != secret["metadata"]["resourceVersion"]:
                    return self._reply(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
                if method == "PATCH":
                    _merge(secret, body)
                else:
                    body.setdefault("metadata", {}).update(name=key[1], namespace=key[0])
                    secret = fake.secrets[key] = body
                secret["metadata"]["resourceVersion"] = str(fake._next_version())
                self._reply(200, secret)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path))
                fake.authorizations.append(self.headers.get("Authorization"))
                if SECRET_PATH.match(self.path):
                    return self._secret("PUT")
                self._reply(405, {"kind": "Status", "code": 405})

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                fake.authorizations.append(self.headers.get("Authorization"))
                if SECRET_PATH.match(self.path):
                    return self._secret("GET")
                key, dep = self._find()
                if dep is None:
                    return self._reply(404, {"kind": "Status", "status": "Failure", "reason": "NotFound",
                                             "message": "deployments.apps not found", "code": 404})
                self._reply(200, dep)

            def do_PATCH(self):
                fake.requests.append(("PATCH", self.path))
                fake.authorizations.append(self.headers.get("Authorization"))
                if SECRET_PATH.match(self.path):
                    return self._secret("PATCH")
                key, dep = self._find()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if dep is None:
                    return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                _merge(dep, body)
                replicas = dep["spec"].get("replicas", 0)
                dep["status"] = {"replicas": replicas, "readyReplicas": replicas or None,
                                 "availableReplicas": replicas or None}
                self._reply(200, dep)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, name: str, namespace: str = "trading", replicas: int = 3, ready: int | None = None) -> None:
        """A deployment with `replicas` desired and `ready` ready replicas (default: all)."""
        ready = replicas if ready is None else ready
        self.deployments[(namespace, name)] = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "annotations": {}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": name, "image": "engine:1"}]}}},
            "status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready},
        }

    def set_ready(self, name: str, ready: int, namespace: str = "trading") -> None:
        """Set the ready replicas, as the controller would when pods become (un)ready."""
        status = self.deployments[(namespace, name)]["status"]
        status["readyReplicas"] = ready or None
        status["availableReplicas"] = ready or None

    def get(self, name: str, namespace: str = "trading") -> dict:
        return self.deployments[(namespace, name)]

    def _next_version(self) -> int:
        self._version = getattr(self, "_version", 100) + 1
        return self._version

    def add_secret(self, name: str, data: dict[str, str], namespace: str = "trading") -> None:
        """A Secret whose `data` holds the base64 of the given text values."""
        self.secrets[(namespace, name)] = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(self._next_version())},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        }

    def secret_data(self, name: str, namespace: str = "trading") -> dict[str, str]:
        """The Secret's `data`, decoded."""
        data = self.secrets[(namespace, name)].get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    def close(self):
        self.server.shutdown()
        self.server.server_close()
