"""playbooks/trading_halted.yml against real labs whose engines halt themselves (seed 004's haltReason).

Proof from outside: the engines' own halt state and reason, the orders table, the record and the evidence file.
In the lab's default mix, engine-002 and engine-006 have seed 004's halt/unhalt API (the self-halt faults
need it)."""

from __future__ import annotations

import json
import stat
import subprocess
import time
from datetime import datetime

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env
from tests.helpers.records import read_record

pytestmark = pytest.mark.integration

INCIDENT = "trading-halted"
RESUMED_BANNER = "TASK [tradeops.remediation.resume_trading : Resume | Record the verified resume"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def args(tmp_path, *extra):
    return ["-e", f"incident_report_dir={tmp_path}", "-e", "trading_halted_stable_for=2",
            "-e", "halt_trading_quiesce_seconds=1", "-e", "halt_trading_timeout=4",
            "-e", "trading_halted_watch_interval=0.5", *extra]


def wait_self_halted(lab, names, timeout=10.0):
    """Poll the engines until each reports the self-halt (the trading loop latches it on its next tick)."""
    deadline = time.monotonic() + timeout
    while True:
        view = lab.engines_view()
        if all(view[n]["halt_source"] == "self" for n in names):
            return view
        assert time.monotonic() < deadline, {n: view[n]["halt_source"] for n in names}
        time.sleep(0.1)


def trading(lab):
    return sorted(n for n, e in lab.engines_view().items() if e["trading_active"])


