"""Real `ansible-playbook playbooks/p0_outage.yml --tags contain` runs against a real lab.

The contain phase alone: the kill switch, the orders proof and the report. (The full flow,
with repair, the health gate and the gated resume, is tested in test_p0_full.py.)

Every assertion is about what a user would see: orders in PostgreSQL stop after each verified
halt (and come back after a resume), engines report trading again, hung or dead engines are
bounded and named. Nothing here is mocked.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import read_json

pytestmark = pytest.mark.integration


def recap(stdout: str) -> dict[str, dict[str, int]]:
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line.strip())
        if m:
            out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


def run_p0(lab, tmp_path, *extra, name="report.json", env=None):
    report = tmp_path / name
    proc = lab.run_playbook("p0_outage.yml", "--tags", "contain", "-e", f"halt_trading_report_path={report}",
                            "-e", "halt_trading_quiesce_seconds=1", *extra, env=env)
    data = read_json(report) if report.exists() else None
    return proc, data


def by_name(report):
    return {t["name"]: t for t in report["result"]["targets"]}


REPORT_ROW = re.compile(r"^\s*- '?(engine-\d{3})\s+(\S+)\s+(\S+)\s+(\d+ ms|-)\s+(\S+)\s")


def report_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The kill-switch role's per-engine report lines, as the user reads them: status, method, orders after."""
    rows = {}
    for line in stdout.splitlines():
        m = REPORT_ROW.match(line)
        if m:
            rows[m.group(1)] = {"status": m.group(2), "method": m.group(3), "orders_after": m.group(5)}
    return rows


def trading_status(engine: dict) -> dict:
    with urllib.request.urlopen(f"http://{engine['host']}:{engine['port']}/api/v1/trading/status", timeout=5) as r:
        return json.loads(r.read())


def assert_no_orders_after_halt(lab, targets, names, watch=0.0):
    """No order of any of ``names`` after its verified halt, at every poll for ``watch`` seconds (an order
    still in flight would show up meanwhile: watching is the proof, not a sleep before one look)."""
    for name in names:
        t = targets[name]
        assert t["halted_at"], f"{name} has no halted_at: {t}"
        # it was trading before: the proof is not vacuous
        assert lab.orders_between(name, t["halted_at"] - 30, t["halted_at"]) > 0, f"{name} never traded"
    deadline = time.monotonic() + watch
    while True:
        for name in names:
            after = lab.orders_after(name, targets[name]["halted_at"])
            assert after == 0, f"{name} wrote {after} orders after its verified halt"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.2)


def task_starts_env(path: Path) -> dict[str, str]:
    """Record every task start, Ansible's implicit ones included (tests/helpers/callback_plugins/task_starts.py)."""
    return {"ANSIBLE_CALLBACK_PLUGINS": str(Path(__file__).parents[1] / "helpers" / "callback_plugins"),
            "ANSIBLE_CALLBACKS_ENABLED": "task_starts", "TRADEOPS_TEST_TASK_STARTS": str(path)}


def test_p0_halts_every_engine_verified_and_orders_stop(lab_factory, tmp_path):
    lab = lab_factory(engines=8)
    starts_log = tmp_path / "task-starts.jsonl"
    proc, report = run_p0(lab, tmp_path, env=task_starts_env(starts_log))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    targets = by_name(report)
    assert sorted(report["result"]["halted"]) == sorted(lab.engines())
    assert all(t["verified"] for t in targets.values())
    # every kill-switch family of the seeds was exercised
    assert {t["method"] for t in targets.values()} == {"http", "redis", "file"}
    assert_no_orders_after_halt(lab, targets, lab.engines(), watch=1.0)
    # the role's own orders check and report reached the user: each engine halted, with zero orders after
    rows = report_rows(proc.stdout)
    assert sorted(rows) == sorted(lab.engines()), proc.stdout[-4000:]
    assert all(r["status"] == "halted" and r["orders_after"] == "0" for r in rows.values()), rows
    assert "8/8 engines halted and verified" in proc.stdout
    assert all(row["orders_after"] == 0 for row in report["orders"])
    # The fleet's roles ran once for the whole fleet, not once per engine. Ansible ends each role run with an
    # implicit task (meta role_complete) for every host that ran the role, in the plays --tags skips too: had the
    # roles run per engine, 8 engines would have started that task 8 times per role, in all 7 plays.
    starts = [json.loads(line) for line in starts_log.read_text().splitlines()]
    roles_run = [s["role"] for s in starts if s["implicit"] and s["meta"] == "role_complete"]
    assert {f"tradeops.remediation.{r}" for r in ("halt_trading", "venue_guard", "notify")} <= set(roles_run), roles_run
    # halt_trading twice, each for the whole fleet: its call, then its proof after the venue's cancel
    runs = {role: roles_run.count(role) for role in roles_run}
    assert runs == {**dict.fromkeys(runs, 1), "tradeops.remediation.halt_trading": 2}, \
        f"a role ran more often than the contain play includes it, or once per engine: {roles_run}"


