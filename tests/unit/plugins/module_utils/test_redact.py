"""The one redaction helper every module_utils class uses."""

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_integrity, _probes, _secrets
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import (
    MIN_VALUE_LENGTH,
    TextRedactor,
    looks_secret,
    redact,
    redact_text,
    secret_values,
)


def test_secrets_are_replaced_in_nested_values_and_others_kept():
    out = redact({"msg": "auth pw=hunter2 failed", "items": ["hunter2", 3], "n": None}, ["hunter2"])
    assert out == {"msg": "auth pw=******** failed", "items": ["********", 3], "n": None}


def test_empty_values_are_ignored_and_longer_secrets_go_first():
    assert redact("abc", ["", None]) == "abc"
    # "tok" is a prefix of the longer secret: the longer one must not be half-revealed
    assert redact("tokLONGER tok", ["tok", "tokLONGER"]) == "******** ********"


def test_every_service_uses_the_same_helper():
    assert _probes.redact is _pg_integrity.redact is _secrets.redact is redact


# ---- free text (evidence): every form of issue 13 item 4, each with a canary and its context ----

FORMS = [
    # the quoted value used to stay after the marker: token=<redacted>"CANARY"
    ('2024 INFO login token="CANARY-1" user=bob', '2024 INFO login token=<redacted> user=bob'),
    ("app password='CANARY-2' --region eu", "app password=<redacted> --region eu"),
    ('app --db-password="CANARY-3" --region eu', "app --db-password=<redacted> --region eu"),
    ('app --db-password="CAN ARY-3b" -v', "app --db-password=<redacted> -v"),
    # a flag and its value separated by whitespace
    ("app --admin-token CANARY-4 --region eu", "app --admin-token <redacted> --region eu"),
    ("app --admin-token 'CAN ARY-4b' --region eu", "app --admin-token <redacted> --region eu"),
    # header values, the whole scheme + credential
    ('curl -H "Authorization: Bearer CANARY-5" http://h/x', 'curl -H "Authorization: <redacted> http://h/x'),
    ("Authorization: Basic CANARY-6", "Authorization: <redacted>"),
    ("requirepass CANARY-6c\nmaxmemory 1gb", "requirepass <redacted>\nmaxmemory 1gb"),
    ("setenv VAULT_TOKEN CANARY-6d", "setenv VAULT_TOKEN <redacted>"),
    ("12:00 DEBUG headers Authorization: Bearer CANARY-6b id=7", "12:00 DEBUG headers Authorization: <redacted> id=7"),
    # JSON string values of secret-looking keys (also compact, and JSON inside a JSON string)
    ('{"X-Admin-Token": "CANARY-7", "X-Lab-Source": "management"}',
     '{"X-Admin-Token": <redacted>, "X-Lab-Source": "management"}'),
    ('{"api_key":"CANARY-7b","n":1}', '{"api_key":<redacted>,"n":1}'),
    ('{"msg": "sent {\\"token\\": \\"CANARY-7c\\"} ok"}', '{"msg": "sent {\\"token\\": <redacted>} ok"}'),
    ('{"password": "CAN\\"ARY-7d", "n": 1}', '{"password": <redacted>, "n": 1}'),
    ("{'secret_id': 'CANARY-7e', 'role_id': 'r1'}", "{'secret_id': <redacted>, 'role_id': 'r1'}"),
    # YAML values and blocks
    ("db:\n  password: CANARY-8 with spaces\n  pool: 5", "db:\n  password: <redacted>\n  pool: 5"),
    ("admin:\n  api_key: >-\n    CANARY-8b\n    CANARY-8c\nlog_level: info",
     "admin:\n  api_key: <redacted>\nlog_level: info"),
    ("secrets:\n  main: CANARY-8d\n  - CANARY-8e\nlog_level: info", "secrets:<redacted>\nlog_level: info"),
    # names without word boundaries
    ("ADMIN_PW=CANARY-9", "ADMIN_PW=<redacted>"),
    ("MYSQL_PWD=CANARY-10", "MYSQL_PWD=<redacted>"),
    ("HMAC_SALT=CANARY-11", "HMAC_SALT=<redacted>"),
    ("ANSIBLE_HASHI_VAULT_SECRET_ID=CANARY-11b", "ANSIBLE_HASHI_VAULT_SECRET_ID=<redacted>"),
    ("x dbPassword=CANARY-11c y", "x dbPassword=<redacted> y"),
    # shell: declare -x / export lines, commented lines, quoted across lines
    ('declare -x VAULT_TOKEN="CANARY-12"', "declare -x VAULT_TOKEN=<redacted>"),
    ("export API_TOKEN='CANARY-13' # rotated", "export API_TOKEN=<redacted>"),
    ("# DB_PASSWORD=CANARY-13b", "# DB_PASSWORD=<redacted>"),
    ('PRIVATE_KEY="-----BEGIN PRIVATE KEY-----\nCANARY-13c\n-----END PRIVATE KEY-----"\nLOG_LEVEL=info',
     "PRIVATE_KEY=<redacted>\nLOG_LEVEL=info"),
    # values continued by a trailing backslash
    ("SIGNING_SECRET=CANARY-14\\\nCANARY-14b\nLOG_LEVEL=info", "SIGNING_SECRET=<redacted>\nLOG_LEVEL=info"),
    ("run --token=CANARY-15\\\n  CANARY-15b --next", "run --token=<redacted> --next"),
    # URL credentials, private key blocks, & in a query string
    ("error connecting postgres://app:CANARY-16@db:5432/orders id=1",
     "error connecting postgres://app:<redacted>@db:5432/orders id=1"),
    ("GET /x?access_token=CANARY-17&page=2", "GET /x?access_token=<redacted>&page=2"),
    ("-----BEGIN RSA PRIVATE KEY-----\nCANARY-18\n-----END RSA PRIVATE KEY-----\nafter",
     "<redacted>\nafter"),
    # an unterminated quote: to the end of the line, never past it
    ('x token="CANARY-19 and the rest\nnext line', "x token=<redacted>\nnext line"),
]


