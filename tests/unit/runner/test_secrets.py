"""Secret hygiene building blocks: what counts as secret, the child environment, redaction, 0600 files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tradeops.runner.secrets import (
    MASK,
    Redactor,
    Secret,
    SecretFiles,
    child_env,
    looks_secret,
    split_extravars,
)

CANARY = "cnry-8d1e0a55f3"


@pytest.mark.parametrize("name", ["redis_password", "VAULT_TOKEN", "api_key", "AWS_SECRET_ACCESS_KEY",
                                  "db_passwd", "admin_token", "credentials"])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", ["PATH", "halt_trading_timeout", "token_header", "ANSIBLE_VAULT_PASSWORD_FILE",
                                  "SSH_AUTH_SOCK", "passenger", "tokenizer", "resume_trading_approved"])
def test_not_secret_names(name):
    assert not looks_secret(name)


def test_split_extravars_by_wrapper_and_name():
    plain, secret = split_extravars({"reason": "INC-1", "canary": Secret(CANARY), "redis_password": "pw-1234",
                                     "nested": {"a": [1, Secret("inner-secret")]}})
    assert plain == {"reason": "INC-1"}
    assert secret == {"canary": CANARY, "redis_password": "pw-1234", "nested": {"a": [1, "inner-secret"]}}
    assert CANARY not in repr(Secret(CANARY)) and CANARY not in str(Secret(CANARY))


def test_child_env_is_an_allow_list():
    parent = {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_FORKS": "5", "TRADEOPS_LAB_DIR": "/x",
              "AWS_SECRET_ACCESS_KEY": CANARY, "TRADEOPS_API_TOKEN": "tok-" + CANARY,
              "DATABASE_URL": f"postgres://u:{CANARY}@db/x", "RANDOM": "1"}
    env, dropped = child_env(parent, {"ANSIBLE_CONFIG": "/a.cfg"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_FORKS": "5",
                   "TRADEOPS_LAB_DIR": "/x", "ANSIBLE_CONFIG": "/a.cfg"}
    assert CANARY in dropped and "tok-" + CANARY in dropped


def test_redactor_masks_values_everywhere_and_secret_keys():
    r = Redactor([CANARY, "abc"])  # too short to redact by value
    event = {"stdout": f"ok: [{CANARY}]", "event_data": {"res": {"msg": f"x {CANARY} y", "login_password": "pw9",
                                                                "token_header": "X-Admin-Token", "list": [CANARY],
                                                                "no_log": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"}}}
    r.event(event)
    assert CANARY not in str(event)
    assert event["event_data"]["res"]["login_password"] == MASK
    assert event["event_data"]["res"]["token_header"] == "X-Admin-Token"
    assert r.text("abc") == "abc"
    # a secret with characters JSON escapes is found in JSON text too
    quoted = Redactor(['p"w\\d-9'])
    assert quoted.text('{"v": "p\\"w\\\\d-9"}') == '{"v": "' + MASK + '"}'


def test_sweep_redacts_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "leak.json").write_text(f'{{"x": "{CANARY}"}}')
    (tmp_path / "clean.txt").write_text("nothing")
    touched = Redactor([CANARY]).sweep(tmp_path)
    assert touched == [str(tmp_path / "a" / "leak.json")]
    assert CANARY not in (tmp_path / "a" / "leak.json").read_text()


def test_secret_files_are_private_unsafe_and_removed():
    with SecretFiles() as vault:
        path = vault.write_extravars({"canary": CANARY, "tmpl": "{{ lookup('pipe', 'id') }}", "n": 3})
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(vault.dir.stat().st_mode) == 0o700
        from ansible.parsing.yaml.loader import AnsibleLoader

        data = AnsibleLoader(path.read_text()).get_single_data()
        assert data["canary"] == CANARY and data["n"] == 3
        assert "!unsafe" in path.read_text()
        where = vault.dir
    assert not where.exists()


def test_launcher_exports_and_deletes_the_env_file(tmp_path):
    launcher = Path(__file__).resolve().parents[3] / "src" / "tradeops" / "runner" / "_launch.py"
    with SecretFiles() as vault:
        env_file = vault.write_env({"CANARY_ENV": CANARY})
        out = subprocess.run([sys.executable, str(launcher), str(env_file), "--", sys.executable, "-c",
                              "import os; print(os.environ['CANARY_ENV'])"], capture_output=True, text=True,
                             env={"PATH": os.environ["PATH"]}, check=True)
        assert out.stdout.strip() == CANARY
        assert not env_file.exists()