def test_without_a_venue_account_the_proof_waits_out_the_quiesce_itself(lab_factory, tmp_path):
    """The contain phase cancels at the venue during the engines' quiesce; with no venue account nothing fills it,
    and the proof must wait out the rest itself: the orders are counted only once every engine has had its
    quiesce since its verified halt (an order in flight lands meanwhile), never right after the call."""
    lab = lab_factory(engines=3)
    starts_log = tmp_path / "task-starts.jsonl"
    proc, report = run_p0(lab, tmp_path, "-e", "halt_trading_quiesce_seconds=2",
                          "-e", "venue_guard_host_var=no_venue_account", env=task_starts_env(starts_log))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert ("venue: no exchange account is configured (host var no_venue_account): nothing was sent"
            in " ".join(proc.stdout.split())), proc.stdout[-4000:]
    result = report["result"]
    last_halt = max(t["halted_at"] for t in result["targets"])
    assert result["quiesce_until"] == pytest.approx(last_halt + 2, abs=0.01), result
    starts = [json.loads(line) for line in starts_log.read_text().splitlines()]
    [count] = [s for s in starts if "Count, per engine, the orders written after it was verified halted" in s["name"]]
    # without the proof's own wait, the count starts well within the 2 s (nothing else here takes that long)
    assert count["at"] >= result["quiesce_until"], (count, result["quiesce_until"])
    assert all(row["orders_after"] == 0 for row in report["orders"]), report["orders"]
    assert_no_orders_after_halt(lab, by_name(report), lab.engines(), watch=0.5)


