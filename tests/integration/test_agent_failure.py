"""playbooks/agent_failure.yml against real labs: one crash-looping engine halted alone, diagnosed from its host,
restarted, rolled back to its previous release when the restart does not hold, and resumed after its gate.

Proof from outside the playbook: the engine's release link and its own report of its release and faults, the
other engines' restarts, and the orders table (the engine wrote no order from its verified halt to its resume;
every other engine traded all along)."""

from __future__ import annotations

import os
import time
from datetime import datetime

import pytest

from tests.helpers.records import read_record

pytestmark = pytest.mark.integration

INCIDENT = "agent-failure"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run(lab, tmp_path, *extra):
    return lab.run_playbook("agent_failure.yml", "-e", f"incident_report_dir={tmp_path}",
                            "-e", f"evidence_dest={tmp_path}/evidence", "-e", "agent_failure_rto_seconds=8",
                            "-e", "agent_failure_restart_stable_for=3", "-e", "agent_failure_stable_for=2",
                            "-e", "halt_trading_quiesce_seconds=1", *extra)


def wait_for(predicate, what, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_crash_looping_engine_is_halted_alone_diagnosed_and_rolled_back_while_the_rest_trades(
        lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    lab.lab.inject("crash-loop", ["engine-003"])  # a bad release: a restart does not hold, a rollback does
    link = lab.dir / "engines" / "engine-003" / "current"
    assert os.readlink(link).endswith("1.5.0")
    wait_for(lambda: lab.engines_view()["engine-003"]["restarts"] >= 2, "engine-003 to restart in a loop")

    proc = run(lab, tmp_path, "-e", "resume_trading_approved=true")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Halting and restarting only: engine-003 (5 engines keep trading)" in proc.stdout
    assert "Point the release link at the previous release" in proc.stdout

    view = lab.engines_view()
    assert os.readlink(link).endswith("releases/1.4.2")  # rolled back on its host
    assert view["engine-003"]["release"] == "1.4.2" and view["engine-003"]["faults"] == []
    assert view["engine-003"]["trading_active"]  # the approved resume brought it back
    others = [n for n in view if n != "engine-003"]
    assert all(view[n]["restarts"] == 0 and view[n]["trading_active"] for n in others)

    record = read_record(tmp_path, INCIDENT)
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified", record["verdict"]
    [diagnosis] = [a for a in record["actions"] if a["name"] == "diagnosis engine-003"]
    assert diagnosis["outcome"] == "engine"  # PostgreSQL and Redis reachable from its host: the engine itself
    assert "crash loop" in diagnosis["detail"] and "from its host: GO" in diagnosis["detail"], diagnosis
    [contain] = [h for h in record["halts"] if h["phase"] == "contain"]
    assert contain["done"] == ["engine-003"] or contain["unverified"] == ["engine-003"], contain
    [resume_phase] = [p for p in record["phases"] if p["name"] == "resume"]
    halted_at, resumed_at = epoch(contain["at"]), epoch(resume_phase["start"])
    assert lab.orders_between("engine-003", halted_at, resumed_at) == 0
    step = (resumed_at - halted_at) / 4
    for name in others:
        for i in range(4):  # in every quarter of the incident, not once
            assert lab.orders_between(name, halted_at + i * step, halted_at + (i + 1) * step) > 0, (name, i)


def test_two_failing_engines_are_not_a_single_agent_failure_and_nothing_is_halted(lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    lab.lab.inject("unrecoverable", ["engine-001", "engine-004"])
    proc = run(lab, tmp_path)
    assert proc.returncode != 0
    assert "not a single agent failure; run playbooks/service_degraded.yml" in proc.stdout, proc.stdout[-4000:]
    view = lab.engines_view()
    assert all(e["trading_active"] and e["restarts"] == 0 for e in view.values())
    record = read_record(tmp_path, INCIDENT)
    assert record["halts"] == []


def test_check_mode_changes_nothing(lab_factory, tmp_path):
    """--check with approval: it names the engine, and halts, restarts and rolls back nothing."""
    lab = lab_factory(engines=4)
    lab.lab.inject("crash-loop", ["engine-003"])
    link = lab.dir / "engines" / "engine-003" / "current"
    wait_for(lambda: lab.engines_view()["engine-003"]["restarts"] >= 2, "engine-003 to restart in a loop")
    proc = run(lab, tmp_path, "--check", "-e", "resume_trading_approved=true")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Halting and restarting only: engine-003" in proc.stdout
    assert os.readlink(link).endswith("1.5.0")  # not rolled back
    view = lab.engines_view()
    assert view["engine-003"]["faults"] == ["crash-loop"] and view["engine-003"]["halt_source"] is None
    others = ["engine-001", "engine-002", "engine-004"]
    assert all(view[n]["restarts"] == 0 for n in others)
    since = time.time()
    assert all(lab.wait_for_orders(others, since=since).values())
