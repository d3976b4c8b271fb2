"""Running a module's service in the controller process (plugins/plugin_utils/in_process.py)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError
from ansible_collections.tradeops.remediation.plugins.plugin_utils import in_process

SPEC = {
    "targets": {"type": "list", "elements": "dict", "required": True,
                "options": {"name": {"type": "str"}, "token": {"type": "str", "no_log": True}}},
    "timeout": {"type": "float", "default": 10.0},
}


def test_every_no_log_value_is_removed_from_the_result_and_its_warnings():
    def run(params, check_mode, diff):
        token = params["targets"][0]["token"]
        return ({"changed": True, "targets": [{"name": "e1", "error": f"POST refused with {token}"}]},
                [f"warned about {token}"], None)

    out = in_process.run_service(SPEC, run, {"targets": [{"name": "e1", "token": "s3cr3t-tok"}]})
    assert "s3cr3t-tok" not in repr(out)
    assert out["changed"] is True and "failed" not in out
    assert out["targets"][0]["error"].startswith("POST refused with ") and out["warnings"][0].startswith("warned")
    # what the call was given, as a module reports it: the token there too is removed
    assert out["invocation"]["module_args"]["targets"][0]["name"] == "e1"
    assert out["invocation"]["module_args"]["timeout"] == 10.0


def test_invalid_arguments_fail_naming_the_option_and_nothing_runs():
    ran = []
    out = in_process.run_service(SPEC, lambda *a: ran.append(a), {"targets": [{"name": "e1"}], "timeout": "soon"},
                                 error_prefix="halt_trading: ")
    assert out["failed"] is True and ran == []
    assert out["msg"].startswith("halt_trading: ") and "timeout" in out["msg"]


def test_a_failure_message_and_a_call_level_error_fail_the_task():
    out = in_process.run_service(SPEC, lambda p, c, d: ({"changed": True}, [], "could not verify e1"),
                                 {"targets": [{"name": "e1"}]})
    out.pop("invocation")
    assert out == {"changed": True, "failed": True, "msg": "could not verify e1"}

    def refuse(params, check_mode, diff):
        raise TradeopsError("targets is empty")

    out = in_process.run_service(SPEC, refuse, {"targets": [{"name": "e1"}]}, error_prefix="halt_trading: ")
    out.pop("invocation")
    assert out == {"changed": False, "failed": True, "msg": "halt_trading: targets is empty"}


def test_check_mode_and_diff_reach_the_service():
    seen = []
    in_process.run_service(SPEC, lambda p, c, d: seen.append((c, d)) or ({}, [], None), {"targets": []},
                           check_mode=True, diff=True)
    assert seen == [(True, True)]


class Templar:
    def template(self, value):
        return value.replace("{{ ansible_playbook_python }}", sys.executable)


def action(transport="local", delegate_to="localhost"):
    return SimpleNamespace(_connection=SimpleNamespace(transport=transport), _task=SimpleNamespace(
        delegate_to=delegate_to), _templar=Templar())


def delegated(interpreter, **extra):
    return dict(extra, ansible_delegated_vars={"localhost": {"ansible_python_interpreter": interpreter}})


def test_only_a_local_task_with_the_controllers_own_python_runs_here():
    assert in_process.runs_on_controller(action(), delegated(sys.executable))
    assert in_process.runs_on_controller(action(), delegated("{{ ansible_playbook_python }}"))
    # not delegated: the host's own variables decide
    assert in_process.runs_on_controller(action(delegate_to=None), {"ansible_python_interpreter": sys.executable})
    # another Python (its libraries may differ), one Ansible would discover, another connection, or switched off
    assert not in_process.runs_on_controller(action(), delegated("/usr/bin/python3-other"))
    assert not in_process.runs_on_controller(action(), delegated(None))
    assert not in_process.runs_on_controller(action(transport="ssh"), delegated(sys.executable))
    assert not in_process.runs_on_controller(action(), delegated(sys.executable, tradeops_run_on_controller=False))
    assert not in_process.runs_on_controller(action(), delegated(sys.executable, tradeops_run_on_controller="no"))


def test_the_fast_no_log_removal_gives_exactly_what_ansibles_remove_values_gives():
    import datetime
    import random

    from ansible.module_utils.common.parameters import remove_values

    rng = random.Random(7)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/="
    secrets = ["".join(rng.choice(alphabet) for _ in range(rng.choice((8, 12, 56, 88)))) for _ in range(300)]
    # overlapping values (one inside another, one a prefix of another), a numeric one, one with the mask's stars
    secrets += ["hunter2hunter2", "hunter2", "4242", "***x***", "pass"]
    accounts = [{"name": f"acct-{i}", "api_key": secrets[2 * i], "secret": secrets[2 * i + 1], "port": 4242 + i,
                 "ratio": 0.4242, "ok": True, "none": None} for i in range(100)]
    result = {
        "accounts": accounts,
        "errors": [f"acct-{i}: refused key {secrets[2 * i]}; retry with {secrets[2 * i + 1][:5]}" for i in range(100)],
        "tuple": ("hunter2hunter2 and hunter2", b"bytes with pass inside", 424242),
        "set": {"pass", "passport", "nothing"},
        "stars": "a***x***b", "exact": secrets[5], "plain": "no secret here at all",
        "nested": [[{"deep": ["x" + secrets[9] + "y", 9.4242]}]],
    }
    assert in_process.without_no_log(result, secrets) == remove_values(result, secrets)
    # no value to remove, an empty value, a type remove_values treats itself: the same as remove_values
    assert in_process.without_no_log(result, []) == remove_values(result, [])
    assert in_process.without_no_log(result, ["", "pass"]) == remove_values(result, ["", "pass"])
    when = {"at": datetime.datetime(2026, 12, 5), "key": "pass-word"}
    assert in_process.without_no_log(when, ["pass"]) == remove_values(when, ["pass"])
    # and it does remove them
    masked = repr(in_process.without_no_log(result, secrets))
    assert not any(s in masked for s in secrets[:300])
