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


class CountingDict(dict):
    """A fleet-wide result: counts how often its keys are walked."""

    walks = 0

    def items(self):
        CountingDict.walks += 1
        return super().items()


def test_a_result_every_host_holds_is_walked_once_and_its_secrets_still_found():
    # A run_once result or fact is the same object in every host's variables (1,000 engines: 1,000 copies
    # walked once each made the evidence phase take 24 s at 200 engines).
    shared = CountingDict(results=[{"engine": f"eng-{i}", "login_password": f"pw-of-eng-{i}"} for i in range(50)])
    raw = {f"eng-{i}": {"halt_trading_result": shared, "db": {"password": f"own-pw-{i:03d}"}} for i in range(50)}
    CountingDict.walks = 0
    values = known_secret_values(FakeHostVars(raw, {h: {} for h in raw}), list(raw))
    assert CountingDict.walks == 1
    assert values == sorted([f"pw-of-eng-{i}" for i in range(50)] + [f"own-pw-{i:03d}" for i in range(50)])
    # under a secret-looking name, the same container's every value is secret: walked again, found as such
    raw["eng-0"]["vault_secrets"] = shared
    values = known_secret_values(FakeHostVars(raw, {h: {} for h in raw}), list(raw))
    assert "eng-7" in values and "pw-of-eng-7" in values
