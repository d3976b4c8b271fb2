"""A FAKE of the Kubernetes API server, for the kill switch, the probes, rotate_secret and the roles.

No real Kubernetes API server can run on this machine, so everything that talks to Kubernetes is
tested against this fake. It speaks the real wire format, over plain http on 127.0.0.1 (a free
port), to the official `kubernetes` client, both its typed APIs (AppsV1Api, CoreV1Api) and the
dynamic client that kubernetes.core's modules (k8s, k8s_scale, k8s_info, k8s_json_patch) use:

- discovery: GET /version, /api, /api/v1, /apis and /apis/<group>/<version>, listing core/v1
  secrets, apps/v1 deployments (with the `scale` subresource) and replicasets, and
  networking.k8s.io/v1 ingresses;
- objects: GET (one, or a list filtered by labelSelector: `k`, `!k`, `k=v`, `k==v`, `k!=v`,
  comma-separated), POST (create), PUT (replace), PATCH, and the deployment's /scale (GET, PATCH,
  PUT). A write whose body carries a stale metadata.resourceVersion gets 409 Conflict. A write
  with `?dryRun=All` (kubernetes.core's check mode) is validated and answered but changes nothing;
- PATCH content types: application/merge-patch+json (RFC 7386), application/json-patch+json
  (RFC 6902: add, remove, replace, test) and application/strategic-merge-patch+json, which this
  fake treats as a merge patch. That is exact for what the roles patch (maps such as pod template
  annotations, scalars such as spec.replicas, and Ingress spec.rules, a list without a merge key,
  which a real server replaces too); it is NOT exact for lists with a patchMergeKey (containers,
  ports...), which a real server merges item by item and this fake replaces;
- validation, as the real API server answers it (422 Invalid): an Ingress needs `rules` or a
  `defaultBackend` (upstream ValidateIngressSpec), and each of its backends exactly one of
  `service` and `resource`, a service backend a port `name` or `number`, not both; a Deployment's
  template labels must match its selector;
- omitempty: empty Ingress `spec.rules` and zero status counters are left out of what it stores
  and answers, as a real server does;
- a deployment controller that is instant: every accepted Deployment write bumps
  metadata.generation when the spec changes, keeps one ReplicaSet per pod template (owned by the
  deployment, labelled with its pod-template-hash) and its `deployment.kubernetes.io/revision`
  annotation (a template seen before gets its old ReplicaSet back with the next revision, as
  `kubectl rollout undo` does), and sets the status: every replica ready and available at once,
  unless a container image is in `unready_images` (its pods never become ready), or a test sets
  the ready replicas with `add(..., ready=N)` or `set_ready()` (until the next write).

Every request is kept in `requests` (method, path with query) and its Authorization header in
`authorizations`. With `token` set, a request without `Authorization: Bearer <token>` gets 401.
`fail_writes` makes every write answer 500. `write_kubeconfig()` writes a kubeconfig that points
at the fake.

core/v1 Secrets (rotate_secret): `add_secret()` creates one from plain text values,
`secret_data()` reads them back decoded; PATCH merges `data` (a null value removes a key) and
PUT replaces; the resourceVersion changes on every write that changes the Secret.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
import uuid
from urllib.parse import parse_qs, urlsplit

from tests.helpers.http import JsonHandler, LocalServer

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"

# plural -> (group/version, kind, singular, short names, subresources)
RESOURCES = {
    "secrets": ("v1", "Secret", "secret", [], {}),
    "services": ("v1", "Service", "service", ["svc"], {}),
    "deployments": ("apps/v1", "Deployment", "deployment", ["deploy"],
                    {"scale": ("autoscaling", "v1", "Scale", ["get", "patch", "update"])}),
    "replicasets": ("apps/v1", "ReplicaSet", "replicaset", ["rs"], {}),
    "ingresses": ("networking.k8s.io/v1", "Ingress", "ingress", ["ing"], {}),
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _merge(into: dict, patch: dict) -> None:
    """RFC 7386 JSON merge patch, in place: maps merge, null removes a key, lists are replaced."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(into.get(key), dict):
                into[key] = {}  # RFC 7386: merged into an empty object, so its nulls are dropped too
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


class PatchError(Exception):
    pass


