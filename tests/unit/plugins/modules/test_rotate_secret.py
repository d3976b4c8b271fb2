"""Drive rotate_secret's main() with patched module args (as community.hashi_vault does).

The consumer is a real local HTTP server (test_secrets.Consumer) that accepts the tokens the test
gives it, or re-reads them from the store. Stores: real files; kubernetes is the FAKE API of
k8s_fake.py (no real API server can run here); vault_kv2 is test_secrets.FakeVault, a FAKE of the
KV v2 HTTP API driven through the real hvac client (no Vault dev server can be installed here).
A canary secret is planted in every store and must appear nowhere in the module output, on
success and on every failure path.
"""

from __future__ import annotations

import os
import re
import stat

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import Fingerprinter
from ansible_collections.tradeops.remediation.plugins.modules import rotate_secret

from tests.helpers.modules import run_module as run_helper
from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes
from tests.unit.plugins.module_utils.test_secrets import CANARY, Consumer, FakeVault

NEW_CANARY = "CANARY-provided-new-value-51b0e2"


def fp(value):
    """The fingerprint the module gives ``value``: keyed with this test's key file (conftest.py)."""
    return Fingerprinter.from_file(os.environ["TRADEOPS_FINGERPRINT_KEY_PATH"])(value)


@pytest.fixture
def consumer():
    c = Consumer()
    yield c
    c.close()


def run_module(capsys, args):
    return run_helper(rotate_secret, capsys, args)


def assert_no_secret(out, *values):
    for value in (CANARY, NEW_CANARY) + values:
        assert value not in out["_raw"], "a secret value leaked into the module output"


def env(tmp_path, text=f"# engine\nDB_URL=postgres://db\nADMIN_TOKEN={CANARY}\nTAIL=1\n", mode=0o640):
    path = tmp_path / "engine.env"
    path.write_text(text)
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4321)
    return path


def current(path, key="ADMIN_TOKEN"):
    return re.search(rf"^{key}=(.*)$", path.read_text(), re.M).group(1)


def test_env_file_rotation_promotes_and_returns_only_fingerprints(capsys, tmp_path, consumer):
    path = env(tmp_path)
    before, st = path.read_bytes(), os.stat(path)
    consumer.read_env(str(path), "ADMIN_TOKEN")
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "generate": {"length": 40, "alphabet": "alnum"},
                              "test": {"url": consumer.url + "/whoami", "timeout": 2, "interval": 0.05},
                              "_ansible_diff": True})
    assert out["_rc"] == 0, out
    new = current(path)
    assert re.match(r"^[A-Za-z0-9]{40}$", new)
    assert path.read_text() == (f"# engine\nDB_URL=postgres://db\nADMIN_TOKEN={new}\n"
                                f"ADMIN_TOKEN_PREVIOUS={CANARY}\nTAIL=1\n")
    assert out["changed"] is True and out["stage"] == "finished" and out["rolled_back"] is False
    assert out["fingerprint"] == fp(new) and out["previous_fingerprint"] == fp(CANARY)
    assert out["pending_fingerprint"] == fp(new) and out["revoked_fingerprint"] is None
    assert [s["step"] for s in out["steps"]] == ["create", "set", "test", "finish"]
    # atomic write kept the owner; the file ends 0600 (it was 0640); the backup is 0600 and holds the file as it was
    st2 = os.stat(path)
    assert stat.S_IMODE(st2.st_mode) == 0o600 and (st2.st_uid, st2.st_gid) == (st.st_uid, st.st_gid)
    assert len(out["backup_files"]) == 2  # before the set (pending) and before the finish (promote)
    backup = out["backup_files"][0]
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600 and open(backup, "rb").read() == before
    # the diff shows fingerprints only
    assert out["diff"]["before"] == f"ADMIN_TOKEN: {fp(CANARY)}\nADMIN_TOKEN_PREVIOUS: (absent)\n"
    assert out["diff"]["after"] == f"ADMIN_TOKEN: {fp(new)}\nADMIN_TOKEN_PREVIOUS: {fp(CANARY)}\n"
    assert consumer.works(new) and consumer.works(CANARY)
    assert_no_secret(out, new)


