"""The evidence role's filters: which secret values a run knows (plugins/filter/redact.py)."""

from __future__ import annotations

from ansible_collections.tradeops.remediation.plugins.filter.redact import known_secret_values, redact_pattern_error


class FakeHostVars(dict):
    """hostvars as Ansible gives it: raw_get() untemplated, [host][var] templated."""

    def __init__(self, raw, templated):
        super().__init__(templated)
        self.raw = raw
        self.templated_vars = []

    def raw_get(self, host):
        return self.raw[host]

    def __getitem__(self, host):
        hostvars = self

        class Vars(dict):
            def __getitem__(self, name):
                hostvars.templated_vars.append((host, name))
                return super().__getitem__(name)
        return Vars(dict.__getitem__(self, host))


def test_every_host_every_depth_templated_only_where_a_secret_is_a_template():
    raw = {
        "eng-1": {"halt_trading_target": {"methods": [{"type": "http", "token": "ks-token-eng-1"}]},
                  "vault_token": "{{ lookup('env', 'VAULT_TOKEN') }}",
                  "urls": ["{{ groups['all'] | map('extract', hostvars) }}"],
                  "groups": {"secret_hosts": ["eng-1"]}},
        "eng-2": {"tradeops_lab_postgres": {"login_password": "db-pw-shared"},
                  "broken_password": "{{ undefined_var }}"},
    }
    templated = {"eng-1": {"vault_token": "vault-from-env"}, "eng-2": {}}
    hv = FakeHostVars(raw, templated)
    values = known_secret_values(hv, ["eng-1", "eng-2"], extra=["no-log-extra", "x"])
    assert values == sorted(["ks-token-eng-1", "vault-from-env", "db-pw-shared", "no-log-extra"])
    # only the variable whose secret is a template was templated (the urls never: no secret in them);
    # a template that fails holds nothing to redact
    assert hv.templated_vars == [("eng-1", "vault_token"), ("eng-2", "broken_password")]


def test_min_length_and_pattern():
    hv = FakeHostVars({"h": {"pin": "1234567", "db_pw": "abc", "hmac_salt": "salty-1"}}, {"h": {}})
    assert known_secret_values(hv, ["h"]) == ["salty-1"]
    assert known_secret_values(hv, ["h"], min_length=1) == ["abc", "salty-1"]
    assert known_secret_values(hv, ["h"], pattern="pin") == ["1234567"]


def test_pattern_error_names_the_problem():
    assert redact_pattern_error("pass|secret") == ""
    assert "unterminated" in redact_pattern_error("pass|(secret")
    assert "empty" in redact_pattern_error("pass|")
