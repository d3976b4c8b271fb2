"""playbooks/service_degraded.yml against real labs: the scoped halt, the scoped restart and the scoped resume.

Proof from outside the playbook: the engines' own state (restarts, faults, trading), and the orders table in
PostgreSQL: the scope writes no order from its verified halt to its resume, every engine outside the scope
writes orders all along."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.conftest import ROOT
from tests.helpers.records import read_record

pytestmark = pytest.mark.integration

INCIDENT = "service-degraded"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run(lab, tmp_path, *extra):
    return lab.run_playbook("service_degraded.yml", "-e", f"incident_report_dir={tmp_path}",
                            "-e", f"evidence_dest={tmp_path}/evidence", "-e", "service_degraded_stable_for=2",
                            "-e", "halt_trading_quiesce_seconds=1", *extra)


def trading(lab):
    return sorted(n for n, e in lab.engines_view().items() if e["trading_active"])


def wait_until_failing(lab, probe_names, timeout=15.0):
    """Poll the lab engines' own metrics until each faulted engine shows its symptom (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        view = lab.engines_view()
        if all(view[n]["errors_total"] > 0 for n in probe_names) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def halts(record, phase):
    return [h for h in record["halts"] if h["phase"] == phase]


def test_only_the_failing_engines_are_halted_restarted_and_resumed_while_the_rest_keeps_trading(
        lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    lab.lab.inject("error-rate", ["engine-002"])  # a leak-like cause: a restart clears it
    lab.lab.inject("latency", ["engine-005"])
    wait_until_failing(lab, ["engine-002"])
    proc = run(lab, tmp_path, "-e", "resume_trading_approved=true")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Halting and restarting only: engine-002, engine-005 (4 engines keep trading)" in proc.stdout
    view = lab.engines_view()
    scope, outside = ["engine-002", "engine-005"], ["engine-001", "engine-003", "engine-004", "engine-006"]
    assert {n: view[n]["restarts"] for n in scope} == {"engine-002": 1, "engine-005": 1}
    assert all(view[n]["restarts"] == 0 for n in outside), {n: view[n]["restarts"] for n in outside}
    assert all(view[n]["faults"] == [] for n in scope), {n: view[n]["faults"] for n in scope}
    assert trading(lab) == lab.engines()  # the approved resume brought the scope back

    record = read_record(tmp_path, INCIDENT)
    [contain] = halts(record, "contain")
    [resume] = halts(record, "resume")
    assert sorted(contain["done"]) == scope and contain["failed"] == [] and contain["unverified"] == []
    assert sorted(resume["done"] + resume["already"]) == scope
    assert record["gate"]["status"] == "GO"
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified", record["verdict"]
    [decision] = [a for a in record["actions"] if a["name"] == "scope"]
    assert decision["outcome"] == "scoped" and decision["detail"].startswith("engine-002, engine-005: 2 of 6")

    # the order flow: the scope wrote nothing from its verified halt until its resume; the rest never stopped
    [resume_phase] = [p for p in record["phases"] if p["name"] == "resume"]
    halted_at, resumed_at = epoch(contain["at"]), epoch(resume_phase["start"])  # before the resume's call
    assert resumed_at > halted_at
    for name in scope:
        assert lab.orders_between(name, halted_at, resumed_at) == 0, name
    step = (resumed_at - halted_at) / 4
    for name in outside:
        for i in range(4):  # in every quarter of the halt, not once at its start
            assert lab.orders_between(name, halted_at + i * step, halted_at + (i + 1) * step) > 0, (name, i)


def test_a_dependency_fault_survives_the_restart_and_leaves_only_its_engine_halted(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    lab.lab.inject("dependency-errors", ["engine-003"])  # the cause is elsewhere: a restart cannot clear it
    wait_until_failing(lab, ["engine-003"])
    proc = run(lab, tmp_path, "-e", "service_recovery_rto_seconds=4", "-e", "resume_trading_approved=true")
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "engine-003 is still NO-GO" in proc.stdout, proc.stdout[-4000:]
    view = lab.engines_view()
    assert view["engine-003"]["restarts"] == 1 and view["engine-003"]["faults"] == ["dependency-errors"]
    record = read_record(tmp_path, INCIDENT)
    # the verdict names the scope it halted, not "every engine"
    assert record["verdict"]["text"].startswith(
        "HALTED, NOT RECOVERED in repair: every engine it halted is verified halted (1: engine-003)"), record["verdict"]
    assert "survived it" in record["failure"]["reason"]
    [contain] = halts(record, "contain")
    # the scope stays halted after the failed run, and the other engines keep trading, watched over a window
    lab.assert_stays_halted(["engine-003"], epoch(contain["at"]), window=1.0)
    since = time.time()
    assert all(lab.wait_for_orders(["engine-001", "engine-002", "engine-004"], since=since).values())
    assert trading(lab) == ["engine-001", "engine-002", "engine-004"]


def test_too_many_failing_engines_escalate_to_p0_without_halting_anything(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    lab.lab.inject("error-rate", ["engine-001", "engine-002", "engine-003"])
    wait_until_failing(lab, ["engine-001", "engine-002", "engine-003"])
    proc = run(lab, tmp_path)
    assert proc.returncode != 0
    assert "ESCALATE" in proc.stdout and "Run playbooks/p0_outage.yml" in proc.stdout, proc.stdout[-4000:]
    assert "3 of 4 engines failing (75%), above the 50%" in proc.stdout
    assert trading(lab) == lab.engines()  # a scoped playbook never improvises a fleet-wide halt
    assert all(e["restarts"] == 0 for e in lab.engines_view().values())
    record = read_record(tmp_path, INCIDENT)
    assert record["halts"] == []
    assert record["verdict"]["text"].startswith("REMEDIATION FAILED in identify: ESCALATE to playbooks/p0_outage.yml")


def test_a_healthy_fleet_is_left_alone_and_an_operator_scope_halts_one_strategy_group_only(lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    proc = run(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Every engine is GO: nothing is degraded, nothing to halt." in proc.stdout
    assert trading(lab) == lab.engines()
    record = read_record(tmp_path, INCIDENT)
    assert record["halts"] == [] and record["verdict"]["text"] == "RESOLVED", record["verdict"]

    # a name that is neither an engine nor a group fails before anything is halted
    bad = run(lab, tmp_path / "bad", "-e", "service_degraded_scope=strategy_nosuch", "--tags", "contain")
    assert bad.returncode != 0
    assert "strategy_nosuch is neither a host of this play nor a group holding one" in bad.stdout, bad.stdout[-3000:]
    assert trading(lab) == lab.engines()

    # the operator names a group: the momentum engines (engine-001 and engine-004 in the lab) are halted, verified
    # by the role's own order-flow proof, and nobody else
    since = time.time()
    scoped = run(lab, tmp_path / "group", "-e", "service_degraded_scope=strategy_momentum", "--tags", "contain")
    assert scoped.returncode == 0, scoped.stdout[-4000:]
    assert trading(lab) == ["engine-002", "engine-003", "engine-005", "engine-006"]
    record = read_record(tmp_path / "group", INCIDENT)
    [contain] = halts(record, "contain")
    assert contain["done"] == ["engine-001", "engine-004"]
    lab.assert_stays_halted(["engine-001", "engine-004"], epoch(contain["at"]), window=1.0)
    assert all(lab.wait_for_orders(["engine-002", "engine-003", "engine-005", "engine-006"], since=since).values())


def test_check_mode_changes_nothing(lab_factory, tmp_path):
    """--check with approval: it names the failing engine, and halts, restarts and resumes nothing."""
    lab = lab_factory(engines=4)
    lab.lab.inject("error-rate", ["engine-002"])
    wait_until_failing(lab, ["engine-002"])
    proc = run(lab, tmp_path, "--check", "-e", "resume_trading_approved=true")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "Halting and restarting only: engine-002" in proc.stdout
    view = lab.engines_view()
    assert all(e["restarts"] == 0 for e in view.values())
    assert view["engine-002"]["faults"] == ["error-rate"]
    since = time.time()
    assert all(lab.wait_for_orders(lab.engines(), since=since).values())  # nothing halted


OVERRIDE = """\
all:
  hosts:
    engine-003:
      # misconfigured on purpose: seed 003's GLOBAL halt key (every redis engine honours it), not engine-003's own
      halt_trading_target:
        name: engine-003
        methods:
          - type: redis
            host: "{{ tradeops_lab_redis.host }}"
            port: "{{ tradeops_lab_redis.port }}"
            password: "{{ tradeops_lab_redis.password }}"
            key: emergency_halt
            ttl: 120
        verify:
          url: "{{ tradeops_engine.base_url }}/api/v1/trading/status"
          field: trading_active
          value: false
          resumed_value: true
          headers: {X-Lab-Source: management}
"""


def test_a_scoped_halt_that_reaches_beyond_its_scope_fails_on_the_order_flow(lab_factory, tmp_path):
    """The outside-scope proof: a halt of engine-003 through the fleet-wide key also stops engine-004 (a redis
    engine outside the scope); the orders show it, and the run fails naming engine-004."""
    lab = lab_factory(engines=6)
    assert "redis" in lab.lab.engine("engine-004")["methods"]  # it honours the global key too
    override = tmp_path / "override.yml"
    override.write_text(OVERRIDE)
    proc = run(lab, tmp_path, "-i", str(ROOT / "inventories" / "lab"), "-i", str(override),
               "-e", "service_degraded_scope=engine-003", "--tags", "contain")
    assert proc.returncode != 0
    assert "engine-004 is OUTSIDE the scope and stopped trading with the scoped halt" in proc.stdout, \
        proc.stdout[-4000:]
    assert not lab.engines_view()["engine-004"]["trading_active"]  # what the proof saw: the key reached it