def test_second_run_changes_nothing(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    first, _ = run_p0(lab, tmp_path, name="first.json")
    assert first.returncode == 0, first.stdout[-4000:]
    assert sum(h["changed"] for h in recap(first.stdout).values()) >= 1
    second, report = run_p0(lab, tmp_path, name="second.json")
    assert second.returncode == 0, second.stdout[-4000:]
    counts = recap(second.stdout)
    assert counts and all(c["changed"] == 0 for c in counts.values()), second.stdout[-3000:]
    assert sorted(report["result"]["already_halted"]) == sorted(lab.engines())
    assert report["result"]["halted"] == []


def test_check_mode_leaves_every_engine_trading(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    started = time.time()
    proc = lab.run_playbook("p0_outage.yml", "--tags", "contain", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-4000:]
    # what the run says it would do: halt every engine, each one named; nothing halted
    rows = report_rows(proc.stdout)
    assert {name: r["status"] for name, r in rows.items()} == dict.fromkeys(lab.engines(), "would_halt"), \
        proc.stdout[-4000:]
    assert all(r["method"] == "-" and r["orders_after"] == "-" for r in rows.values()), rows
    for name in lab.engines():
        assert re.search(rf"^-\s+{name}: trading$", proc.stdout, re.M), f"no diff line for {name}"
        assert re.search(rf"^\+\s+{name}: halted$", proc.stdout, re.M), f"no diff line for {name}"
    assert f"0/{len(lab.engines())} engines halted and verified" in proc.stdout
    flat = " ".join(proc.stdout.split())
    assert "Every engine verified halted" not in flat
    assert "Check mode, nothing changed. Would be halted: " + ", ".join(lab.engines()) in flat, flat[-3000:]
    # and what really happened: every engine traded through the run and trades on, and says so
    assert all(lab.orders_between(n, started, time.time()) > 0 for n in lab.engines()), "an engine stopped trading"
    after = time.time()
    counts = lab.wait_for_orders(lab.engines(), since=after, timeout=10)
    assert all(counts.values()), f"an engine stopped trading in check mode: {counts}"
    for engine in lab.state["engines"]:
        assert trading_status(engine) == {"trading_active": True, "mode": "trading"}, engine["name"]
        assert not (lab.dir / "engines" / engine["name"] / "EMERGENCY_STOP").exists()
    assert not any(e["halted"] or e["halted_at"] for e in lab.lab.engines()), lab.lab.engines()
    assert lab.lab.redis_client().keys("emergency_halt*") == []


def test_crashed_engine_is_reported_failed_while_the_others_halt(lab_factory, tmp_path):
    lab = lab_factory(engines=5, faults={"engine-002": "crash"})
    proc, report = run_p0(lab, tmp_path)
    # contain is not strict in p0_outage: what it cannot verify is left to the repair phase
    assert proc.returncode == 0, proc.stdout[-3000:]
    targets = by_name(report)
    assert targets["engine-002"]["status"] in ("failed", "unverified")
    assert "refused" in targets["engine-002"]["error"].lower()
    assert "left to repair): engine-002" in proc.stdout
    others = [e for e in lab.engines() if e != "engine-002"]
    assert sorted(report["result"]["halted"]) == sorted(others)
    assert_no_orders_after_halt(lab, targets, others, watch=0.5)


def test_hung_engine_is_bounded_by_the_timeout(lab_factory, tmp_path):
    lab = lab_factory(engines=5, faults={"engine-001": "hang"})
    proc, report = run_p0(lab, tmp_path, "-e", "halt_trading_timeout=3")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "left to repair): engine-001" in proc.stdout, "a hung engine cannot be verified (its status API hangs)"
    result = report["result"]
    targets = by_name(report)
    hung = targets["engine-001"]
    assert hung["status"] in ("failed", "unverified")
    assert "no answer" in (hung["error"] or "")
    # bounded: the whole fan-out ends within the deadline plus the abandon grace
    assert result["elapsed_ms"] < 3000 + 800, result["elapsed_ms"]
    assert hung["latency_ms"] <= 3000 + 800
    # and the hung engine delayed no one
    for name in lab.engines()[1:]:
        assert targets[name]["status"] == "halted"
        assert targets[name]["latency_ms"] < 2000, (name, targets[name]["latency_ms"])
    assert_no_orders_after_halt(lab, targets, lab.engines()[1:])


@pytest.mark.parametrize("fault", ["killswitch-broken", "killswitch-lies"])
def test_broken_or_lying_api_falls_back_to_the_next_method(lab_factory, tmp_path, fault):
    lab = lab_factory(engines=2, faults={"engine-001": fault})
    proc, report = run_p0(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    target = by_name(report)["engine-001"]
    assert target["status"] == "halted"
    assert target["method"] == "file", target
    first = target["methods_tried"][0]
    assert first["type"] == "http" and not first["verified"]
    assert ("500" in first["error"]) if fault == "killswitch-broken" else ("not verified" in first["error"])
    assert_no_orders_after_halt(lab, by_name(report), ["engine-001"])


def test_resume_needs_this_runs_gate_then_brings_order_flow_back(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    halt, _ = run_p0(lab, tmp_path, name="halt.json")
    assert halt.returncode == 0, halt.stdout[-4000:]
    halted_by = time.time()
    # the kill switch role turned around (-e halt_trading_state=resumed) is not a way around the gate:
    # no health gate ran in this run, so the halt_trading action plugin refuses every engine
    proc, report = run_p0(lab, tmp_path, "-e", "halt_trading_state=resumed", name="bypass.json")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert report["result"]["resumed"] == [] and report["result"]["gate_refused"] is True, report["result"]
    assert "no health gate passed in this ansible-playbook run" in report["result"]["msg"]
    assert all(lab.orders_after(n, halted_by) == 0 for n in lab.engines())
    # the way back: the approved resume behind this run's health gate
    proc = lab.run_playbook("resume_trading.yml", "-e", "resume_trading_approved=true",
                            "-e", "health_gate_stable_for=1", "-e", "halt_trading_quiesce_seconds=1",
                            "-e", f"halt_trading_report_path={tmp_path / 'r.json'}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = read_json(tmp_path / "r.json")
    assert sorted(report["result"]["resumed"]) == sorted(lab.engines())
    for t in report["result"]["targets"]:
        assert lab.orders_after(t["name"], t["resumed_at"]) > 0, f"{t['name']} did not trade after resume"
    assert all(row["orders_after"] > 0 for row in report["orders"])
    assert lab.lab.redis_client().keys("emergency_halt*") == []
    assert not any((Path(e["dir"]) / "EMERGENCY_STOP").exists() for e in lab.state["engines"])


def test_a_wrong_role_variable_stops_the_run_before_any_halt(lab_factory, tmp_path):
    """The playbooks skip Ansible's per-host role check (rolespec_validate: false, 5 s per role at 200 engines)
    and each role checks its meta/argument_specs.yml once: a wrong type must still stop the run, naming the
    variable, before the kill switch is touched."""
    lab = lab_factory(engines=3)
    proc, report = run_p0(lab, tmp_path, "-e", '{"halt_trading_timeout": "soon"}', name="bad.json")
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Validation of arguments failed" in proc.stdout, proc.stdout[-3000:]
    assert "halt_trading_timeout" in proc.stdout
    assert report is None, "the halt report was written: the role ran past its argument check"
    # nothing was halted: every engine still trades
    counts = lab.wait_for_orders(lab.engines(), since=time.time())
    assert all(counts.values()), counts
    assert not any(e["halted"] for e in lab.lab.engines()), lab.lab.engines()
