"""IncidentResult fields and the outcome / exit-code mapping, from job events."""

from __future__ import annotations

import json

from tests.unit.runner import events as ev
from tradeops.runner.result import IncidentResult, phase_of, summarize


def test_phase_of_play_names():
    assert phase_of(ev.PLAYS["contain"]) == "contain"
    assert phase_of("P0 outage | 7 learn: write the incident report") == "learn"
    assert phase_of("Health check | Probe the whole stack, read-only, one-screen summary") == "health check"
    assert phase_of("Data corruption | 2-8 read-only, verified backup, scan") == "read-only"
    assert phase_of(None) == "-"


def test_recovered_and_gate_go_without_approval_is_resolved_awaiting_approval():
    s = summarize(ev.p0_success(), status="successful", rc=0)
    assert (s["outcome"], s["exit_code"]) == ("resolved", 0)
    assert s["awaiting_approval"] and "awaiting approval" in s["verdict"]
    assert s["halted"] == ev.ENGINES and s["not_halted"] == []
    assert s["contained"] == ["engine-001", "engine-003"]
    assert s["restarted"] == s["recovered"] == ["engine-002"] and s["still_nogo"] == []
    assert s["health_gate"] == "GO"
    assert s["hosts"]["engine-002"].halt_status == "already_halted" and s["hosts"]["engine-002"].health == "GO"
    # the timeline leaves out skipped and argument-validation results, keeps order and phases
    phases = [t.phase for t in s["timeline"]]
    assert phases[0] == "contain" and phases[-1] == "verify" and "assess" in phases
    assert all(t.result != "skipped" and not t.task.startswith("Validating") for t in s["timeline"])
    assert ("engine-002", "changed") in [(t.host, t.result) for t in s["timeline"] if t.phase == "repair"]


def test_the_same_without_a_report_comes_from_the_events():
    s = summarize(ev.p0_success(), status="successful", rc=0)
    assert s["recovered"] == ["engine-002"] and s["exit_code"] == 0 and s["health_gate"] == "GO"


def test_repair_that_fails_with_every_engine_halted_is_exit_2():
    s = summarize(ev.p0_repair_fails(), status="failed", rc=2)
    assert (s["outcome"], s["exit_code"]) == ("halted_not_recovered", 2)
    assert s["halted"] == ev.ENGINES
    assert s["still_nogo"] == ["engine-003"] and s["not_recovered"] == ["engine-003"] and s["recovered"] == []
    assert s["failures"][0].host == "engine-003" and "still NO-GO" in s["failures"][0].message


def test_an_engine_not_verified_halted_is_exit_1_even_if_the_playbook_passed():
    s = summarize(ev.contain_only_with_a_dead_engine(), status="successful", rc=0)
    assert (s["outcome"], s["exit_code"]) == ("remediation_failed", 1)
    assert s["not_halted"] == ["engine-002"] and "engine-002" in s["verdict"]


def test_bad_input_check_and_cancel():
    nothing = [{"event": "verbose", "counter": 1, "stdout": "[WARNING]: Unable to parse /x as an inventory source"},
               ev.stats([])]
    s = summarize(nothing, status="successful", rc=0)
    assert (s["outcome"], s["exit_code"]) == ("bad_input", 3) and "no host matched" in s["verdict"]
    assert summarize([ev.stats([])], status="failed", rc=4)["exit_code"] == 3
    assert summarize(ev.p0_success(), status="successful", rc=0, check=True)["outcome"] == "checked"
    assert summarize(ev.p0_success(), status="failed", rc=2, check=True)["exit_code"] == 1
    canceled = summarize(ev.p0_success()[:3], status="canceled", rc=254)
    assert (canceled["outcome"], canceled["exit_code"]) == ("canceled", 1)
    assert canceled["halted"] == ["engine-001", "engine-003"]


def test_health_check_nogo_without_halts_is_exit_1():
    events = [ev.play("assess"), ev.health("assess", {"engine-001-health": "NO-GO"}), ev.stats(["engine-001"])]
    s = summarize(events, status="successful", rc=0)
    assert s["exit_code"] == 1 and s["still_nogo"] == ["engine-001"]


def test_result_round_trips_through_json(tmp_path):
    s = summarize(ev.p0_success(), status="successful", rc=0)
    r = IncidentResult(run_id="r1", incident="p0_outage", playbook="p.yml", status="successful", rc=0, **s)
    path = tmp_path / "result.json"
    path.write_text(r.to_json())
    back = IncidentResult.load(path)
    assert back.timeline == r.timeline and back.hosts == r.hosts and back.failures == r.failures
    assert back.exit_code == 0 and json.loads(path.read_text())["timeline"][0][1] == "contain"
