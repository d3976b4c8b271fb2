"""rotate_secret's batch form (``secrets``) through main(), with patched module args.

Real env files, a real local HTTP consumer (test_secrets.Consumer) that accepts whatever the file holds.
The old values are canaries: none may appear in the module output, on success or on failure.
"""

from __future__ import annotations

import os
import stat

import pytest

from tests.unit.plugins.module_utils.test_secrets import Consumer
from tests.unit.plugins.module_utils.test_secrets_batch import HEAD, KEYS, TAIL, env_values, old_value
from tests.unit.plugins.modules.test_rotate_secret import fp, run_module


@pytest.fixture
def consumer(file_consumer):
    """tests/unit/plugins/conftest.py: a server that accepts any value env20 holds now."""
    return file_consumer


def items(path, consumer, keys=KEYS, **extra):
    return [{"name": key.lower(), "store": {"type": "env_file", "path": str(path), "key": key},
             "test": {"url": consumer.url + "/whoami", "timeout": 3, "interval": 0.05}, **extra} for key in keys]


def assert_no_value(out, path_values):
    for key in KEYS:
        assert old_value(key) not in out["_raw"], "an old value leaked into the module output"
    for value in path_values:
        assert value not in out["_raw"], "a new value leaked into the module output"


def test_twenty_secrets_of_one_file_in_one_call(capsys, env20, consumer):
    st = os.stat(env20)
    out = run_module(capsys, {"secrets": items(env20, consumer), "concurrency": 8, "_ansible_diff": True})
    assert out["_rc"] == 0, out.get("msg")
    values = env_values(env20)
    assert out["changed"] is True and len(out["results"]) == 20
    for key, r in zip(KEYS, out["results"], strict=True):
        assert r["name"] == key.lower() and r["failed"] is False and r["changed"] is True
        assert r["stage"] == "finished" and r["rolled_back"] is False
        assert r["fingerprint"] == fp(values[key]) and r["previous_fingerprint"] == fp(old_value(key))
        assert values[f"{key}_PREVIOUS"] == old_value(key) and values[key] != old_value(key)
    text = env20.read_text()
    assert text.startswith(HEAD) and text.endswith(TAIL)
    st2 = os.stat(env20)
    assert (stat.S_IMODE(st2.st_mode), st2.st_uid, st2.st_gid) == (0o600, st.st_uid, st.st_gid)  # was 0640
    # one diff per secret, fingerprints only
    assert len(out["diff"]) == 20 and out["diff"][0]["before"] == f"TOKEN_00: {fp(old_value('TOKEN_00'))}\n" \
        "TOKEN_00_PREVIOUS: (absent)\n"
    # the single form's keys are not at the top level of the batch form
    assert "fingerprint" not in out and "stage" not in out
    assert_no_value(out, [values[k] for k in KEYS])


def test_a_refused_secret_is_rolled_back_the_others_rotate_and_the_task_fails_naming_it(capsys, env20, consumer):
    stubborn = Consumer()  # the server of TOKEN_05 never accepts a new value
    stubborn.accept(old_value("TOKEN_05"))
    try:
        secrets = items(env20, consumer, KEYS[:8])
        secrets[5]["test"] = {"url": stubborn.url + "/whoami", "timeout": 1, "interval": 0.05}
        out = run_module(capsys, {"secrets": secrets, "revoke_previous": True})
    finally:
        stubborn.close()
    assert out["_rc"] == 1 and out["failed"] is True
    assert out["msg"].startswith("rotate_secret: 1 of 8 secrets failed (token_05); the 7 other(s) completed.")
    assert "[token_05] the test GET " in out["msg"] and "Rolled back" in out["msg"] and "re-run" in out["msg"]
    values = env_values(env20)
    assert values["TOKEN_05"] == old_value("TOKEN_05") and "TOKEN_05_PENDING" not in values
    by_name = {r["name"]: r for r in out["results"]}
    assert by_name["token_05"]["rolled_back"] is True and by_name["token_05"]["failed"] is True
    for key in KEYS[:8]:
        if key != "TOKEN_05":
            r = by_name[key.lower()]
            # revoke_previous (batch-wide, no grace): rotated and the old value gone
            assert r["failed"] is False and r["stage"] == "revoked", r
            assert values[key] != old_value(key) and f"{key}_PREVIOUS" not in values
            assert not consumer.works(old_value(key))
    assert out["changed"] is True
    assert_no_value(out, [values[k] for k in KEYS])


