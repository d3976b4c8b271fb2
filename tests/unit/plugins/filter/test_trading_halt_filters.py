"""The trading-halted filters: each engine's status endpoint as one probe, and the runbook's sorting of reasons."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.trading_halt import (
    halt_reason_lines,
    halt_reason_plan,
    halt_status_probes,
)

HOSTVARS = {
    "engine-001": {"tradeops_pnl_status": {"url": "http://127.0.0.1:1/pnl/status", "token": "t0k3n-value",
                                           "token_header": "X-Admin-Token", "timeout": 3, "other": "ignored"}},
    "engine-002": {"tradeops_pnl_status": {"url": "http://127.0.0.1:2/status", "reason_field": "why",
                                           "halted_field": "state.halted", "capture": []}},
    "engine-003": {},
}


def test_one_probe_per_engine_that_has_a_status_endpoint_go_while_it_trades():
    probes = halt_status_probes(list(HOSTVARS), HOSTVARS)
    assert [p["name"] for p in probes] == ["engine-001-halted", "engine-002-halted"]
    first, second = probes
    assert first == {"name": "engine-001-halted", "component": "engine-001", "type": "http",
                     "url": "http://127.0.0.1:1/pnl/status", "token": "t0k3n-value", "token_header": "X-Admin-Token",
                     "timeout": 3, "field": "halted", "value": False,
                     "capture": ["haltReason", "pnl", "dailyTarget", "dailyLossLimit", "riskRejections"]}
    assert (second["field"], second["capture"]) == ("state.halted", ["why", "pnl"])


@pytest.mark.parametrize("config, words", [({"token": "x"}, "must be a dict with at least url"),
                                           ("http://x", "must be a dict with at least url")])
def test_a_status_endpoint_without_url_is_an_error_naming_the_host(config, words):
    with pytest.raises(AnsibleFilterError, match="engine-009.tradeops_pnl_status " + words):
        halt_status_probes(["engine-009"], {"engine-009": {"tradeops_pnl_status": config}})


def probe(name, value, reason=None, pnl=None, captured=True):
    result = {"name": name + "-halted", "component": name, "status": "GO" if value is False else "NO-GO",
              "value": value, "message": "answered"}
    if captured:
        result["captured"] = {"haltReason": reason, "pnl": pnl}
    return result


def test_the_plan_sorts_engines_by_what_the_runbook_does_about_their_reason():
    result = {"probes": [probe("e1", False), probe("e2", True, "daily_loss_limit", -5250.0),
                         probe("e3", True, "daily_target_reached", 10250.0), probe("e4", True, "system_error", 3.0),
                         probe("e5", True, "manual"), probe("e6", None, captured=False)]}
    plan = halt_reason_plan(result)
    assert (plan["trading"], plan["critical"], plan["normal"], plan["other"], plan["unreadable"]) == (
        ["e1"], ["e2"], ["e3"], ["e4", "e5"], ["e6"])
    assert plan["engines"]["e2"]["pnl"] == -5250.0 and plan["engines"]["e2"]["halted"] is True
    lines = halt_reason_lines(plan)
    assert lines[0] == "e2: daily_loss_limit (pnl -5250.0) - CRITICAL: kept halted, escalated"
    assert "e3: daily_target_reached (pnl 10250.0) - normal operation: reported, left alone" in lines
    assert "e5: manual - diagnosed; resumed only through the gated resume" in lines
    assert lines[-1] == "1 engine(s) trading"


def test_the_reasons_are_the_callers_to_choose():
    result = {"probes": [probe("e1", True, "daily_loss_limit"), probe("e2", True, "manual")]}
    plan = halt_reason_plan(result, normal=["manual"], critical=[])
    assert (plan["normal"], plan["other"], plan["critical"]) == (["e2"], ["e1"], [])
