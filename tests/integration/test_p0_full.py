"""The whole P0 flow (contain, assess, evidence, repair, verify, gated resume, report) with real
ansible-playbook against real labs. Proof comes from the lab: restart counters, engine state
read from the engines themselves, and orders in PostgreSQL."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest

from tests.helpers.records import postmortem, read_record
from tests.integration.test_p0_outage import recap

pytestmark = pytest.mark.integration


def engines_view(lab):
    return {e["name"]: e for e in lab.lab.engines()}


def all_halted(lab):
    return {n: e for n, e in engines_view(lab).items() if e["trading_active"]}


def reports(tmp_path):
    return sorted(tmp_path.glob("p0-*.json"))


def outcome(report):
    """The latest outcome of each repaired component, as the record keeps it."""
    return {r["target"]: r["outcome"] for r in report["repairs"]}


def run(lab, tmp_path, playbook, *extra):
    return lab.run_playbook(playbook, "-e", f"incident_report_dir={tmp_path}",
                            "-e", f"evidence_dest={tmp_path}/evidence",
                            "-e", "halt_trading_quiesce_seconds=1", "-e", "health_gate_stable_for=2",
                            "-e", "halt_trading_timeout=4", *extra)


def test_crashed_and_hung_engines_are_restarted_and_reach_go_healthy_ones_are_not(lab_factory, tmp_path):
    lab = lab_factory(engines=6, faults={"engine-002": "crash", "engine-003": "hang"})
    proc = run(lab, tmp_path, "p0_outage.yml")
    assert proc.returncode == 0, proc.stdout[-6000:]
    view = engines_view(lab)
    assert view["engine-002"]["restarts"] == 1 and view["engine-003"]["restarts"] == 1
    assert all(view[n]["restarts"] == 0 for n in ("engine-001", "engine-004", "engine-005", "engine-006"))
    # every engine is back, healthy, and still halted: the resume needs approval
    assert all_halted(lab) == {}
    assert "Resume SKIPPED: no approval" in proc.stdout
    report = read_record(tmp_path, "p0-outage")
    assert report["gate"]["status"] == "GO"
    assert outcome(report) == {"engine-002": "recovered", "engine-003": "recovered"}
    assert report["resume"]["outcome"] == "skipped_not_approved"
    assert report["verdict"]["text"].startswith("RECOVERED: health gate GO, trading HALTED awaiting approval")
    assert (report["verdict"]["outcome"], report["verdict"]["closed"]) == ("resolved", False)
    # the second, strict halt verified every engine, the restarted ones included
    reverify = [h for h in report["halts"] if h["phase"] == "re-verify"][0]
    assert reverify["failed"] == [] and reverify["unverified"] == []
    assert sorted(reverify["done"] + reverify["already"]) == lab.engines()
    # and no engine traded from the end of the contain phase until now
    contained = [h for h in report["halts"] if h["phase"] == "contain"][0]
    since = datetime.fromisoformat(contained["at"].replace("Z", "+00:00")).timestamp()
    for name in lab.engines():
        assert lab.orders_between(name, since, time.time()) == 0, name


def test_a_component_that_cannot_be_repaired_leaves_every_engine_halted(lab_factory, tmp_path):
    lab = lab_factory(engines=4, faults={"engine-002": "unrecoverable"})
    proc = run(lab, tmp_path, "p0_outage.yml", "-e", "service_recovery_rto_seconds=4")
    assert proc.returncode != 0
    assert re.search(r"engine-002 is still NO-GO .*engine-002-health", proc.stdout), proc.stdout[-4000:]
    assert "Trading stays halted" in proc.stdout
    assert engines_view(lab)["engine-002"]["restarts"] == 1
    lab.assert_stays_halted(lab.engines(), time.time() - 3)
    # the run stopped, and the incident report was written before it did, naming the failure
    written = reports(tmp_path)
    assert len(written) == 1, written
    report = read_record(tmp_path, "p0-outage")
    assert report["verdict"]["text"].startswith(
        "HALTED, NOT RECOVERED in repair: every engine it halted is verified halted (4: engine-001, engine-002, "
        "engine-003, engine-004)"), \
        report["verdict"]
    assert report["verdict"]["exit_code"] == 2
    assert report["failure"]["phase"] == "repair" and "engine-002" in report["failure"]["reason"], report["failure"]
    assert report["resume"] is None
    assert [h["phase"] for h in report["halts"]] == ["contain"]
    assert outcome(report) == {"engine-002": "not_recovered"}
    md = postmortem(tmp_path, "p0-outage")
    assert "the run failed in repair: engine-002" in md and "| repair | failed |" in md


def test_resume_never_happens_without_approval(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    halt = run(lab, tmp_path, "p0_outage.yml")
    assert halt.returncode == 0, halt.stdout[-4000:]
    proc = run(lab, tmp_path, "resume_trading.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Resume SKIPPED: no approval" in proc.stdout
    lab.assert_stays_halted(lab.engines(), time.time() - 1.2, window=1.5)


def test_resume_never_happens_after_a_failed_gate_even_with_approval(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    assert run(lab, tmp_path, "p0_outage.yml").returncode == 0
    lab.lab.inject("unrecoverable", engines=["engine-003"])
    proc = run(lab, tmp_path, "resume_trading.yml", "-e", "resume_trading_approved=true",
               "-e", "health_gate_wait_for=3")
    assert proc.returncode != 0
    assert "Health gate closed" in proc.stdout and "engine-003-health" in proc.stdout
    lab.assert_stays_halted(lab.engines(), time.time() - 1)


def test_with_approval_orders_flow_again(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    assert run(lab, tmp_path, "p0_outage.yml").returncode == 0
    started = time.time()
    proc = run(lab, tmp_path, "resume_trading.yml", "-e", "resume_trading_approved=true")
    assert proc.returncode == 0, proc.stdout[-4000:]
    counts = lab.wait_for_orders(lab.engines(), since=started, timeout=10)
    assert all(counts.values()), counts
    assert all(e["trading_active"] for e in engines_view(lab).values())


def test_health_check_changes_nothing(lab_factory, tmp_path):
    lab = lab_factory(engines=3, faults={"engine-001": "crash"})
    proc = lab.run_playbook("health_check.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "NO-GO" in proc.stdout and "engine-001-health" in proc.stdout
    assert all(c["changed"] == 0 for c in recap(proc.stdout).values())
    view = engines_view(lab)
    assert all(e["restarts"] == 0 for e in view.values())
    assert view["engine-001"]["faults"] == ["crash"]
    since = time.time()
    counts = lab.wait_for_orders(["engine-002", "engine-003"], since=since)
    assert all(counts.values())


def test_health_gate_returns_as_soon_as_the_stack_is_stable(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    started = time.time()
    proc = lab.run_playbook("resume_trading.yml", "-e", "health_gate_wait_for=120", "-e", "health_gate_stable_for=2")
    elapsed = time.time() - started
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Health gate open" in proc.stdout
    assert elapsed < 20, f"the gate slept out its deadline: {elapsed:.1f}s"
