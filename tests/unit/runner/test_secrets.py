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
    secret_leaves,
    split_extravars,
    unwrap,
)

CANARY = "cnry-8d1e0a55f3"


@pytest.mark.parametrize("name", [
    "redis_password", "VAULT_TOKEN", "api_key", "AWS_SECRET_ACCESS_KEY", "db_passwd", "admin_token", "credentials",
    # without word boundaries, and the forms issue 13 found in clear in the run directory
    "pgpassword", "db_pw", "TRADEOPS_PGPASSWORD", "ANSIBLE_HASHI_VAULT_SECRET_ID", "login_password",
    "ADMIN_PW", "MYSQL_PWD", "HMAC_SALT", "session_cookie", "sessionid", "session_id", "csrftoken", "apiKey",
    "X-Api-Key", "private_key", "Authorization", "basic_auth", "client_secret", "ansible_become_pass", "creds",
    "DATABASE_DSN", "ADMIN_TOKEN_PENDING", "secret_value", "password2", "db_password_primary", "password_for_db",
])
def test_secret_names(name):
    assert looks_secret(name)


@pytest.mark.parametrize("name", [
    "PATH", "halt_trading_timeout", "token_header", "ANSIBLE_VAULT_PASSWORD_FILE", "SSH_AUTH_SOCK", "passenger",
    "tokenizer", "resume_trading_approved",
    # ordinary names the playbooks need, that contain a secret word or end like one
    "health_gate_passed", "secret_rotation_staging", "secret_rotation_concurrency", "key", "key_column",
    "pending_key", "redis_key", "monkey", "author", "bypass_cache", "compass", "auth_method", "secret_name",
    "credential_type", "token_id", "key_id", "private_key_file", "session_role", "invalidate_sessions_db",
    "password_length", "PWD", "OLDPWD",
])
def test_not_secret_names(name):
    assert not looks_secret(name)


def test_role_options_look_secret_exactly_when_they_are_no_log():
    """No over-match of the names the playbooks need: every role option whose name looks secret is a no_log
    option, and every no_log option looks secret. The one exception holds secret specs (their names, paths and
    store keys stay plain, see test_split_extravars_at_every_depth)."""
    import yaml

    containers = {"secret_rotation_secrets"}
    seen = 0
    for spec in sorted((Path(__file__).resolve().parents[3] / "roles").glob("*/meta/argument_specs.yml")):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            for name, option in (entry.get("options") or {}).items():
                seen += 1
                if name not in containers:
                    assert looks_secret(name) == bool(option.get("no_log")), f"{spec.parts[-3]}: {name}"
    assert seen > 50


def test_split_extravars_at_every_depth():
    plain, secret = split_extravars({
        "reason": "INC-1", "canary": Secret(CANARY), "redis_password": "pw-1234", "pgpassword": "pg-1234",
        "db_pw": "dbpw-1234", "nested": {"a": [1, Secret("inner-secret")]},
        "my_db": {"host": "db.internal", "port": 5432, "login_password": "deep-1234"},
        "halt": {"methods": [{"type": "redis", "key": "emergency_halt"}]},
    })
    assert plain == {"reason": "INC-1", "halt": {"methods": [{"type": "redis", "key": "emergency_halt"}]}}
    assert set(secret) == {"canary", "redis_password", "pgpassword", "db_pw", "nested", "my_db"}
    assert unwrap(secret["nested"]) == {"a": [1, "inner-secret"]}
    # only the secret values are redacted by value: the host and port of my_db are not
    assert sorted(secret_leaves(secret)) == sorted([CANARY, "pw-1234", "pg-1234", "dbpw-1234", "inner-secret",
                                                    "deep-1234"])
    assert sorted(secret_leaves({"credentials": {"user": "ops", "password": "x-1234", "extra": ["e-1234"]}})) == \
        ["e-1234", "x-1234"]
    assert CANARY not in repr(Secret(CANARY)) and CANARY not in str(Secret(CANARY))


def test_child_env_is_an_allow_list():
    parent = {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_FORKS": "5", "TRADEOPS_LAB_DIR": "/x",
              "AWS_SECRET_ACCESS_KEY": CANARY, "TRADEOPS_API_TOKEN": "tok-" + CANARY,
              "DATABASE_URL": f"postgres://u:{CANARY}@db/x", "RANDOM": "1", "PWD": "/work",
              "TRADEOPS_PGPASSWORD": "pg-" + CANARY, "ANSIBLE_HASHI_VAULT_SECRET_ID": "sid-" + CANARY}
    env, secret_env, dropped = child_env(parent, {"ANSIBLE_CONFIG": "/a.cfg"})
    assert env == {"PATH": "/usr/bin", "HOME": "/root", "LC_ALL": "C", "ANSIBLE_FORKS": "5",
                   "TRADEOPS_LAB_DIR": "/x", "ANSIBLE_CONFIG": "/a.cfg"}
    # allow-listed but secret: passed like --secret-env (a 0600 file), never in the recorded environment
    assert secret_env == {"TRADEOPS_API_TOKEN": "tok-" + CANARY, "TRADEOPS_PGPASSWORD": "pg-" + CANARY,
                          "ANSIBLE_HASHI_VAULT_SECRET_ID": "sid-" + CANARY}
    assert dropped == [CANARY]


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
        _, secret = split_extravars({"canary": Secret(CANARY), "tmpl": Secret("{{ lookup('pipe', 'id') }}"),
                                     "n": Secret(3), "my_db": {"host": "{{ db_host }}", "login_password": "{{ x }}"}})
        path = vault.write_extravars(secret)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(vault.dir.stat().st_mode) == 0o700
        from ansible.parsing.yaml.loader import AnsibleLoader

        text = path.read_text()
        data = AnsibleLoader(text).get_single_data()
        assert data["canary"] == CANARY and data["n"] == 3
        assert data["my_db"] == {"host": "{{ db_host }}", "login_password": "{{ x }}"}
        # secret values are never templated; the var's other values are, as in any -e
        assert '"canary": !unsafe' in text and '"tmpl": !unsafe' in text
        assert '"login_password": !unsafe' in text and '"host": "{{ db_host }}"' in text
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