def _json_patch(doc: dict, ops: list) -> dict:
    """RFC 6902 JSON patch: add, remove, replace and test."""
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise PatchError("a JSON patch is a list of operations")
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op.get("path", "").split("/")[1:]]
        if not parts:
            raise PatchError(f"cannot {op.get('op')} the whole document")
        parent = doc
        try:
            for part in parts[:-1]:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        except (KeyError, IndexError, ValueError) as err:
            raise PatchError(f"path {op.get('path')}: missing {err}") from err
        last, kind = parts[-1], op.get("op")
        if kind in ("add", "replace"):
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, list):
                if last == "-" and kind == "add":
                    parent.append(value)
                elif kind == "add":
                    parent.insert(int(last), value)
                else:
                    parent[int(last)] = value
            else:
                if kind == "replace" and last not in parent:
                    raise PatchError(f"replace {op['path']}: no such key")
                parent[last] = value
        elif kind == "remove":
            try:
                del parent[int(last) if isinstance(parent, list) else last]
            except (KeyError, IndexError) as err:
                raise PatchError(f"remove {op['path']}: {err}") from err
        elif kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise PatchError(f"test {op['path']} failed")
        else:
            raise PatchError(f"unsupported JSON patch operation {kind!r}")
    return doc


def _selector_matches(selector: str, labels: dict) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _template_hash(template: dict) -> str:
    template = copy.deepcopy(template)
    (template.get("metadata") or {}).get("labels", {}).pop(HASH_LABEL, None)
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