def test_failed_test_rolls_back_byte_identical_and_the_previous_token_still_works(capsys, tmp_path, consumer):
    path = env(tmp_path)
    before, st = path.read_bytes(), os.stat(path)
    consumer.accept(CANARY)  # never picks up a new value
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "value": NEW_CANARY,
                              "test": {"url": consumer.url + "/whoami", "timeout": 1, "interval": 0.05}})
    assert out["_rc"] == 1 and out["failed"] is True
    assert path.read_bytes() == before
    st2 = os.stat(path)
    # the same bytes and owner; a secret file ends 0600 (it was 0640), a rollback too
    assert (stat.S_IMODE(st2.st_mode), st2.st_uid, st2.st_gid) == (0o600, st.st_uid, st.st_gid)
    assert consumer.works(CANARY)
    assert out["rolled_back"] is True and out["stage"] == "rolled_back" and out["fingerprint"] == fp(CANARY)
    assert out["msg"].startswith(f"rotate_secret: the test GET {consumer.url}/whoami refused the new value "
                                 f"(fingerprint {fp(NEW_CANARY)})")
    assert "Rolled back" in out["msg"] and "re-run" in out["msg"]
    assert_no_secret(out)


def test_revoke_previous_makes_the_old_token_refused(capsys, tmp_path, consumer):
    path = env(tmp_path)
    consumer.read_env(str(path), "ADMIN_TOKEN")
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "test": {"url": consumer.url + "/whoami", "timeout": 2, "interval": 0.05},
                              "revoke_previous": True, "revoke": {"url": consumer.url + "/revoke"}})
    assert out["_rc"] == 0, out
    new = current(path)
    assert "ADMIN_TOKEN_PREVIOUS" not in path.read_text()
    assert consumer.works(new) and not consumer.works(CANARY)
    assert out["stage"] == "revoked" and out["revoked_fingerprint"] == fp(CANARY)
    assert out["previous_fingerprint"] is None and len(out["backup_files"]) == 3
    assert [s["status"] for s in out["steps"]] == ["ok"] * 6
    assert_no_secret(out, new)


def test_check_mode_writes_nothing_and_diffs_fingerprints(capsys, tmp_path, consumer):
    path = env(tmp_path)
    before, mtime = path.read_bytes(), os.stat(path).st_mtime_ns
    consumer.read_env(str(path), "ADMIN_TOKEN")
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "test": {"url": consumer.url + "/whoami"}, "revoke_previous": True,
                              "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["_rc"] == 0, out
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.env"]  # no backup, no temp file
    assert consumer.calls == []
    assert out["changed"] is True and out["stage"] == "would_rotate" and out["backup_files"] == []
    assert out["diff"]["after"] == "ADMIN_TOKEN: (a new generated value)\nADMIN_TOKEN_PREVIOUS: (absent)\n"
    assert_no_secret(out)


def test_value_equal_to_the_current_one_is_not_a_change(capsys, tmp_path):
    path = env(tmp_path)
    before = path.read_bytes()
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "value": CANARY})
    assert out["_rc"] == 0 and out["changed"] is False and out["stage"] == "unchanged"
    assert path.read_bytes() == before and out["backup_files"] == []
    assert_no_secret(out)