def test_check_mode_batch_writes_nothing_and_diffs_fingerprints(capsys, env20, consumer):
    fp("an earlier run made the installation's key")  # else check mode fingerprints with a one-off key
    before, mtime = env20.read_bytes(), os.stat(env20).st_mtime_ns
    out = run_module(capsys, {"secrets": items(env20, consumer), "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["_rc"] == 0, out.get("msg")
    assert env20.read_bytes() == before and os.stat(env20).st_mtime_ns == mtime
    assert sorted(p.name for p in env20.parent.iterdir()) == ["engine.env"]
    assert consumer.calls == []
    assert out["changed"] is True and {r["stage"] for r in out["results"]} == {"would_rotate"}
    assert out["diff"][1]["before"] == f"TOKEN_01: {fp(old_value('TOKEN_01'))}\nTOKEN_01_PREVIOUS: (absent)\n"
    assert out["diff"][1]["before_header"].startswith("token_01: env_file ")
    assert_no_value(out, [])


def test_item_options_fall_back_to_the_module_ones_and_values_stay_hidden(capsys, env20):
    new = "CANARY-new-provided-value-for-01"
    out = run_module(capsys, {"secrets": [
        {"name": "one", "store": {"type": "env_file", "path": str(env20), "key": "TOKEN_01"}, "value": new},
        {"name": "two", "store": {"type": "env_file", "path": str(env20), "key": "TOKEN_02"}, "backup": True,
         "staging": "pending"},
    ], "staging": "direct", "backup": False})
    assert out["_rc"] == 0, out.get("msg")
    one, two = out["results"]
    assert one["backup_files"] == [] and len(two["backup_files"]) == 2  # backup: the module's, or the item's
    assert [s["step"] for s in one["steps"]] == ["create", "set", "test", "finish"]  # staging=direct: no promote
    assert env_values(env20)["TOKEN_01"] == new and new not in out["_raw"]


def test_bad_batch_input_fails_before_anything_and_names_the_secret(capsys, env20, consumer):
    before = env20.read_bytes()
    secrets = items(env20, consumer, KEYS[:3])
    secrets[2]["generate"] = {"length": 8}
    out = run_module(capsys, {"secrets": secrets})
    assert out["_rc"] == 1 and "secrets[2] (token_02): generate.length must be between 16" in out["msg"]
    assert "Nothing was changed: fix the options and re-run." in out["msg"]
    out = run_module(capsys, {"secrets": items(env20, consumer, KEYS[:1]),
                              "store": {"type": "env_file", "path": str(env20), "key": "X"}})
    assert out["_rc"] == 1 and "mutually exclusive" in out["msg"]
    out = run_module(capsys, {"secrets": items(env20, consumer, ["TOKEN_01", "TOKEN_01"])})
    assert out["_rc"] == 1 and "repeated: token_01" in out["msg"]
    assert env20.read_bytes() == before
    assert_no_value(out, [])


def test_revoke_only_batch_waits_one_grace(capsys, env20, consumer):
    import time

    out = run_module(capsys, {"secrets": items(env20, consumer, KEYS[:4])})
    assert out["_rc"] == 0, out.get("msg")
    started = time.monotonic()
    out = run_module(capsys, {"secrets": [{"name": k, "store": {"type": "env_file", "path": str(env20), "key": k}}
                                          for k in KEYS[:4]], "revoke_only": True, "revoke_grace": 1})
    elapsed = time.monotonic() - started
    assert out["_rc"] == 0, out.get("msg")
    assert 1.0 <= elapsed < 2.5, elapsed  # one grace for the batch, not one per secret (4 s)
    assert all([s["step"] for s in r["steps"]] == ["create", "grace", "revoke"] for r in out["results"])
    assert all(r["stage"] == "revoked" and r["revoked_fingerprint"] == fp(old_value(r["name"])) for r in out["results"])
    assert out["changed"] is True
    assert not any(f"{k}_PREVIOUS" in env_values(env20) for k in KEYS[:4])
