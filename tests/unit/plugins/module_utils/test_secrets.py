"""Unit tests of _secrets: the stores, atomic writes, backups and the staged rotation.

What is real and what is faked:
- env_file, json and yaml stores: real files in a temp dir (mode and owner checked with os.stat).
- the consumer: a real local HTTP server (`Consumer`) that accepts a configurable set of tokens,
  either fixed by the test or re-read from the store on every request, as a real consumer would.
- kubernetes: a FAKE of the Kubernetes API (k8s_fake.py, core/v1 Secrets), because no real API
  server can run here.
- vault_kv2: a FAKE of Vault's KV v2 HTTP API (`FakeVault`, below), served on 127.0.0.1 and driven
  through the real hvac client, because no Vault dev server can be installed here (`vault` is not
  in the Debian archive, and no PyPI package ships the binary).
"""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
import yaml
from ansible_collections.tradeops.remediation.plugins.module_utils import _secrets
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import (
    EnvFileStore,
    RotationFailed,
    RotationService,
    build_store,
    one_off_fingerprinter,
)

from tests.helpers.http import JsonHandler, LocalServer
from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes

# stores built without a fingerprinter use this process's one-off key
fingerprint = one_off_fingerprinter()

CANARY = "CANARY-old-secret-7f3e9a1d2c"


class _Server:
    def _serve(self, handler):
        self.server = LocalServer(handler)
        self.url = self.server.url

    def close(self):
        self.server.close()


class Consumer(_Server):
    """A service that authenticates GET /whoami with X-Admin-Token: 200 if accepted, else 401.

    `source()` gives the accepted tokens on every request: a fixed set (`accept(...)`) or the
    store itself (`read_env(path, key)`), as a consumer that re-reads its secrets file would.
    POST /revoke {"token": ...} adds a token to `revoked`, which are refused from then on.
    """

    def __init__(self):
        self.source = set
        self.revoked = set()
        self.calls = []
        consumer = self

        class Handler(JsonHandler):
            def do_GET(self):
                token = self.headers.get("X-Admin-Token")
                consumer.calls.append(("GET", token))
                ok = token in consumer.source() and token not in consumer.revoked
                self.reply(200 if ok else 401, {"ok": ok})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                auth = self.headers.get("X-Admin-Token")
                consumer.calls.append(("POST", auth))
                if auth not in consumer.source():
                    return self.reply(401, {"ok": False})
                consumer.revoked.add(body.get("token"))
                self.reply(200, {"revoked": True})

        self._serve(Handler)

    def accept(self, *tokens):
        self.source = lambda: set(tokens)

    def read_env(self, path, key):
        """Accept KEY, KEY_PREVIOUS and KEY_PENDING, read from the env file on every request."""

        def tokens():
            values = set()
            with open(path) as fh:
                for line in fh:
                    m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line.rstrip("\n"))
                    if m and m.group(1) in (key, key + "_PREVIOUS", key + "_PENDING"):
                        values.add(m.group(2).strip("'\""))
            return values

        self.source = tokens

    def works(self, token):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + "/whoami", headers={"X-Admin-Token": token})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False


class FakeVault(_Server):
    """A FAKE of HashiCorp Vault's KV v2 HTTP API, enough for hvac's kv.v2 calls.

    GET/POST /v1/<mount>/data/<path> (versions, check-and-set) and DELETE /v1/<mount>/metadata/<path>.
    Requests without X-Vault-Token == `token` get 403. `fail_writes` makes writes answer 500.
    """

    def __init__(self, token="root-token", mount="secret"):
        self.token = token
        self.mount = mount
        self.versions: dict[str, list[dict]] = {}
        self.fail_writes = False
        vault = self

        class Handler(JsonHandler):
            def _route(self):
                m = re.match(r"^/v1/([^/]+)/(data|metadata)/([^?]+)", self.path)
                if not m or m.group(1) != vault.mount:
                    self.reply(404, {"errors": ["no handler for route"]})
                    return None
                if self.headers.get("X-Vault-Token") != vault.token:
                    self.reply(403, {"errors": ["permission denied"]})
                    return None
                return m.group(2), m.group(3)

            def do_GET(self):
                route = self._route()
                if route is None:
                    return
                versions = vault.versions.get(route[1])
                if not versions:
                    return self.reply(404, {"errors": []})
                meta = {"version": len(versions), "created_time": "2025-01-01T00:00:00Z", "deletion_time": "",
                        "destroyed": False, "custom_metadata": None}
                self.reply(200, {"data": {"data": versions[-1], "metadata": meta}})

            def do_POST(self):
                route = self._route()
                if route is None:
                    return
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if vault.fail_writes:
                    return self.reply(500, {"errors": ["internal error"]})
                versions = vault.versions.setdefault(route[1], [])
                cas = (body.get("options") or {}).get("cas")
                if cas is not None and cas != len(versions):
                    return self.reply(400, {"errors": ["check-and-set parameter did not match the current "
                                                         "version"]})
                versions.append(dict(body["data"]))
                self.reply(200, {"data": {"version": len(versions), "created_time": "2025-01-01T00:00:00Z",
                                            "deletion_time": "", "destroyed": False}})

            do_PUT = do_POST

            def do_DELETE(self):
                route = self._route()
                if route is None:
                    return
                vault.versions.pop(route[1], None)
                self.reply(204)

        self._serve(Handler)

    def current(self, path):
        return self.versions[path][-1]