def test_bad_input_fails_before_anything_and_says_what_to_do(capsys, tmp_path):
    path = env(tmp_path)
    before = path.read_bytes()
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "value": NEW_CANARY, "test": {"url": "http://127.0.0.1:1/", "old_must_fail": True}})
    assert out["_rc"] == 1 and "old_must_fail needs revoke_previous" in out["msg"]
    assert "Nothing was changed: fix the options and re-run." in out["msg"]
    assert path.read_bytes() == before
    out = run_module(capsys, {"store": {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN"},
                              "value": NEW_CANARY, "generate": {"length": 20}})
    assert out["_rc"] == 1 and "mutually exclusive" in out["msg"]
    assert_no_secret(out)


def test_kubernetes_store_through_main(capsys, consumer):
    """The kubernetes store against the FAKE API of k8s_fake.py (no real API server can run here)."""
    k8s = FakeKubernetes()
    try:
        k8s.add_secret("engine-secrets", {"admin-token": CANARY})
        consumer.source = lambda: set(k8s.secret_data("engine-secrets").values())
        out = run_module(capsys, {"store": {"type": "kubernetes", "namespace": "trading", "name": "engine-secrets",
                                            "key": "admin-token", "api_url": k8s.url, "api_key": "bearer-x"},
                                  "test": {"url": consumer.url + "/whoami", "timeout": 2, "interval": 0.05},
                                  "revoke_previous": True})
        assert out["_rc"] == 0, out
        data = k8s.secret_data("engine-secrets")
        assert list(data) == ["admin-token"] and out["fingerprint"] == fp(data["admin-token"])
        assert not consumer.works(CANARY) and out["stage"] == "revoked"
        assert_no_secret(out, data["admin-token"], "bearer-x")
    finally:
        k8s.close()


def test_vault_kv2_store_through_main_and_a_failure_path(capsys, consumer):
    """The vault_kv2 store against FakeVault (a FAKE of the KV v2 API; no Vault dev server here), via hvac."""
    vault = FakeVault(token="vault-root-CANARY")
    try:
        vault.versions["trading/engine"] = [{"admin_token": CANARY, "other": "x"}]
        store = {"type": "vault_kv2", "url": vault.url, "token": "vault-root-CANARY", "path": "trading/engine",
                 "key": "admin_token"}
        consumer.source = lambda: {vault.current("trading/engine").get(k) for k in (
            "admin_token", "admin_token_previous", "admin_token_pending")}
        out = run_module(capsys, {"store": store, "value": NEW_CANARY, "_ansible_diff": True,
                                  "test": {"url": consumer.url + "/whoami", "timeout": 2, "interval": 0.05}})
        assert out["_rc"] == 0, out
        assert vault.current("trading/engine") == {"admin_token": NEW_CANARY, "admin_token_previous": CANARY,
                                                   "other": "x"}
        assert out["fingerprint"] == fp(NEW_CANARY) and out["previous_fingerprint"] == fp(CANARY)
        assert_no_secret(out, "vault-root-CANARY")
        # the same value again: no change
        out = run_module(capsys, {"store": store, "value": NEW_CANARY})
        assert out["_rc"] == 0 and out["changed"] is False
        # a store error on write: nothing changed, and no value in the message
        vault.fail_writes = True
        out = run_module(capsys, {"store": store})
        assert out["_rc"] == 1 and "Nothing was changed" in out["msg"]
        assert vault.current("trading/engine")["admin_token"] == NEW_CANARY
        assert_no_secret(out, "vault-root-CANARY")
    finally:
        vault.close()


@pytest.mark.parametrize("store, missing", [
    ({"type": "vault_kv2", "key": "k", "url": "http://127.0.0.1:1"}, "type is vault_kv2 but all of the following "
                                                                     "are missing: path, token"),
    ({"type": "env_file", "key": "ADMIN_TOKEN"}, "type is env_file but all of the following are missing: path"),
    ({"type": "kubernetes", "key": "k", "api_url": "http://127.0.0.1:1"}, "type is kubernetes but all of the "
                                                                          "following are missing: name"),
])
def test_a_store_option_its_type_needs_is_reported_by_ansible_before_anything_runs(capsys, consumer, store, missing):
    out = run_module(capsys, {"store": store, "value": "n" * 32, "test": {"url": consumer.url + "/whoami"}})
    assert out["_rc"] == 1 and missing in out["msg"], out["msg"]
    assert consumer.calls == [], "the test endpoint was called although the store options were incomplete"
