"""Drive halt_trading's main() with patched module args (as community.hashi_vault does).

The HTTP peer is a real local server that records every request, so "check mode makes no
calls" is asserted on what actually reached the wire, not on a mock.
"""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.tradeops.remediation.plugins.modules import halt_trading

from tests.helpers.http import JsonHandler, LocalServer
from tests.helpers.modules import run_module as run_helper


class RecordingEngine:
    """A minimal engine: POST /halt halts it, GET /status tells the truth. Records requests."""

    def __init__(self):
        self.halted = False
        self.requests = []
        engine = self

        class Handler(JsonHandler):
            def do_GET(self):
                engine.requests.append(("GET", self.path))
                self.reply(200, {"trading_active": not engine.halted})

            def do_POST(self):
                engine.requests.append(("POST", self.path, self.read_body()))
                if self.path == "/halt":
                    engine.halted = True
                elif self.path == "/resume":
                    engine.halted = False
                self.reply(200, {"ok": True})

        self.server = LocalServer(Handler)
        self.url = self.server.url

    def target(self, name="engine-a"):
        return {
            "name": name,
            "verify": {"url": self.url + "/status", "field": "trading_active", "value": False,
                       "resumed_value": True},
            "methods": [{"type": "http", "url": self.url + "/halt", "resume_url": self.url + "/resume"}],
        }

    def posts(self):
        return [r for r in self.requests if r[0] == "POST"]

    def close(self):
        self.server.close()


@pytest.fixture
def engine():
    e = RecordingEngine()
    yield e
    e.close()


def run_module(capsys, args):
    return run_helper(halt_trading, capsys, args)


def test_halts_and_reports_lists(capsys, engine, tmp_path):
    flag = tmp_path / "EMERGENCY_STOP"
    out = run_module(capsys, {"targets": [engine.target(), {"name": "engine-b", "methods": [
        {"type": "file", "path": str(flag)}]}], "reason": "unit test"})
    assert out["_rc"] == 0, out
    assert out["changed"] is True
    assert sorted(out["halted"]) == ["engine-a", "engine-b"]
    assert out["failed_targets"] == [] and out["unverified"] == []
    assert engine.halted and flag.exists()
    # the reason reached the kill switch
    assert json.loads(engine.posts()[0][2]) == {"reason": "unit test"}


def test_second_call_is_idempotent(capsys, engine):
    run_module(capsys, {"targets": [engine.target()]})
    posts_before = len(engine.posts())
    out = run_module(capsys, {"targets": [engine.target()]})
    assert out["changed"] is False
    assert out["already_halted"] == ["engine-a"]
    assert len(engine.posts()) == posts_before, "an already halted engine was sent another halt"