@pytest.fixture
def consumer():
    c = Consumer()
    yield c
    c.close()


@pytest.fixture
def vault():
    v = FakeVault()
    yield v
    v.close()


@pytest.fixture
def k8s():
    """FAKE Kubernetes API (no real API server can run here): see k8s_fake.py."""
    fake = FakeKubernetes()
    yield fake
    fake.close()


def env_file(tmp_path, text, mode=0o640):
    path = tmp_path / "engine.env"
    path.write_text(text)
    os.chmod(path, mode)
    return path


# ---------------------------------------------------------------------------- helpers


def test_fingerprints_are_keyed_with_the_installations_key_file(tmp_path):
    import hashlib

    key_path = tmp_path / "state" / "fingerprint.key"
    # check mode (create=False): no key yet, a one-off key, and nothing written
    one_off = _secrets.Fingerprinter.from_file(str(key_path), create=False)
    assert one_off.key_id == "one-off" and not key_path.parent.exists()
    first = _secrets.Fingerprinter.from_file(str(key_path))
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    again = _secrets.Fingerprinter.from_file(str(key_path))  # another run of the same installation
    other = _secrets.Fingerprinter.from_file(str(tmp_path / "other.key"))
    assert first("abc") == again("abc") and first.key_id == again.key_id
    assert re.match(r"^[0-9a-f]{12}$", first("abc")) and first("abc") != first("abd")
    assert first("abc") != hashlib.sha256(b"abc").hexdigest()[:12] != other("abc")
    assert first("abc") != other("abc") and first.key_id != other.key_id
    assert key_path.read_text().strip() not in repr(first) and first(None) is None
    assert _secrets.Fingerprinter.from_file(str(key_path), create=False).key_id == first.key_id


def test_generate_uses_the_alphabet():
    assert fingerprint(None) is None
    for alphabet, pattern in (("hex", r"^[0-9a-f]{40}$"), ("alnum", r"^[A-Za-z0-9]{40}$"),
                              ("urlsafe", r"^[A-Za-z0-9_-]{40}$")):
        assert re.match(pattern, _secrets.generate(40, alphabet))
    assert _secrets.generate(32) != _secrets.generate(32)
    with pytest.raises(ValidationError, match="length"):
        _secrets.generate(8)
    with pytest.raises(ValidationError, match="alphabet"):
        _secrets.generate(32, "base64")


def test_default_previous_key_and_redact():
    assert _secrets.default_previous_key("ADMIN_TOKEN") == "ADMIN_TOKEN_PREVIOUS"
    assert _secrets.default_previous_key("engine.admin_token") == "engine.admin_token_previous"
    assert _secrets.redact({"a": ["x SECRET y"], "b": 1}, ["SECRET"]) == {"a": ["x ******** y"], "b": 1}


def test_backup_is_0600_and_atomic_write_keeps_mode_and_owner(tmp_path):
    path = env_file(tmp_path, "A=1\n", mode=0o644)
    os.umask(0o022)
    backup = _secrets.backup_file(str(path), b"A=1\n")
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600 and open(backup).read() == "A=1\n"
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        owner = (4321, 4321)
        os.chown(path, *owner)
    st = os.stat(path)
    _secrets.atomic_write(str(path), b"A=2\n", 0o640, st.st_uid, st.st_gid)
    st2 = os.stat(path)
    assert path.read_text() == "A=2\n" and stat.S_IMODE(st2.st_mode) == 0o640
    assert (st2.st_uid, st2.st_gid) == owner and st2.st_ino != st.st_ino  # a new inode: renamed over
    assert [p.name for p in tmp_path.iterdir() if ".tradeops-" in p.name] == []  # no temp left behind