class FakeKubernetes:
    def __init__(self, token: str | None = None):
        self.objects: dict[str, dict[tuple[str, str], dict]] = {plural: {} for plural in RESOURCES}
        self.deployments = self.objects["deployments"]
        self.secrets = self.objects["secrets"]
        self.ingresses = self.objects["ingresses"]
        self.replicasets = self.objects["replicasets"]
        self.unready_images: set[str] = set()
        self.token = token
        self.fail_writes = False
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[str | None] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(JsonHandler):
            def _handle(self, method):
                fake.requests.append((method, self.path))
                auth = self.headers.get("Authorization")
                fake.authorizations.append(auth)
                raw = self.read_body()
                try:
                    if fake.token is not None and auth != "Bearer " + fake.token:
                        raise ApiError(401, "Unauthorized", "Unauthorized")
                    body = json.loads(raw) if raw else None
                    with fake.lock:
                        code, reply = fake._serve(method, self.path, body, self.headers.get("Content-Type") or "")
                except ApiError as err:
                    code, reply = err.code, err.status()
                except PatchError as err:
                    code, reply = 422, ApiError(422, "Invalid", str(err)).status()
                except ValueError as err:  # a body that is not JSON
                    code, reply = 400, ApiError(400, "BadRequest", str(err)).status()
                self.reply(code, reply)

            def do_GET(self):
                self._handle("GET")

            def do_PATCH(self):
                self._handle("PATCH")

            def do_PUT(self):
                self._handle("PUT")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = LocalServer(Handler)
        self.port = self.server.port
        self.url = self.server.url

    # ------------------------------------------------------------------------------ discovery
    @staticmethod
    def _discovery(group_version: str) -> dict:
        resources = []
        for plural, (gv, kind, singular, short, subresources) in RESOURCES.items():
            if gv != group_version:
                continue
            resources.append({"name": plural, "singularName": singular, "namespaced": True, "kind": kind,
                              "verbs": VERBS, "shortNames": short})
            for sub, (group, version, sub_kind, verbs) in subresources.items():
                resources.append({"name": f"{plural}/{sub}", "singularName": "", "namespaced": True,
                                  "group": group, "version": version, "kind": sub_kind, "verbs": verbs})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
                "resources": resources}

    @staticmethod
    def _groups() -> dict:
        groups = []
        for gv in sorted({gv for gv, *_ in RESOURCES.values() if "/" in gv}):
            group, version = gv.split("/")
            entry = {"groupVersion": gv, "version": version}
            groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    # ------------------------------------------------------------------------------- routing
    def _serve(self, method: str, raw_path: str, body, content_type: str):
        url = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if method == "GET":
            if parts == ["version"]:
                return 200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-tradeops-fake",
                             "platform": "linux/amd64"}
            if parts == ["api"]:
                return 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
            if parts == ["apis"]:
                return 200, self._groups()
            if parts == ["api", "v1"]:
                return 200, self._discovery("v1")
            if len(parts) == 3 and parts[0] == "apis":
                if not any(gv == f"{parts[1]}/{parts[2]}" for gv, *_ in RESOURCES.values()):
                    raise ApiError(404, "NotFound", "the server could not find the requested resource")
                return 200, self._discovery(f"{parts[1]}/{parts[2]}")
        if parts[:1] == ["api"] and len(parts) >= 2:
            gv, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            gv, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        plural, name, sub = (rest + [None, None, None])[:3]
        if plural not in RESOURCES or RESOURCES[plural][0] != gv or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        dry_run = query.get("dryRun") == "All"
        if name is None:
            if method == "GET":
                return 200, self._list(plural, namespace, query.get("labelSelector", ""))
            if method == "POST":
                return 201, self._create(plural, namespace, body, dry_run)
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if sub is not None:
            if plural != "deployments" or sub != "scale":
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return 200, self._scale(method, namespace, name, body, content_type, dry_run)
        key = (namespace, name)
        current = self.objects[plural].get(key)
        if current is None:
            group = gv.split("/")[0] if "/" in gv else ""
            what = f"{plural}.{group}" if group else plural
            raise ApiError(404, "NotFound", f'{what} "{name}" not found')
        if method == "GET":
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            if not dry_run:
                del self.objects[plural][key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
        if method not in ("PATCH", "PUT"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self._check_write(current, body)
        if method == "PUT":
            new = copy.deepcopy(body)
            new.setdefault("metadata", {}).update(name=name, namespace=namespace)
        elif "json-patch" in content_type:
            new = _json_patch(current, body)
        elif "apply-patch" in content_type:
            raise ApiError(415, "UnsupportedMediaType", "server-side apply is not served by this fake")
        else:  # merge-patch, and strategic-merge-patch treated as a merge (see the module docstring)
            new = copy.deepcopy(current)
            _merge(new, body or {})
        return 200, self._store(plural, key, current, new, dry_run)

    # ------------------------------------------------------------------------------- objects
    def _check_write(self, current, body):
        if self.fail_writes:
            raise ApiError(500, "InternalError", "an error on the server (fake: fail_writes)")
        wanted = ((body or {}).get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if current is not None and wanted is not None and wanted != current["metadata"].get("resourceVersion"):
            raise ApiError(409, "Conflict", "Operation cannot be fulfilled: the object has been modified; "
                                            "please apply your changes to the latest version and try again")

    def _list(self, plural: str, namespace: str | None, selector: str) -> dict:
        gv, kind = RESOURCES[plural][:2]
        items = []
        for (ns, _), obj in sorted(self.objects[plural].items()):
            if namespace is not None and ns != namespace:
                continue
            if not _selector_matches(selector, (obj.get("metadata") or {}).get("labels") or {}):
                continue
            item = copy.deepcopy(obj)
            item.pop("kind", None)  # as from a real server: the client fills kind/apiVersion in
            item.pop("apiVersion", None)
            items.append(item)
        return {"kind": f"{kind}List", "apiVersion": gv,
                "metadata": {"resourceVersion": str(getattr(self, "_version", 100))}, "items": items}

    def _create(self, plural: str, namespace: str | None, body: dict, dry_run: bool) -> dict:
        self._check_write(None, None)
        name = ((body or {}).get("metadata") or {}).get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (namespace or body["metadata"].get("namespace") or "default", name)
        if key in self.objects[plural]:
            raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
        new = copy.deepcopy(body)
        new["metadata"].update(name=key[1], namespace=key[0])
        return self._store(plural, key, None, new, dry_run)

    def _validate(self, plural: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        if plural == "ingresses" and not spec.get("rules") and not spec.get("defaultBackend"):
            raise ApiError(422, "Invalid", f'Ingress.networking.k8s.io "{name}" is invalid: spec: Invalid value: '
                                           '[]networking.IngressRule(nil): either `defaultBackend` or `rules` must '
                                           'be specified')
        if plural == "ingresses":
            backends = [("spec.defaultBackend", spec.get("defaultBackend"))] + [
                (f"spec.rules[{i}].http.paths[{j}].backend", path.get("backend"))
                for i, rule in enumerate(spec.get("rules") or [])
                for j, path in enumerate((rule.get("http") or {}).get("paths") or [])]
            for where, backend in backends:
                if backend is None:
                    continue
                if bool(backend.get("service")) == bool(backend.get("resource")):
                    raise ApiError(422, "Invalid", f'Ingress.networking.k8s.io "{name}" is invalid: {where}: Invalid '
                                                   'value: "": cannot set both resource and service backends'
                                   if backend.get("service") else
                                   f'Ingress.networking.k8s.io "{name}" is invalid: {where}: Invalid value: "": '
                                   'resource or service backend is required')
                port = (backend.get("service") or {}).get("port") or {}
                if backend.get("service") and ("name" in port) == ("number" in port):
                    raise ApiError(422, "Invalid", f'Ingress.networking.k8s.io "{name}" is invalid: '
                                                   f'{where}.service.port: Invalid value: "": '
                                                   'cannot set both port name & port number'
                                   if port else
                                   f'Ingress.networking.k8s.io "{name}" is invalid: {where}.service.port: '
                                   'Required value: port name or number is required')
        if plural == "deployments":
            selector = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
            if any(labels.get(k) != v for k, v in selector.items()):
                raise ApiError(422, "Invalid", f'Deployment.apps "{name}" is invalid: spec.template.metadata.labels: '
                                               f'Invalid value: {labels}: `selector` does not match template `labels`')

    def _store(self, plural: str, key, current: dict | None, new: dict, dry_run: bool) -> dict:
        gv, kind = RESOURCES[plural][:2]
        new["apiVersion"], new["kind"] = gv, kind
        meta = new.setdefault("metadata", {})
        if current is not None:  # what a client cannot change
            for field in ("uid", "creationTimestamp", "resourceVersion", "generation"):
                if field in current["metadata"]:
                    meta[field] = current["metadata"][field]
                else:
                    meta.pop(field, None)
            if plural == "deployments":  # status is the controller's, written through /status only
                new["status"] = copy.deepcopy(current.get("status") or {})
        else:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", "2024-01-01T00:00:00Z")
        if plural == "ingresses" and "spec" in new and not new["spec"].get("rules"):
            new["spec"].pop("rules", None)  # omitempty
        if not meta.get("annotations") and "annotations" in meta and plural != "deployments":
            meta.pop("annotations")  # omitempty (deployments always carry their revision annotation)
        self._validate(plural, new)
        if plural == "deployments" and (current is None or current.get("spec") != new.get("spec")):
            meta["generation"] = (meta.get("generation") or 0) + 1
        if dry_run:
            return copy.deepcopy(new)
        if plural == "deployments":
            self._reconcile(new)
        if current is None or new != current:
            meta["resourceVersion"] = str(self._next_version())
        self.objects[plural][key] = new
        return copy.deepcopy(new)

    # ---------------------------------------------------------------- the deployment controller
    def _owned_replicasets(self, dep: dict) -> list[dict]:
        uid = dep["metadata"]["uid"]
        return sorted((rs for (ns, _), rs in self.replicasets.items()
                       if ns == dep["metadata"]["namespace"]
                       and any(o.get("uid") == uid for o in rs["metadata"].get("ownerReferences", []))),
                      key=lambda rs: int(rs["metadata"]["annotations"][REVISION]))

    def _reconcile(self, dep: dict) -> None:
        """What the deployment controller does, at once: ReplicaSets, revision, status."""
        meta, spec = dep["metadata"], dep["spec"]
        namespace, name = meta["namespace"], meta["name"]
        owned = self._owned_replicasets(dep)
        newest = max([int(rs["metadata"]["annotations"][REVISION]) for rs in owned] or [0])
        template_hash = _template_hash(spec["template"])
        current = next((rs for rs in owned if rs["metadata"]["labels"][HASH_LABEL] == template_hash), None)
        if current is None:
            template = copy.deepcopy(spec["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = template_hash
            current = {
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": f"{name}-{template_hash}", "namespace": namespace, "uid": str(uuid.uuid4()),
                             "labels": dict(template["metadata"]["labels"]),
                             "annotations": {REVISION: str(newest + 1)},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                                  "uid": meta["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]},
                "spec": {"selector": {"matchLabels": dict(spec["selector"]["matchLabels"],
                                                          **{HASH_LABEL: template_hash})},
                         "template": template},
            }
            self.replicasets[(namespace, current["metadata"]["name"])] = current
        elif int(current["metadata"]["annotations"][REVISION]) != newest:
            current["metadata"]["annotations"][REVISION] = str(newest + 1)  # an old template comes back
        replicas = spec.get("replicas", 1)
        for rs in self._owned_replicasets(dep):
            wanted = replicas if rs is current else 0
            if rs["spec"].get("replicas") != wanted or "resourceVersion" not in rs["metadata"]:
                rs["spec"]["replicas"] = wanted
                rs["metadata"]["resourceVersion"] = str(self._next_version())
        meta.setdefault("annotations", {})[REVISION] = current["metadata"]["annotations"][REVISION]
        images = {c.get("image") for c in (spec["template"].get("spec") or {}).get("containers", [])}
        ready = 0 if images & self.unready_images else replicas
        status = {"observedGeneration": meta.get("generation", 1), "replicas": replicas,
                  "updatedReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                  "unavailableReplicas": replicas - ready}
        dep["status"] = {k: v for k, v in status.items() if v}  # omitempty: zero counters are left out

    def _scale(self, method, namespace, name, body, content_type, dry_run) -> dict:
        key = (namespace, name)
        dep = self.deployments.get(key)
        if dep is None:
            raise ApiError(404, "NotFound", f'deployments.apps "{name}" not found')

        def scale_of(d):
            selector = ",".join(f"{k}={v}" for k, v in sorted(d["spec"]["selector"]["matchLabels"].items()))
            return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                    "metadata": {k: d["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")
                                 if k in d["metadata"]},
                    "spec": {"replicas": d["spec"].get("replicas", 1)},
                    "status": {"replicas": (d.get("status") or {}).get("replicas", 0), "selector": selector}}

        scale = scale_of(dep)
        if method == "GET":
            return scale
        if method not in ("PATCH", "PUT"):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self._check_write(dep, body)
        if method == "PUT" or "json-patch" not in content_type:
            replicas = ((body or {}).get("spec") or {}).get("replicas", scale["spec"]["replicas"])
        else:
            replicas = _json_patch(scale, body)["spec"]["replicas"]
        new = copy.deepcopy(dep)
        new["spec"]["replicas"] = replicas
        return scale_of(self._store("deployments", key, dep, new, dry_run))

    # ------------------------------------------------------------------------- test helpers
    def add(self, name: str, namespace: str = "trading", replicas: int = 3, ready: int | None = None,
            image: str = "engine:1", labels: dict | None = None) -> None:
        """A deployment with `replicas` desired and `ready` ready replicas (default: all), at revision 1."""
        labels = labels or {"app": name}
        dep = {
            "metadata": {"name": name, "namespace": namespace, "annotations": {}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)},
                                  "spec": {"containers": [{"name": name, "image": image}]}}},
        }
        with self.lock:
            self._store("deployments", (namespace, name), None, dep, False)
        if ready is not None and ready != replicas:
            self.set_ready(name, ready, namespace)

    def rollout(self, name: str, image: str, namespace: str = "trading") -> None:
        """A new revision with another image, as `kubectl set image` makes one."""
        with self.lock:
            dep = self.deployments[(namespace, name)]
            new = copy.deepcopy(dep)
            for container in new["spec"]["template"]["spec"]["containers"]:
                container["image"] = image
            self._store("deployments", (namespace, name), dep, new, False)

    def set_ready(self, name: str, ready: int, namespace: str = "trading") -> None:
        """Set the ready replicas, as the controller would when pods become (un)ready."""
        dep = self.deployments[(namespace, name)]
        status = dep["status"]
        status["readyReplicas"] = ready or None
        status["availableReplicas"] = ready or None
        unavailable = (dep["spec"].get("replicas") or 0) - ready
        if unavailable > 0:
            status["unavailableReplicas"] = unavailable
        else:
            status.pop("unavailableReplicas", None)

    def get(self, name: str, namespace: str = "trading") -> dict:
        return self.deployments[(namespace, name)]

    def replicasets_of(self, name: str, namespace: str = "trading") -> list[dict]:
        """The deployment's ReplicaSets, oldest revision first."""
        return self._owned_replicasets(self.deployments[(namespace, name)])

    def add_ingress(self, name: str, namespace: str = "trading", rules: list | None = None,
                    default_backend: dict | None = None, annotations: dict | None = None) -> None:
        spec = {"ingressClassName": "nginx"}
        if rules is not None:
            spec["rules"] = copy.deepcopy(rules)
        if default_backend is not None:
            spec["defaultBackend"] = copy.deepcopy(default_backend)
        body = {"metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {})},
                "spec": spec}
        with self.lock:
            self._store("ingresses", (namespace, name), None, body, False)

    def add_service(self, name: str, namespace: str = "trading", port: int = 80) -> None:
        body = {"metadata": {"name": name, "namespace": namespace},
                "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": port}]}}
        with self.lock:
            self._store("services", (namespace, name), None, body, False)

    def ingress(self, name: str, namespace: str = "trading") -> dict:
        return self.ingresses[(namespace, name)]

    def writes(self) -> list[tuple[str, str]]:
        """Every request that could change something (dry runs included)."""
        return [r for r in self.requests if r[0] in ("PATCH", "PUT", "POST", "DELETE")]

    def write_kubeconfig(self, path, token: str | None = None, namespace: str = "default") -> str:
        """A kubeconfig (JSON is YAML) pointing at the fake, plain http, with a bearer token."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": token or self.token or "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        with open(path, "w") as fh:
            json.dump(config, fh, indent=2)
        return str(path)

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
        self.server.close()
