"""alert_run: a firing alert with a plain incident name becomes `tradeops run <incident> --automatic`; anything else
starts nothing, saying why; the alert reaches the run as data (incident_trigger), never as variables."""

from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.alerts import alert_run


def event(status="firing", **labels):
    return {"alert": {"status": status, "fingerprint": "fp1", "startsAt": "2026-12-04T18:00:00Z",
                      "labels": {"alertname": "TradingErrorRateHigh", **labels},
                      "annotations": {"summary": "engine-003: 20%"}}}


def test_a_firing_mapped_alert_runs_its_incident_automatically():
    run = alert_run(event(tradeops_playbook="service_degraded", severity="P1", engine="engine-003",
                          resume_trading_approved="true"), ["tradeops"])
    assert run["refused"] is None and run["incident"] == "service_degraded"
    argv = run["argv"]
    assert argv[:4] == ["tradeops", "run", "service_degraded", "--automatic"]
    assert "--allow-repair" not in argv
    extra = json.loads(argv[argv.index("-e") + 1])
    assert set(extra) == {"incident_trigger", "incident_detected_at"}  # a label never becomes a variable
    assert extra["incident_trigger"]["fingerprint"] == "fp1"
    assert extra["incident_trigger"]["labels"]["engine"] == "engine-003"


def test_repair_only_for_the_allowed_incidents():
    assert "--allow-repair" in alert_run(event(tradeops_playbook="agent_failure"), ["t"], ["agent_failure"])["argv"]
    assert "--allow-repair" not in alert_run(event(tradeops_playbook="p0_outage"), ["t"], ["agent_failure"])["argv"]


@pytest.mark.parametrize("ev,reason", [
    (event(status="resolved", tradeops_playbook="p0_outage"), "a resolved alert starts nothing"),
    (event(), "names no incident playbook"),
    (event(tradeops_playbook="../../tmp/evil"), "is not an incident name"),
    (event(tradeops_playbook="P0 outage; rm -rf /"), "is not an incident name"),
    ({"something": "else"}, "not an alert event"),
])
def test_anything_else_starts_nothing_and_says_why(ev, reason):
    run = alert_run(ev, ["tradeops"])
    assert run["argv"] == [] and reason in run["refused"]


def test_the_command_must_be_an_argv_list():
    with pytest.raises(AnsibleFilterError, match="argv"):
        alert_run(event(tradeops_playbook="p0_outage"), "tradeops run")