# ---------------------------------------------------------------------------- env file


def test_env_file_keeps_other_lines_comments_order_and_quotes(tmp_path):
    text = "# engine secrets\nexport DB_URL=postgres://x\nADMIN_TOKEN='old value'\n\nOTHER=1 # not a comment\nLAST=z"
    path = env_file(tmp_path, text)
    store = EnvFileStore({"path": str(path), "key": "ADMIN_TOKEN"}, backup=False)
    snap = store.read(None)
    assert (snap.current, snap.previous) == ("old value", None)
    store.write(snap, {"current": "n3w-Token_x", "previous": "old value"}, None)
    assert path.read_text() == ("# engine secrets\nexport DB_URL=postgres://x\nADMIN_TOKEN=n3w-Token_x\n"
                                "ADMIN_TOKEN_PREVIOUS='old value'\n\nOTHER=1 # not a comment\nLAST=z\n")
    snap = store.read(None)
    assert (snap.current, snap.previous) == ("n3w-Token_x", "old value")
    store.write(snap, {"current": "n3w-Token_x", "previous": None}, None)
    assert "ADMIN_TOKEN_PREVIOUS" not in path.read_text()
    # a missing key is appended; a duplicated key is refused, naming the key, never the values
    path.write_text("A=1\nA=2\n")
    with pytest.raises(ValidationError, match="sets A 2 times"):
        EnvFileStore({"path": str(path), "key": "A"}).read(None)
    path.write_text("B=1")
    store = EnvFileStore({"path": str(path), "key": "A"}, backup=False)
    store.write(store.read(None), {"current": "x" * 20, "previous": None}, None)
    assert path.read_text() == "B=1\nA=" + "x" * 20 + "\n"


# ---------------------------------------------------------------------------- the rotation


def rotate(store, consumer=None, **kw):
    test = kw.pop("test", None)
    if consumer is not None and test is None:
        test = {"url": consumer.url + "/whoami", "timeout": 1.0, "interval": 0.05}
    return RotationService(store, test=test, **kw).run()


@pytest.mark.parametrize("kind", ["json", "yaml"])
def test_json_and_yaml_rotate_at_a_dotted_path(tmp_path, kind, consumer):
    doc = {"engine": {"name": "e1", "admin_token": CANARY}, "z": [1, 2]}
    path = tmp_path / f"secrets.{kind}"
    path.write_text(json.dumps(doc, indent=4) if kind == "json" else yaml.safe_dump(doc, sort_keys=False))
    os.chmod(path, 0o604)
    before = path.read_bytes()
    store = build_store({"type": kind, "path": str(path), "key": "engine.admin_token"})
    # the consumer re-reads the document and accepts current and previous
    consumer.source = lambda: {v for k, v in _load(path, kind)["engine"].items() if k.startswith("admin_token")}
    result = rotate(store, consumer, generate={"length": 24, "alphabet": "hex"})
    after = _load(path, kind)
    new = after["engine"]["admin_token"]
    assert re.match(r"^[0-9a-f]{24}$", new) and after["engine"]["admin_token_previous"] == CANARY
    assert list(after) == ["engine", "z"] and after["z"] == [1, 2] and after["engine"]["name"] == "e1"
    if kind == "json":
        assert path.read_text().startswith('{\n    "engine"')  # indentation kept
    assert result["stage"] == "finished" and result["fingerprint"] == fingerprint(new)
    assert result["previous_fingerprint"] == fingerprint(CANARY)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it was 0604: a secret file ends 0600
    backup = result["backup_files"][0]  # one before the set, one before the finish
    assert len(result["backup_files"]) == 2
    assert open(backup, "rb").read() == before and stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert CANARY not in json.dumps(result) and new not in json.dumps(result)


def _load(path, kind):
    return json.loads(path.read_text()) if kind == "json" else yaml.safe_load(path.read_text())


