"""rotate_secret hardening (issue 13, Low): output masking, file modes, symlinks, keyed fingerprints, timeouts.

Driven through main() with patched module args, on real files in a temp dir; the consumer is the real
local HTTP server of test_secrets. The fingerprint key lives in a temp dir of each test
(TRADEOPS_FINGERPRINT_KEY_PATH, tests/unit/plugins/conftest.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _secrets

from tests.unit.plugins.module_utils.test_secrets import CANARY, Consumer
from tests.unit.plugins.modules.test_rotate_secret import NEW_CANARY, assert_no_secret, current, env, fp, run_module

MASK = "********"


@pytest.fixture
def consumer():
    c = Consumer()
    yield c
    c.close()


def store(path, **extra):
    return {"type": "env_file", "path": str(path), "key": "ADMIN_TOKEN", **extra}


def files(directory):
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------- masking


def test_short_values_and_other_entries_of_the_store_do_not_mangle_the_output(capsys, tmp_path):
    """A short known value ("1", a 3-letter fragment of the file's name) and the other entries of the store
    (SHORT=1, a long path fragment) are not masked: fingerprints, paths and messages come out whole. The
    values of the secret that are long enough never appear."""
    fragment = tmp_path.name  # the test's own directory: a part of every path in the result
    path = env(tmp_path, text=(f"SHORT=1\nDIR={fragment}\nADMIN_TOKEN={CANARY}\n"
                               "ADMIN_TOKEN_PREVIOUS=1\nADMIN_TOKEN_PENDING=env\n"))
    out = run_module(capsys, {"store": store(path), "_ansible_diff": True})
    assert out["_rc"] == 0, out
    new = current(path)
    assert MASK not in out["_raw"], "a value of the store mangled the output"
    assert out["store"]["location"] == f"env_file {path}"
    assert out["backup_files"] and all(b.startswith(f"{path}.") and os.path.exists(b) for b in out["backup_files"])
    assert out["fingerprint"] == fp(new) and out["previous_fingerprint"] == fp(CANARY)
    assert all(re.match(r"^[0-9a-f]{12}$", out[k]) for k in ("fingerprint", "previous_fingerprint",
                                                               "pending_fingerprint"))
    stale = [s for s in out["steps"] if s["step"] == "set" and "stale ADMIN_TOKEN_PENDING" in s["message"]]
    assert stale and fp("env") in stale[0]["message"]
    assert out["diff"]["before"] == f"ADMIN_TOKEN: {fp(CANARY)}\nADMIN_TOKEN_PREVIOUS: {fp('1')}\n" \
                                    f"ADMIN_TOKEN_PENDING: {fp('env')}\n"
    assert_no_secret(out, new)


def test_secret_values_are_this_secrets_own_long_enough_values_only(tmp_path):
    path = env(tmp_path, text=f"OTHER=another-long-value-of-the-file\nADMIN_TOKEN={CANARY}\nADMIN_TOKEN_PREVIOUS=1\n")
    service = _secrets.RotationService(_secrets.build_store(store(path)), value="short12")
    service.run()
    assert service.secret_values() == [CANARY]  # not "1", not "short12" (7), not OTHER's value
    assert _secrets.maskable(["12345678", "1234567", None, "", "12345678"]) == ["12345678"]


# ---------------------------------------------------------------------------- modes


def test_a_world_readable_store_ends_0600_written_through_a_0600_temp_file(capsys, tmp_path, monkeypatch):
    path = env(tmp_path, mode=0o644)
    owner = os.stat(path).st_uid, os.stat(path).st_gid
    renames = []
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        st = os.stat(src)  # the temp file, full of the new content, just before it becomes the store
        renames.append((stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, os.path.getsize(src)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    out = run_module(capsys, {"store": store(path), "generate": {"length": 24}})
    assert out["_rc"] == 0, out
    st = os.stat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, *owner)
    assert len(renames) == 2 and all(r[:3] == (0o600, *owner) and r[3] > 0 for r in renames)
    assert all(stat.S_IMODE(os.stat(b).st_mode) == 0o600 for b in out["backup_files"])
    assert [n for n in files(tmp_path) if ".tradeops-" in n] == []


def test_store_mode_allows_the_group_and_refuses_others(capsys, tmp_path):
    path = env(tmp_path, mode=0o644)
    out = run_module(capsys, {"store": store(path, mode="0640"), "value": NEW_CANARY})
    assert out["_rc"] == 0, out
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    before, listing = path.read_bytes(), files(tmp_path)
    for bad in ("0644", "0604", "0700", "u+rw", "0040"):
        out = run_module(capsys, {"store": store(path, mode=bad), "generate": {"length": 24}})
        assert out["_rc"] == 1 and "store.mode" in out["msg"] and "Nothing was changed" in out["msg"], bad
    assert path.read_bytes() == before and files(tmp_path) == listing
    vault = {"type": "vault_kv2", "url": "http://127.0.0.1:1", "token": "vault-token-x", "path": "x", "key": "k"}
    out = run_module(capsys, {"store": dict(vault, mode="0600")})
    assert out["_rc"] == 1 and "store.mode applies to file stores only" in out["msg"]


def test_a_rollback_also_ends_0600(capsys, tmp_path, consumer):
    path = env(tmp_path, mode=0o644)
    before = path.read_bytes()
    consumer.accept(CANARY)  # never accepts the new value
    out = run_module(capsys, {"store": store(path), "value": NEW_CANARY,
                              "test": {"url": consumer.url + "/whoami", "timeout": 0.3, "interval": 0.05}})
    assert out["_rc"] == 1 and out["rolled_back"] is True
    assert path.read_bytes() == before and stat.S_IMODE(os.stat(path).st_mode) == 0o600


# ---------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("check_mode", [False, True])
@pytest.mark.parametrize("form", ["single", "batch"])
def test_a_symlinked_store_is_refused_and_its_target_untouched(capsys, tmp_path, check_mode, form):
    target_dir = tmp_path / "elsewhere"
    target_dir.mkdir()
    target = env(target_dir, mode=0o644)
    before, st = target.read_bytes(), os.stat(target)
    link = tmp_path / "engine.env"
    link.symlink_to(target)
    spec = store(link)
    args = {"store": spec} if form == "single" else {"secrets": [{"name": "admin", "store": spec}]}
    out = run_module(capsys, dict(args, _ansible_check_mode=check_mode))
    assert out["_rc"] == 1 and out.get("changed") is not True
    assert f"store.path {link} is a symlink" in out["msg"] and "Nothing was changed" in out["msg"], out["msg"]
    if form == "batch":
        assert "secrets[0] (admin)" in out["msg"]
    st2 = os.stat(target)
    assert target.read_bytes() == before and (stat.S_IMODE(st2.st_mode), st2.st_ino) == (0o644, st.st_ino)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert files(tmp_path) == ["elsewhere", "engine.env"] and files(target_dir) == ["engine.env"]
    assert_no_secret(out)


def test_a_store_replaced_by_a_symlink_after_the_start_is_not_read(tmp_path):
    """The check at the start is not the only one: every read opens the file O_NOFOLLOW."""
    path = env(tmp_path)
    secret_store = _secrets.build_store(store(path))
    elsewhere = tmp_path / "shadow"
    elsewhere.write_text("ADMIN_TOKEN=someone-elses-secret-value\n")
    path.unlink()
    path.symlink_to(elsewhere)
    with pytest.raises(_secrets.ValidationError, match="store.path .* is a symlink"):
        secret_store.read(_secrets.Deadline(5))


def test_a_symlinked_directory_on_the_way_is_followed(capsys, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    path = env(real)
    (tmp_path / "alias").symlink_to(real)
    out = run_module(capsys, {"store": store(tmp_path / "alias" / "engine.env"), "value": NEW_CANARY})
    assert out["_rc"] == 0, out
    assert current(path) == NEW_CANARY and out["store"]["location"] == f"env_file {path}"


# ---------------------------------------------------------------------------- keyed fingerprints


def test_fingerprints_are_keyed_stable_across_runs_and_differ_with_another_key(capsys, tmp_path, monkeypatch,
                                                                                fingerprint_key_path):
    path = env(tmp_path)
    args = {"store": store(path), "value": NEW_CANARY}
    first = run_module(capsys, args)
    assert first["_rc"] == 0 and first["changed"] is True, first
    # the key was created on first use: 0600 in a 0700 directory, and never shown
    key_text = fingerprint_key_path.read_text().strip()
    assert re.match(r"^[0-9a-f]{64}$", key_text)
    assert stat.S_IMODE(os.stat(fingerprint_key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(fingerprint_key_path.parent).st_mode) == 0o700
    assert key_text not in first["_raw"]
    # a second run of the same installation: same value, same fingerprint, same key id
    second = run_module(capsys, args)
    assert second["_rc"] == 0 and second["changed"] is False, second
    assert second["fingerprint"] == first["fingerprint"] == fp(NEW_CANARY)
    assert second["previous_fingerprint"] == first["previous_fingerprint"] == fp(CANARY)
    assert second["fingerprint_key_id"] == first["fingerprint_key_id"] and re.match(r"^[0-9a-f]{8}$",
                                                                                     first["fingerprint_key_id"])
    # a report alone cannot confirm a guessed value: not the unkeyed sha256
    for value, fingerprint in ((NEW_CANARY, first["fingerprint"]), (CANARY, first["previous_fingerprint"])):
        assert fingerprint != hashlib.sha256(value.encode()).hexdigest()[:12]
    # another installation (another key): another fingerprint of the same value
    monkeypatch.setenv("TRADEOPS_FINGERPRINT_KEY_PATH", str(tmp_path / "other" / "fingerprint.key"))
    third = run_module(capsys, args)
    assert third["_rc"] == 0 and third["fingerprint"] != first["fingerprint"]
    assert third["fingerprint_key_id"] != first["fingerprint_key_id"]
    # the option names the key file as well
    fourth = run_module(capsys, dict(args, fingerprint_key_path=str(fingerprint_key_path)))
    assert fourth["fingerprint"] == first["fingerprint"]


def test_check_mode_creates_no_key_and_says_its_fingerprints_are_one_off(capsys, tmp_path, fingerprint_key_path):
    path = env(tmp_path)
    out = run_module(capsys, {"store": store(path), "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["_rc"] == 0 and out["stage"] == "would_rotate", out
    assert not fingerprint_key_path.exists() and not fingerprint_key_path.parent.exists()
    assert out["fingerprint_key_id"] == "one-off" and "key one-off" in out["diff"]["before_header"]


@pytest.mark.parametrize("problem", ["symlink", "readable", "not a key"])
def test_an_unsafe_key_file_is_refused_naming_the_option(capsys, tmp_path, fingerprint_key_path, problem):
    path = env(tmp_path)
    before = path.read_bytes()
    fingerprint_key_path.parent.mkdir(mode=0o700)
    real = tmp_path / "real.key"
    real.write_text("ab" * 32)
    os.chmod(real, 0o600)
    if problem == "symlink":
        fingerprint_key_path.symlink_to(real)
    elif problem == "readable":
        fingerprint_key_path.write_text("ab" * 32)
        os.chmod(fingerprint_key_path, 0o644)
    else:
        fingerprint_key_path.write_text("short\n")
        os.chmod(fingerprint_key_path, 0o600)
    out = run_module(capsys, {"store": store(path), "value": NEW_CANARY})
    assert out["_rc"] == 1 and out["msg"].startswith(f"rotate_secret: fingerprint_key_path: {fingerprint_key_path}")
    assert "Nothing was changed" in out["msg"] and path.read_bytes() == before
    assert "ab" * 32 not in out["_raw"]


def test_the_role_and_the_batch_results_carry_keyed_fingerprints(capsys, env20, file_consumer):
    from tests.unit.plugins.module_utils.test_secrets_batch import KEYS, env_values

    keys = KEYS[:3]
    out = run_module(capsys, {"secrets": [{"name": k.lower(), "store": store(env20, key=k)} for k in keys]})
    assert out["_rc"] == 0, out
    values = env_values(env20)
    for key, result in zip(keys, out["results"], strict=True):
        assert result["fingerprint"] == fp(values[key]) != hashlib.sha256(values[key].encode()).hexdigest()[:12]
        assert result["fingerprint_key_id"] == out["results"][0]["fingerprint_key_id"] != "one-off"


# ---------------------------------------------------------------------------- timeouts


BAD_SECONDS = [float("inf"), float("-inf"), float("nan"), -5.0, 0.0, 1e9]


@pytest.mark.parametrize(("option", "seconds"), [
    (option, seconds) for option in ("timeout", "test.timeout", "test.interval", "revoke_grace")
    for seconds in BAD_SECONDS if (option, seconds) != ("revoke_grace", 0.0)  # 0: no grace, the breach setting
], ids=str)
def test_a_bad_timeout_is_refused_naming_the_option(capsys, tmp_path, option, seconds):
    path = env(tmp_path)
    before, listing = path.read_bytes(), files(tmp_path)
    test = {"url": "http://127.0.0.1:1/whoami"}
    args = {"store": store(path), "value": NEW_CANARY, "test": test}
    if option.startswith("test."):
        test[option.split(".")[1]] = seconds
    else:
        args[option] = seconds
    out = run_module(capsys, args)
    assert out["_rc"] == 1, out
    assert out["msg"].startswith(f"rotate_secret: {option}: ") and "Nothing was changed" in out["msg"], out["msg"]
    assert path.read_bytes() == before and files(tmp_path) == listing
    # the batch form names the option too (a batch-wide one, or the item's)
    item = {"name": "admin", "store": store(path), "value": NEW_CANARY, "test": dict(test)}
    args = {"secrets": [item]}
    if not option.startswith("test."):
        args[option] = seconds
    out = run_module(capsys, args)
    assert out["_rc"] == 1, out
    where = f"secrets[0] (admin): {option}: " if option.startswith("test.") else f"rotate_secret: {option}: "
    assert where in out["msg"], out["msg"]
    assert path.read_bytes() == before and files(tmp_path) == listing
    assert json.dumps(out).count(NEW_CANARY) == 0