@pytest.mark.parametrize("text, expected", FORMS, ids=[f"form{i}" for i in range(len(FORMS))])
def test_every_form_redacts_the_whole_value_and_keeps_the_context(text, expected):
    out = redact_text(text)
    assert "CANARY" not in out
    assert out == expected


@pytest.mark.parametrize("text", [
    "token_header=X-Admin-Token",           # names where/what kind of secret, not the secret
    "password_file: /etc/app/pw",
    "auth_method: scram-sha-256",
    "key=emergency_halt:eng-01",
    "key_id=AKIA1234",
    "LOG_LEVEL=info region=eu user=bob",
    "x password reset requested by alice",  # no separator: not a value
])
def test_names_that_do_not_hold_a_secret_are_kept(text):
    assert redact_text(text) == text


def test_known_values_are_redacted_wherever_they_are_and_in_their_encoded_forms():
    values = ["s3cr3t-Val!", 'q"uo\\te', "p@ss/word", "line-one-secret\nline-two-secret"]
    text = ("engine started with s3cr3t-Val! loaded; json {\"v\": \"q\\\"uo\\\\te\"}; "
            "dsn=postgres://u:p%40ss%2Fword@h/db; pem line-two-secret here")
    out = redact_text(text, values, patterns=False)
    assert out == ("engine started with <redacted> loaded; json {\"v\": \"<redacted>\"}; "
                   "dsn=postgres://u:<redacted>@h/db; pem <redacted> here")


def test_min_length_guard_keeps_short_values_from_mangling_the_text():
    assert MIN_VALUE_LENGTH == 4
    text = "table a b ab=1 abc-done"
    assert redact_text(text, ["ab", "a", ""]) == text
    # still caught by pattern where a name says so
    assert redact_text("x pw=ab y", ["ab"]) == "x pw=<redacted> y"
    assert redact_text("x abcd y", ["abcd"], min_length=5) == "x abcd y"
    assert redact_text("x abcd y", ["abcd"]) == "x <redacted> y"


def test_value_and_pattern_spans_are_merged_so_neither_hides_a_secret_from_the_other():
    # the known value is the header name itself: the value after it must still go
    out = redact_text('{"X-Admin-Token": "CANARY-20"}', ["X-Admin-Token"])
    assert "CANARY" not in out and out == '{"<redacted>": <redacted>}'
    # a known value with a space that the pattern would cut in two
    out = redact_text("x token=CANARY-21 CANARY-21b next", ["CANARY-21 CANARY-21b"])
    assert out == "x token=<redacted> next"
    r = TextRedactor(["longer-secret-value", "secret"], marker="#")
    assert r.redact("a longer-secret-value b secret") == "a # b #"


def test_secret_names_match_without_word_boundaries():
    for name in ("ADMIN_PW", "MYSQL_PWD", "HMAC_SALT", "X-Admin-Token", "db-password", "api_key", "apiKey",
                 "secret_id", "ANSIBLE_HASHI_VAULT_SECRET_ID", "TRADEOPS_PGPASSWORD", "pgpassword", "db_pw",
                 "login_password", "Authorization", "session_cookie", "DATABASE_DSN", "aws_creds"):
        assert looks_secret(name), name
    for name in ("token_header", "password_file", "key", "key_id", "auth_method", "key_column", "LOG_LEVEL",
                 "ansible_ssh_private_key_file", "secret_rotation_secrets_path"):
        assert not looks_secret(name), name


def test_secret_values_at_any_depth_of_dicts_and_lists():
    data = {
        "halt_trading_target": {"name": "eng-1", "methods": [
            {"type": "http", "url": "http://h", "token": "ks-token-1", "token_header": "X-Admin-Token"},
            {"type": "redis", "key": "emergency_halt:eng-1", "password": "redis-pw-1"}]},
        "my_db": {"login_user": "app", "login_password": "db-pw-1"},
        "pgpassword": "pg-pw-1",
        "secrets": {"main": "nested-1", "name": "not-a-secret", "list": ["nested-2", {"path": "/x"}]},
        "short": {"pw": "ab"},
        "flags": {"auth": True, "auth_ttl": 3600},
    }
    assert secret_values(data) == sorted(
        ["ks-token-1", "redis-pw-1", "db-pw-1", "pg-pw-1", "nested-1", "nested-2"])
    assert "ab" in secret_values(data, min_length=1)