def test_a_loss_limit_is_kept_halted_and_escalated_and_a_target_reached_is_left_alone(lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    lab.lab.inject("self-halt-loss", ["engine-002"])
    lab.lab.inject("self-halt-target", ["engine-006"])
    wait_self_halted(lab, ["engine-002", "engine-006"])
    proc = lab.run_playbook("trading_halted.yml", *args(tmp_path, "-e", "resume_trading_approved=true"))
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "engine-002: daily_loss_limit (pnl -5" in proc.stdout and "CRITICAL: kept halted, escalated" in proc.stdout
    assert "engine-006: daily_target_reached (pnl 10" in proc.stdout

    record = read_record(tmp_path, INCIDENT)
    [contain] = [h for h in record["halts"] if h["phase"] == "contain"]
    # our own halt covers the loss-limit engine only; the target-reached engine was not touched
    assert [t["name"] for t in contain["targets"]] == ["engine-002"]
    assert all(h["targets"] == [] or "engine-006" not in [t["name"] for t in h["targets"]] for h in record["halts"])
    assert record["escalation"]["level"] == 1
    assert "daily loss limit on engine-002" in record["escalation"]["history"][0]["name"]
    assert record["resume"] is None or record["resume"]["outcome"] != "resumed"  # a loss limit is never resumed
    assert record["verdict"]["text"].startswith("CONTAINED"), record["verdict"]

    view = lab.engines_view()
    assert view["engine-002"]["halt_reason"] == "daily_loss_limit" and not view["engine-002"]["trading_active"]
    assert view["engine-006"]["halt_reason"] == "daily_target_reached"
    assert trading(lab) == ["engine-001", "engine-003", "engine-004", "engine-005"]
    lab.assert_stays_halted(["engine-002"], epoch(contain["at"]), window=1.0)

    # the evidence: the reasons, the P&L and the risk manager's rejected trades, private
    evidence = tmp_path / f"{INCIDENT}-halt-reasons.json"
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    plan = json.loads(evidence.read_text())
    loss = plan["engines"]["engine-002"]
    assert loss["reason"] == "daily_loss_limit" and loss["pnl"] <= loss["dailyLossLimit"]
    assert len(loss["riskRejections"]) == 3 and "daily loss limit" in loss["riskRejections"][0]["reason"]
    assert plan["critical"] == ["engine-002"] and plan["normal"] == ["engine-006"]
    token = lab.state["admin_token"]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


def test_a_system_error_is_resumed_after_its_gate_and_the_watch_and_a_live_cause_keeps_it_halted(
        lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("self-halt-error", ["engine-002"])
    wait_self_halted(lab, ["engine-002"])
    # the cause is still there: the engine is NO-GO, the gate stays closed, nothing is resumed
    failed = lab.run_playbook("trading_halted.yml", *args(tmp_path / "live", "-e", "resume_trading_approved=true",
                                                          "-e", "health_gate_wait_for=3"))
    assert failed.returncode != 0
    assert "Health gate closed" in failed.stdout, failed.stdout[-4000:]
    assert read_record(tmp_path / "live", INCIDENT)["verdict"]["text"].startswith("HALTED, NOT RECOVERED in verify")
    assert trading(lab) == ["engine-001"]

    # someone fixed the cause (the fault cleared); the engine's own halt is still latched
    lab.lab.inject("self-halt-error", ["engine-002"], clear=True)
    assert lab.engines_view()["engine-002"]["halt_source"] in ("self", "orchestrate_api")
    started = time.time()
    proc = lab.run_playbook("trading_halted.yml", *args(tmp_path / "fixed", "-e", "resume_trading_approved=true",
                                                        "-e", "trading_halted_watch_seconds=3"))
    assert proc.returncode == 0, proc.stdout[-6000:]
    record = read_record(tmp_path / "fixed", INCIDENT)
    assert record["gate"]["status"] == "GO"
    [watch] = [a for a in record["actions"] if a["name"] == "post_unhalt_watch"]
    assert watch["outcome"] == "ok" and watch["detail"] == "GO for 3s"
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified", record["verdict"]
    view = lab.engines_view()
    assert view["engine-002"]["trading_active"] and view["engine-002"]["halt_reason"] is None
    assert lab.wait_for_orders(["engine-002"], since=started)["engine-002"] > 0


def test_a_self_halt_during_the_post_unhalt_watch_halts_the_engine_again(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("self-halt-error", ["engine-002"])
    wait_self_halted(lab, ["engine-002"])
    lab.lab.inject("self-halt-error", ["engine-002"], clear=True)
    cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / "playbooks" / "trading_halted.yml"),
           *args(tmp_path, "-e", "resume_trading_approved=true", "-e", "trading_halted_watch_seconds=60")]
    # unbuffered: each line as ansible-playbook prints it, not when a pipe buffer fills
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ansible_env(lab.dir, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        # the playbook's own progress: inject once the verified resume is recorded (the default callback prints
        # a task's banner with its first result, so this line means that task is done; the watch comes next)
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(RESUMED_BANNER):
                assert lab.engines_view()["engine-002"]["trading_active"]  # the gated resume happened
                lab.lab.inject("self-halt-loss", ["engine-002"])  # it halts itself again during the watch
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert any(line.startswith(RESUMED_BANNER) for line in lines), out[-4000:]
    assert proc.returncode != 0, out[-4000:]
    assert "Halted again: NO-GO during the post-unhalt watch (engine-002-halted" in out, out[-4000:]
    record = read_record(tmp_path, INCIDENT)
    [again] = [h for h in record["halts"] if h["phase"] == "watch"]
    assert again["state"] == "halted" and sorted(again["done"] + again["already"]) == ["engine-002"]
    assert record["verdict"]["text"].startswith("HALTED, NOT RECOVERED in watch"), record["verdict"]
    lab.lab.inject("self-halt-loss", ["engine-002"], clear=True)
    # our halt holds even though the engine's own cause is gone: only the next gated resume lifts it
    lab.assert_stays_halted(["engine-002"], epoch(again["at"]), window=1.0)


def test_a_loss_limit_engine_is_never_resumed_even_when_a_variable_puts_it_in_scope(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("self-halt-loss", ["engine-002"])
    wait_self_halted(lab, ["engine-002"])
    since = time.time()
    # extra vars beat set_fact: the scope the playbook computed is replaced by one that names the loss-limit engine
    proc = lab.run_playbook("trading_halted.yml", *args(tmp_path, "-e", "resume_trading_approved=true",
                                                        "-e", '{"incident_scope": ["engine-002"]}'))
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert "Refusing to resume engine-002: halted at the daily loss limit" in proc.stdout, proc.stdout[-4000:]
    lab.assert_stays_halted(["engine-002"], since, window=1.0)


def test_check_mode_changes_nothing(lab_factory, tmp_path):
    """--check with approval: it reads the halt reasons, and neither halts, unhalts nor cancels anything."""
    lab = lab_factory(engines=2)
    lab.lab.inject("self-halt-error", ["engine-002"])
    wait_self_halted(lab, ["engine-002"])
    lab.lab.inject("self-halt-error", ["engine-002"], clear=True)  # fixed: a real run would resume it
    before = lab.engines_view()
    proc = lab.run_playbook("trading_halted.yml", *args(tmp_path, "--check", "-e", "resume_trading_approved=true",
                                                        "-e", "trading_halted_watch_seconds=2"))
    assert proc.returncode == 0, proc.stdout[-6000:]
    view = lab.engines_view()
    assert view["engine-002"]["halt_source"] == "self" and not view["engine-002"]["trading_active"]
    assert view["engine-001"]["trading_active"] and view["engine-001"]["halt_source"] is None
    assert {n: e["restarts"] for n, e in view.items()} == {n: e["restarts"] for n, e in before.items()}
    since = time.time()
    assert lab.wait_for_orders(["engine-001"], since=since)["engine-001"] > 0