def test_a_broken_document_never_quotes_its_content(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(f"engine:\n  admin_token: {CANARY}: [\n")
    with pytest.raises(ValidationError) as err:
        build_store({"type": "yaml", "path": str(path), "key": "engine.admin_token"}).read(None)
    assert "not valid YAML (line" in str(err.value) and CANARY not in str(err.value)
    path = tmp_path / "s.json"
    path.write_text('{"admin_token": "' + CANARY + '",,}')
    with pytest.raises(ValidationError) as err:
        build_store({"type": "json", "path": str(path), "key": "admin_token"}).read(None)
    assert "not valid JSON" in str(err.value) and CANARY not in str(err.value)


def test_failed_test_rolls_the_file_back_byte_identical(tmp_path, consumer):
    path = env_file(tmp_path, f"# c\nADMIN_TOKEN={CANARY}\nX=1\n", mode=0o600)
    before = path.read_bytes()
    consumer.accept(CANARY)  # a consumer that never picks up the new value
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    with pytest.raises(RotationFailed) as err:
        rotate(store, consumer)
    assert path.read_bytes() == before and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert consumer.works(CANARY)
    result = err.value.result
    assert result["rolled_back"] is True and result["stage"] == "rolled_back"
    assert result["fingerprint"] == fingerprint(CANARY)
    assert [s["step"] for s in result["steps"]] == ["create", "set", "test", "rollback"]
    assert "Rolled back" in str(err.value) and "accepts the previous value again" in str(err.value)
    assert CANARY not in str(err.value) + json.dumps(result)


def test_revoke_removes_the_previous_value_and_the_old_token_is_refused(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    consumer.read_env(str(path), "ADMIN_TOKEN")
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    result = rotate(store, consumer, revoke_previous=True, revoke={"url": consumer.url + "/revoke"})
    assert result["stage"] == "revoked" and result["revoked_fingerprint"] == fingerprint(CANARY)
    assert result["previous_fingerprint"] is None and len(result["backup_files"]) == 3
    new = re.search(r"^ADMIN_TOKEN=(.*)$", path.read_text(), re.M).group(1)
    assert path.read_text() == f"ADMIN_TOKEN={new}\n"
    assert consumer.works(new) and not consumer.works(CANARY) and consumer.revoked == {CANARY}
    assert [s["step"] for s in result["steps"]] == ["create", "set", "test", "finish", "revoke", "retest"]


def test_old_token_still_accepted_after_revoke_fails_but_keeps_the_new_one(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    # a server that never drops the old token: it accepts the old one and whatever the file holds now
    consumer.source = lambda: {CANARY, *re.findall(r"^ADMIN_TOKEN(?:_PENDING)?=(.*)$", path.read_text(), re.M)}
    with pytest.raises(RotationFailed, match="still accepted") as err:
        rotate(store, consumer, revoke_previous=True)
    new = re.search(r"^ADMIN_TOKEN=(.*)$", path.read_text(), re.M).group(1)
    assert new != CANARY and consumer.works(new)
    assert CANARY not in str(err.value) + json.dumps(err.value.result)


def test_validation_happens_before_anything_is_read(tmp_path):
    store = build_store({"type": "env_file", "path": str(tmp_path / "missing.env"), "key": "K"})
    with pytest.raises(ValidationError, match="old_must_fail needs revoke_previous"):
        RotationService(store, test={"url": "http://127.0.0.1:1/", "old_must_fail": True})
    with pytest.raises(ValidationError, match="does not exist"):
        RotationService(store).run()


# ---------------------------------------------------------------------------- kubernetes (FAKE API)


def test_kubernetes_secret_rotate_and_rollback(k8s, consumer):
    """Against the FAKE Kubernetes API of k8s_fake.py (core/v1 Secrets GET/PATCH/PUT)."""
    k8s.add_secret("engine-secrets", {"admin-token": CANARY, "other": "keep"})
    spec = {"type": "kubernetes", "namespace": "trading", "name": "engine-secrets", "key": "admin-token",
            "api_url": k8s.url, "api_key": "k8s-bearer"}
    consumer.source = lambda: {v for k, v in k8s.secret_data("engine-secrets").items() if k.startswith("admin")}
    result = rotate(build_store(spec), consumer)
    data = k8s.secret_data("engine-secrets")
    assert data["admin-token_previous"] == CANARY and data["other"] == "keep"
    assert result["fingerprint"] == fingerprint(data["admin-token"]) and result["backup_files"] == []
    assert ("PATCH", "/api/v1/namespaces/trading/secrets/engine-secrets") in k8s.requests
    assert set(k8s.authorizations) == {"Bearer k8s-bearer"}

    # a failed test puts the Secret's data back exactly as it was (PUT)
    before = dict(k8s.secrets[("trading", "engine-secrets")]["data"])
    consumer.accept(data["admin-token"])
    with pytest.raises(RotationFailed, match="Rolled back"):
        rotate(build_store(spec), consumer)
    assert k8s.secrets[("trading", "engine-secrets")]["data"] == before
    assert ("PUT", "/api/v1/namespaces/trading/secrets/engine-secrets") in k8s.requests


def test_kubernetes_write_error_changes_nothing_and_names_no_value(k8s):
    """FAKE Kubernetes API: a 500 on write."""
    k8s.add_secret("s", {"k": CANARY})
    k8s.fail_writes = True
    store = build_store({"type": "kubernetes", "namespace": "trading", "name": "s", "key": "k", "api_url": k8s.url})
    with pytest.raises(RotationFailed, match="HTTP 500.*Nothing was changed") as err:
        rotate(store)
    assert k8s.secret_data("s") == {"k": CANARY} and CANARY not in str(err.value)


# ---------------------------------------------------------------------------- vault kv2 (FAKE API, real hvac)


def test_vault_kv2_rotate_keeps_other_keys_and_rolls_back_as_a_new_version(vault, consumer):
    """Against FakeVault (no Vault dev server can be installed here), through the real hvac client."""
    vault.versions["trading/engine"] = [{"admin_token": CANARY, "db": "keep"}]
    spec = {"type": "vault_kv2", "url": vault.url, "token": "root-token", "mount_point": "secret",
            "path": "trading/engine", "key": "admin_token"}
    consumer.source = lambda: {v for k, v in vault.current("trading/engine").items() if k.startswith("admin")}
    result = rotate(build_store(spec), consumer)
    data = vault.current("trading/engine")
    assert len(vault.versions["trading/engine"]) == 3  # the set (pending), the finish (promoted)
    assert data["db"] == "keep" and data["admin_token_previous"] == CANARY and "admin_token_pending" not in data
    assert result["fingerprint"] == fingerprint(data["admin_token"])

    consumer.accept(data["admin_token"])
    with pytest.raises(RotationFailed, match="Rolled back") as err:
        rotate(build_store(spec), consumer)
    # the failed run wrote the pending version, then the rollback a new version holding the old data
    assert vault.current("trading/engine") == data and len(vault.versions["trading/engine"]) == 5
    assert CANARY not in str(err.value) + json.dumps(err.value.result)


def test_vault_kv2_bad_token_and_new_secret_rollback(vault, consumer):
    """FakeVault: a wrong token is refused (403); a secret that did not exist is deleted on rollback."""
    spec = {"type": "vault_kv2", "url": vault.url, "token": "wrong", "path": "p", "key": "k"}
    with pytest.raises(RotationFailed, match="permission denied.*Nothing was changed"):
        rotate(build_store(spec))
    spec["token"] = "root-token"
    consumer.accept()
    with pytest.raises(RotationFailed, match="Rolled back"):
        rotate(build_store(spec), consumer)
    assert "p" not in vault.versions


# ---------------------------------------------------------------------------- staging: pending vs direct


class LaggingServer:
    """What a server that re-reads the store on its own schedule accepts: the store as it was ONE write
    ago (the worst case for a client that re-reads at once). Records, after every write, whether the
    token a client reads now (the current key) is accepted by that lagging view."""

    def __init__(self, store):
        self.store = store
        self.view = None
        self.refused = []
        real_write = store.write

        def write(snapshot, values, deadline):
            self.view = store.read(None).values  # the server still sees what was there before this write
            out = real_write(snapshot, values, deadline)
            client = store.read(None).current
            if client not in {v for v in self.view.values() if v}:
                self.refused.append(sorted(values))
            return out

        store.write = write

    def accepted(self):
        """What the server accepts once it has caught up (when the test probes it)."""
        return {v for v in self.store.read(None).values.values() if v}


@pytest.mark.parametrize("staging", ["pending", "direct"])
def test_pending_staging_means_a_client_never_sends_a_token_a_server_does_not_accept_yet(tmp_path, consumer, staging):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    server = LaggingServer(store)
    consumer.source = server.accepted
    result = rotate(store, consumer, staging=staging, revoke_previous=True)
    assert result["stage"] == "revoked"
    if staging == "pending":
        # set (pending only), finish (promote), revoke: the client's token was accepted after each write
        assert server.refused == []
        assert [s["step"] for s in result["steps"]] == ["create", "set", "test", "finish", "revoke", "retest"]
    else:
        # direct: right after the set, clients read the new token that the lagging server does not know yet
        assert server.refused == [["current", "pending", "previous"]]


def test_a_stale_pending_value_is_replaced_and_said(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\nADMIN_TOKEN_PENDING=stale-pending-value-0123\n")
    consumer.read_env(str(path), "ADMIN_TOKEN")
    result = rotate(build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"}), consumer)
    text = path.read_text()
    assert "stale-pending-value" not in text and "ADMIN_TOKEN_PENDING" not in text
    assert f"ADMIN_TOKEN_PREVIOUS={CANARY}" in text
    assert any("stale ADMIN_TOKEN_PENDING" in s["message"] for s in result["steps"])
    assert "stale-pending-value" not in json.dumps(result)


def test_a_failed_promotion_rolls_back_and_the_old_token_still_works(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\nX=1\n", mode=0o600)
    before = path.read_bytes()
    consumer.read_env(str(path), "ADMIN_TOKEN")
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    real_write, writes = store.write, []

    def write(snapshot, values, deadline):  # the second write (the promotion) fails, as a full disk would
        writes.append(values)
        if len(writes) == 2:
            raise _secrets.BackendError(f"cannot write {path}: No space left on device")
        return real_write(snapshot, values, deadline)

    store.write = write
    with pytest.raises(RotationFailed, match="could not be promoted.*No space left.*Rolled back") as err:
        rotate(store, consumer, revoke_previous=True)
    assert path.read_bytes() == before and consumer.works(CANARY)
    assert [s["step"] for s in err.value.result["steps"]] == ["create", "set", "test", "finish", "rollback"]
    assert err.value.result["rolled_back"] is True and CANARY not in str(err.value)


def test_revoke_grace_waits_before_the_old_value_goes(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    consumer.read_env(str(path), "ADMIN_TOKEN")
    slept = []

    def sleep(seconds):  # at the moment of the grace the old token is still in the store, as previous
        slept.append((seconds, f"ADMIN_TOKEN_PREVIOUS={CANARY}" in path.read_text()))

    result = RotationService(build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"}),
                             test={"url": consumer.url + "/whoami", "timeout": 1.0, "interval": 0.05},
                             revoke_previous=True, revoke_grace=2.5, sleep=sleep).run()
    assert slept == [(2.5, True)] and result["stage"] == "revoked"
    assert [s["step"] for s in result["steps"]] == ["create", "set", "test", "finish", "grace", "revoke", "retest"]
    with pytest.raises(ValidationError, match="revoke_grace"):
        RotationService(build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"}), revoke_grace=-1)


def test_every_test_url_must_accept_the_new_value(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    before = path.read_bytes()
    consumer.read_env(str(path), "ADMIN_TOKEN")
    laggard = Consumer()
    try:
        laggard.accept(CANARY)  # a second server that never reloads
        test = {"urls": [consumer.url + "/whoami", laggard.url + "/whoami"], "timeout": 1.0, "interval": 0.05}
        with pytest.raises(RotationFailed, match=r"\(and 1 more URLs\) refused the new value") as err:
            rotate(build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"}), test=test)
        assert laggard.url in str(err.value) and consumer.url + "/whoami answered" not in str(err.value)
        assert path.read_bytes() == before
        laggard.read_env(str(path), "ADMIN_TOKEN")
        result = rotate(build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"}), test=test)
        assert result["stage"] == "finished" and "all 2 URLs: accepted" in result["steps"][2]["message"]
    finally:
        laggard.close()


def test_revoke_only_is_the_second_pass_after_one_grace(tmp_path, consumer):
    path = env_file(tmp_path, f"ADMIN_TOKEN={CANARY}\n")
    consumer.read_env(str(path), "ADMIN_TOKEN")
    store = build_store({"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"})
    first = rotate(store, consumer)
    assert first["stage"] == "finished" and f"ADMIN_TOKEN_PREVIOUS={CANARY}" in path.read_text()
    slept = []
    second = RotationService(store, test={"url": consumer.url + "/whoami", "timeout": 1.0, "interval": 0.05},
                             revoke_only=True, revoke_grace=1.5, sleep=slept.append).run()
    assert slept == [1.5] and second["stage"] == "revoked" and second["changed"] is True
    assert second["revoked_fingerprint"] == fingerprint(CANARY) and second["fingerprint"] == first["fingerprint"]
    assert "ADMIN_TOKEN_PREVIOUS" not in path.read_text() and not consumer.works(CANARY)
    # nothing left to revoke: no change, no wait
    third = RotationService(store, revoke_only=True, revoke_grace=1.5, sleep=slept.append).run()
    assert third["changed"] is False and slept == [1.5]
    with pytest.raises(ValidationError, match="revoke_only"):
        RotationService(store, revoke_only=True, value="x" * 20)