def test_check_mode_sends_no_halt_and_writes_nothing(capsys, engine, tmp_path):
    flag = tmp_path / "EMERGENCY_STOP"
    out = run_module(capsys, {"targets": [engine.target(), {"name": "engine-b", "methods": [
        {"type": "file", "path": str(flag)}]}], "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["_rc"] == 0, out
    assert out["changed"] is True
    assert sorted(out["would_halt"]) == ["engine-a", "engine-b"]
    # only read-only status requests reached the engine; nothing was halted or written
    assert engine.posts() == []
    assert all(r[0] == "GET" for r in engine.requests)
    assert engine.halted is False
    assert not flag.exists()
    assert out["diff"]["before"] == {"engine-a": "trading", "engine-b": "trading"}
    assert out["diff"]["after"] == {"engine-a": "halted", "engine-b": "halted"}


def test_resume_reverses_the_halt(capsys, engine):
    run_module(capsys, {"targets": [engine.target()]})
    out = run_module(capsys, {"targets": [engine.target()], "state": "resumed"})
    assert out["_rc"] == 0, out
    assert out["resumed"] == ["engine-a"] and engine.halted is False
    again = run_module(capsys, {"targets": [engine.target()], "state": "resumed"})
    assert again["changed"] is False and again["already_resumed"] == ["engine-a"]


def test_token_is_never_in_the_output(capsys, engine):
    target = engine.target()
    target["methods"][0]["token"] = "s3cr3t-admin-token-canary"
    target["verify"]["token"] = "s3cr3t-admin-token-canary"
    with patch_module_args({"targets": [target]}):
        with pytest.raises(SystemExit):
            halt_trading.main()
    captured = capsys.readouterr()
    assert "s3cr3t-admin-token-canary" not in captured.out + captured.err


@pytest.mark.parametrize(
    "methods, needle",
    [
        ([{"type": "carrier-pigeon"}], "engine-x): methods[0].type: unknown method 'carrier-pigeon'"),
        ([{"type": "http"}], "engine-x): methods[0].url is required for the http method"),
        ([{"type": "redis", "key": "emergency_halt", "ttl": -5}], "engine-x): methods[0].ttl must be between 1 and"),
        ([], "engine-x): methods is empty"),
        ([{"type": "file", "path": "relative/STOP"}], "engine-x): methods[0].path must be absolute"),
    ],
)
def test_bad_input_names_the_target_and_the_option(capsys, engine, methods, needle):
    out = run_module(capsys, {"targets": [engine.target("engine-ok"), {"name": "engine-x", "methods": methods}]})
    assert out["_rc"] == 1
    assert out["failed"] is True
    assert needle in out["msg"], out["msg"]
    # a mistyped target never stops the others from being halted
    assert out["halted"] == ["engine-ok"] and engine.halted
    assert out["failed_targets"] == ["engine-x"]


def test_bad_global_options_fail_before_any_call(capsys, engine):
    out = run_module(capsys, {"targets": [engine.target()], "timeout": 0})
    assert out["_rc"] == 1 and "timeout: must be between 0.05 and 86400 seconds, got 0" in out["msg"]
    assert engine.requests == []


def test_apply_all_sets_every_durable_flag_even_when_already_halted(capsys, engine, tmp_path):
    flag = tmp_path / "EMERGENCY_STOP"
    target = engine.target()
    target["methods"].append({"type": "file", "path": str(flag)})
    run_module(capsys, {"targets": [target]})
    assert engine.halted and not flag.exists(), "the first verified method stops the chain"
    out = run_module(capsys, {"targets": [target], "apply_all": True})
    assert out["_rc"] == 0 and out["changed"] is True
    assert flag.exists(), "apply_all must put the durable flag in place"
    again = run_module(capsys, {"targets": [target], "apply_all": True})
    assert again["changed"] is False and again["already_halted"] == ["engine-a"]


def test_durable_only_puts_the_flag_in_place_without_asking_the_engine(capsys, engine, tmp_path):
    """An engine that is down (its API would not answer): only the flag is set, read back by itself; nothing is
    sent to the engine's API, not even its status endpoint."""
    flag = tmp_path / "EMERGENCY_STOP"
    target = engine.target()
    target["methods"].append({"type": "file", "path": str(flag)})
    out = run_module(capsys, {"targets": [target], "durable_only": True, "timeout": 5})
    assert out["_rc"] == 0 and out["changed"] is True, out
    assert flag.exists() and engine.requests == [], engine.requests
    [result] = out["targets"]
    assert result["status"] == "halted" and result["verified_by"] == "flag", result
    assert [m["type"] for m in result["methods_tried"]] == ["file"], result
    assert result["durable"] is True
    again = run_module(capsys, {"targets": [target], "durable_only": True, "timeout": 5})
    assert again["changed"] is False and again["already_halted"] == ["engine-a"], again
    assert engine.requests == []


def test_durable_only_fails_a_target_without_a_durable_method_and_still_halts_the_rest(capsys, engine, tmp_path):
    flag = tmp_path / "EMERGENCY_STOP"
    durable = engine.target("engine-a")
    durable["methods"].append({"type": "file", "path": str(flag)})
    api_only = engine.target("engine-b")
    out = run_module(capsys, {"targets": [durable, api_only], "durable_only": True, "timeout": 5})
    assert out["_rc"] == 1 and out["failed_targets"] == ["engine-b"], out
    assert [t["name"] for t in out["targets"]] == ["engine-a", "engine-b"]
    assert "durable_only" in out["targets"][1]["error"] and "engine-b" in out["targets"][1]["error"]
    assert out["halted"] == ["engine-a"] and flag.exists()
    assert engine.requests == [], "an API-only target is failed, not halted through its API"


def test_durable_only_refuses_a_resume_before_any_call(capsys, engine, tmp_path):
    target = engine.target()
    target["methods"].append({"type": "file", "path": str(tmp_path / "EMERGENCY_STOP")})
    out = run_module(capsys, {"targets": [target], "durable_only": True, "state": "resumed"})
    assert out["_rc"] == 1 and "durable_only" in out["msg"] and "state=halted" in out["msg"], out
    assert engine.requests == []


def test_documentation_parses_and_matches_the_argument_spec():
    import yaml

    from tests.unit.plugins.modules.test_health_check import _argspec_shape, _doc_options

    doc = yaml.safe_load(halt_trading.DOCUMENTATION)
    assert _doc_options(doc["options"]) == _argspec_shape(halt_trading.ARGUMENT_SPEC)
    returns = yaml.safe_load(halt_trading.RETURN)
    assert {"held_by", "expires_at", "durable", "hold_summary"} <= set(returns["targets"]["contains"])
    assert "not_durable" in returns
    yaml.safe_load(halt_trading.EXAMPLES)


@pytest.mark.parametrize("args, needle", [
    ({"targets": [{"name": "e", "methods": [{"type": "http", "url": "http://[::1"}]}]},
     "targets[0] (e): methods[0].url is not a valid URL"),
    ({"targets": [{"name": "e", "methods": [{"type": "redis", "key": "k", "port": 99999}]}]},
     "targets[0] (e): methods[0].port must be between 1 and 65535, got 99999"),
    ({"targets": [{"name": "e", "methods": [{"type": "file", "path": "/x/STOP"}]}], "timeout": float("inf")},
     "timeout: must be a finite number of seconds"),
    ({"targets": [{"name": "e", "methods": [{"type": "file", "path": "/x/STOP"}]}], "timeout": float("nan")},
     "timeout: must be a finite number of seconds"),
    ({"targets": [{"name": "e", "methods": [{"type": "file", "path": "/x/STOP"}]}], "timeout": 1e9},
     "timeout: must be between 0.05 and 86400 seconds"),
])
def test_malformed_options_fail_with_the_option_named_and_no_internal_error(capsys, args, needle):
    out = run_module(capsys, args)
    assert out["_rc"] == 1 and out["failed"] is True
    assert needle in out["msg"], out["msg"]
    assert "internal error" not in out["msg"] and "Traceback" not in out["msg"]


@pytest.mark.parametrize("targets", ['"engine-001"', '["engine-001"]'])
def test_targets_that_are_not_dicts_fail_naming_the_option(targets):
    """Through the action plugin, as a playbook runs it (ansible's own message names no option)."""
    import subprocess

    from tests.conftest import ROOT, VENV_BIN, ansible_env

    proc = subprocess.run([str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-m", "tradeops.remediation.halt_trading", "-a", f'{{"targets": {targets}}}'],
                          cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "halt_trading: targets must be a list of targets, each a dict with name and methods; got a string " \
           "''engine-001''" in out, out
