"""Unit tests of _secrets.BatchRotation and of the store locks: many secrets of ONE store rotated at once.

Real files in a temp dir, a real local HTTP consumer (test_secrets.Consumer), real processes for the
two-operator case (multiprocessing, fork). Kubernetes and Vault: the FAKES of test_secrets (no real API
server or Vault can run here), driven through the real kubernetes client and hvac.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import stat
import threading
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _secrets
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import (
    BatchRotation,
    RotationService,
    build_store,
    one_off_fingerprinter,
)

from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes
from tests.unit.plugins.module_utils.test_secrets import CANARY, Consumer, FakeVault

# stores built without a fingerprinter use this process's one-off key
fingerprint = one_off_fingerprinter()

KEYS = [f"TOKEN_{i:02d}" for i in range(20)]
HEAD = "# engine secrets: keep this comment\nexport DB_URL=postgres://db/x\n"
TAIL = "OTHER='untouched value'\nLAST=z\n"


def old_value(key):
    return f"{CANARY}-{key}"


def env_values(path):
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip("'\"")
    return out


# env20 and file_consumer: tests/unit/plugins/conftest.py


def service(path, key, consumer=None, **kw):
    test = None
    if consumer is not None:
        test = {"url": consumer.url + "/whoami", "timeout": 3.0, "interval": 0.05}
    return RotationService(build_store({"type": "env_file", "path": str(path), "key": key}), test=test, **kw)


def assert_rotated_and_intact(path, keys, st_before):
    values = env_values(path)
    for key in keys:
        assert values[key] != old_value(key), f"{key} was not rotated (or its update was lost)"
        assert values[f"{key}_PREVIOUS"] == old_value(key), f"{key}_PREVIOUS lost"
        assert f"{key}_PENDING" not in values
    text = path.read_text()
    assert text.startswith(HEAD) and text.endswith(TAIL), "the file's other lines changed"
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, st_before.st_uid, st_before.st_gid)  # was 0640
    assert [p.name for p in path.parent.iterdir() if ".tradeops-" in p.name] == []  # no temp file left


def test_twenty_keys_of_one_env_file_rotated_concurrently_none_lost(env20, file_consumer):
    st = os.stat(env20)
    batch = BatchRotation([(k.lower(), service(env20, k, file_consumer)) for k in KEYS], concurrency=8)
    results, diffs, failed = batch.run()
    assert failed == []
    assert_rotated_and_intact(env20, KEYS, st)
    values = env_values(env20)
    assert [r["name"] for r in results] == [k.lower() for k in KEYS]
    for key, r in zip(KEYS, results, strict=True):
        assert r["stage"] == "finished" and r["changed"] is True and r["failed"] is False
        assert r["fingerprint"] == fingerprint(values[key]) and r["previous_fingerprint"] == fingerprint(old_value(key))
        assert len(r["backup_files"]) == 2
        for backup in r["backup_files"]:
            assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert len(diffs) == 20 and diffs[0]["before_header"].startswith("token_00: ")
    dump = repr(results) + repr(diffs)
    assert CANARY not in dump and not any(values[k] in dump for k in KEYS)


def test_plain_threads_each_with_its_own_service_lose_no_update(env20):
    """The guarantee is in the store, not in BatchRotation: 20 rotations of one file in 20 raw threads."""
    st = os.stat(env20)
    errors = []

    def one(key):
        try:
            service(env20, key).run()
        except Exception as err:  # noqa: BLE001 - collected and asserted on
            errors.append(err)

    threads = [threading.Thread(target=one, args=(k,)) for k in KEYS]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert_rotated_and_intact(env20, KEYS, st)


def _rotate_in_a_process(path, keys, start, done):
    """A second operator: its own process, rotating its own keys of the same file, slowly."""
    real = _secrets.atomic_write

    def slow_write(*args, **kwargs):  # widen the read-modify-write window: a lost update would show
        time.sleep(0.02)
        return real(*args, **kwargs)

    _secrets.atomic_write = slow_write
    start.wait(10)
    try:
        results, dummy, failed = BatchRotation([(k, service(path, k)) for k in keys], concurrency=4).run()
        done.put(("ok", [r["msg"] for r in failed]))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        done.put(("error", repr(err)))


def test_two_processes_rotating_different_keys_of_one_file_lose_no_update(env20):
    st = os.stat(env20)
    ctx = multiprocessing.get_context("fork")
    start, done = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_rotate_in_a_process, args=(env20, keys, start, done))
             for keys in (KEYS[:10], KEYS[10:])]
    for p in procs:
        p.start()
    outcomes = [done.get(timeout=60) for dummy in procs]
    for p in procs:
        p.join(10)
    assert outcomes == [("ok", []), ("ok", [])]
    assert_rotated_and_intact(env20, KEYS, st)


def test_a_failed_test_rolls_back_that_secret_only_and_the_others_rotate(env20, file_consumer):
    st = os.stat(env20)
    stubborn = Consumer()  # a server of TOKEN_07 that never accepts a new value
    stubborn.accept(old_value("TOKEN_07"))
    try:
        services = []
        for key in KEYS:
            services.append((key.lower(), service(env20, key, stubborn if key == "TOKEN_07" else file_consumer)))
        services[7][1].test.timeout = 1.0
        results, diffs, failed = BatchRotation(services, concurrency=8).run()
        assert [r["name"] for r in failed] == ["token_07"]
        bad = failed[0]
        assert bad["rolled_back"] is True and bad["stage"] == "rolled_back" and bad["failed"] is True
        assert "refused the new value" in bad["msg"] and "Rolled back" in bad["msg"]
        assert bad["fingerprint"] == fingerprint(old_value("TOKEN_07"))
        values = env_values(env20)
        # the failed one: exactly as before, its old value current and still working
        assert values["TOKEN_07"] == old_value("TOKEN_07")
        assert "TOKEN_07_PREVIOUS" not in values and "TOKEN_07_PENDING" not in values
        assert stubborn.works(old_value("TOKEN_07"))
        # the others: rotated, none lost by the rollback that ran among their writes
        assert_rotated_and_intact(env20, [k for k in KEYS if k != "TOKEN_07"], st)
        assert all(r["stage"] == "finished" for r in results if r["name"] != "token_07")
        assert CANARY not in repr(results)
    finally:
        stubborn.close()


def test_one_grace_for_the_batch_after_every_promotion_then_every_revocation(env20, file_consumer):
    slept = []

    def sleep(seconds):  # at the grace, every secret is promoted and its previous value still there
        values = env_values(env20)
        slept.append((seconds, all(values.get(f"{k}_PREVIOUS") == old_value(k) for k in KEYS[:5])))

    services = [(k, service(env20, k, file_consumer, revoke_previous=True, revoke_grace=1.5)) for k in KEYS[:5]]
    results, dummy, failed = BatchRotation(services, concurrency=5, revoke_grace=1.5, sleep=sleep).run()
    assert failed == [] and slept == [(1.5, True)]
    values = env_values(env20)
    for key, r in zip(KEYS[:5], results, strict=True):
        assert r["stage"] == "revoked" and f"{key}_PREVIOUS" not in values
        assert [s["step"] for s in r["steps"]] == ["create", "set", "test", "finish", "grace", "revoke", "retest"]
        assert not file_consumer.works(old_value(key)) and file_consumer.works(values[key])


def test_check_mode_batch_changes_nothing(env20):
    before, mtime = env20.read_bytes(), os.stat(env20).st_mtime_ns
    services = [(k, service(env20, k, check_mode=True, revoke_previous=True)) for k in KEYS]
    results, diffs, failed = BatchRotation(services, check_mode=True).run()
    assert failed == [] and all(r["stage"] == "would_rotate" and r["changed"] for r in results)
    assert env20.read_bytes() == before and os.stat(env20).st_mtime_ns == mtime
    assert sorted(p.name for p in env20.parent.iterdir()) == ["engine.env"]
    assert diffs[3]["after"] == "TOKEN_03: (a new generated value)\nTOKEN_03_PREVIOUS: (absent)\n"


def test_two_secrets_on_one_key_are_refused_before_anything(env20):
    before = env20.read_bytes()
    with pytest.raises(ValidationError, match="secrets a and b both use TOKEN_01 of env_file"):
        BatchRotation([("a", service(env20, "TOKEN_01")), ("b", service(env20, "TOKEN_01"))])
    with pytest.raises(ValidationError, match="repeated: a"):
        BatchRotation([("a", service(env20, "TOKEN_01")), ("a", service(env20, "TOKEN_02"))])
    assert env20.read_bytes() == before


def test_a_write_is_refused_when_this_secrets_own_keys_changed_meanwhile(env20):
    store = build_store({"type": "env_file", "path": str(env20), "key": "TOKEN_01"})
    snap = store.read(None)
    other = build_store({"type": "env_file", "path": str(env20), "key": "TOKEN_02"})
    other.write(other.read(None), {"current": "a-new-value-for-two-000", "previous": old_value("TOKEN_02")}, None)
    # another key changed: merged, not refused; TOKEN_02's update kept
    store.write(snap, {"pending": "pending-value-for-one-0000"}, None)
    values = env_values(env20)
    assert values["TOKEN_02"] == "a-new-value-for-two-000"
    assert values["TOKEN_01_PENDING"] == "pending-value-for-one-0000"
    # its own key changed (another rotation of the same secret): refused, nothing written
    before = env20.read_bytes()
    with pytest.raises(_secrets.BackendError, match="changed during the rotation.*TOKEN_01_PENDING"):
        store.write(snap, {"current": "x" * 20}, None)
    assert env20.read_bytes() == before


def test_a_held_directory_lock_makes_a_writer_wait(env20):
    """The inter-process lock is flock on the file's directory: held here, a write waits for it."""
    import fcntl

    dfd = os.open(str(env20.parent), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(dfd, fcntl.LOCK_EX)
    store = build_store({"type": "env_file", "path": str(env20), "key": "TOKEN_01"}, backup=False)
    snap = store.read(None)
    finished = []
    writer = threading.Thread(target=lambda: finished.append(store.write(snap, {"pending": "p" * 20}, None)))
    writer.start()
    time.sleep(0.3)
    assert finished == [] and "TOKEN_01_PENDING" not in env20.read_text()
    os.close(dfd)  # releases the lock
    writer.join(5)
    assert finished == [None] and "TOKEN_01_PENDING=" + "p" * 20 in env20.read_text()
    # a lock that is never released: the write gives up at the deadline, naming the lock, writing nothing
    dfd = os.open(str(env20.parent), os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(dfd, fcntl.LOCK_EX)
    try:
        before = env20.read_bytes()
        with pytest.raises(_secrets.BackendError, match=r"stayed locked \(flock on .*nothing was changed"):
            store.write(store.read(None), {"pending": None}, _secrets.Deadline(0.3))
        assert env20.read_bytes() == before
    finally:
        os.close(dfd)


# ---------------------------------------------------------------------------- one Secret / one Vault path


def test_many_keys_of_one_kubernetes_secret_in_one_batch():
    """FAKE Kubernetes API (k8s_fake.py): 6 keys of one Secret, concurrently; no 409, no lost key."""
    k8s = FakeKubernetes()
    try:
        keys = [f"key-{i}" for i in range(6)]
        k8s.add_secret("engine", {**{k: old_value(k) for k in keys}, "other": "keep"})
        services = [(k, RotationService(build_store({"type": "kubernetes", "namespace": "trading", "name": "engine",
                                                     "key": k, "api_url": k8s.url})))
                    for k in keys]
        results, dummy, failed = BatchRotation(services, concurrency=6).run()
        assert failed == [], [r["msg"] for r in failed]
        data = k8s.secret_data("engine")
        assert data["other"] == "keep"
        for k, r in zip(keys, results, strict=True):
            assert data[k] != old_value(k) and data[f"{k}_previous"] == old_value(k) and f"{k}_pending" not in data
            assert r["fingerprint"] == fingerprint(data[k])
    finally:
        k8s.close()


def test_many_keys_of_one_vault_path_in_one_batch_and_a_rollback_among_them():
    """FakeVault (KV v2 API, real hvac): 6 keys of one path, one refused by its test and rolled back."""
    vault = FakeVault()
    stubborn = Consumer()
    try:
        keys = [f"key_{i}" for i in range(6)]
        vault.versions["trading/engine"] = [{**{k: old_value(k) for k in keys}, "db": "keep"}]
        stubborn.accept(old_value("key_2"))

        def svc(k):
            test = {"url": stubborn.url + "/whoami", "timeout": 0.5, "interval": 0.05} if k == "key_2" else None
            return RotationService(build_store({"type": "vault_kv2", "url": vault.url, "token": "root-token",
                                                "path": "trading/engine", "key": k}), test=test)

        results, dummy, failed = BatchRotation([(k, svc(k)) for k in keys], concurrency=6).run()
        assert [r["name"] for r in failed] == ["key_2"] and failed[0]["rolled_back"] is True
        data = vault.current("trading/engine")
        assert data["db"] == "keep" and data["key_2"] == old_value("key_2")
        assert "key_2_previous" not in data and "key_2_pending" not in data
        for k in keys:
            if k != "key_2":
                assert data[k] != old_value(k) and data[f"{k}_previous"] == old_value(k), k
    finally:
        stubborn.close()
        vault.close()


def test_value_already_current_with_revoke_previous_revokes_and_returns_a_result(env20):
    """It used to return None after revoking (the module then crashed)."""
    env20.write_text(env20.read_text() + "TOKEN_01_PREVIOUS=an-older-value-0000000\n")
    result = service(env20, "TOKEN_01", value=old_value("TOKEN_01"), revoke_previous=True).run()
    assert result["stage"] == "revoked" and result["revoked_fingerprint"] == fingerprint("an-older-value-0000000")
    assert "TOKEN_01_PREVIOUS" not in env_values(env20)
