"""The guards behind "a halt holds": each test makes the guard's failure path happen for real (issue 13,
"Tests that do not yet guard the promises").

- The orders proof of the kill-switch role: an engine whose kill switch acknowledges a halt and ignores
  it keeps trading; the run must fail and name it.
- service_recovery applies every durable kill-switch method before it restarts an engine: an engine
  halted only in its memory, then crashed, must come back from the repair halted, with no order
  between its restart and the re-verify.

Proof comes from the lab's orders table and the engines' own endpoints; nothing is mocked.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.conftest import read_json
from tests.integration.lab.helpers import wait_until
from tradeops.lab.procs import http_request

pytestmark = pytest.mark.integration

STOPPED = {"trading_active": False, "mode": "emergency_stopped"}
TRADING = {"trading_active": True, "mode": "trading"}


def engine_call(lab, name, method, path, body=None, token=None):
    spec = lab.lab.engine(name)
    headers = {"X-Admin-Token": token} if token is not None else {}
    return http_request(spec["host"], spec["port"], method, path, body=body, headers=headers, timeout=5.0)


def trading_status(lab, name):
    res = engine_call(lab, name, "GET", "/api/v1/trading/status")
    assert res.status == 200, (name, res.status, res.text)
    return res.json()


def flushed_past(lab, witness, moment, orders=3, timeout=10.0):
    """Wait until the lab's one order writer has committed orders of ``witness`` (an engine that trades)
    created after ``moment``: every order any engine created before them is committed too, so a count of
    another engine's orders up to ``moment`` is final."""
    wait_until(lambda: lab.orders_after(witness, moment) >= orders, timeout,
               f"{witness} to commit {orders} orders created after {moment}")


def test_orders_proof_fails_the_run_naming_an_engine_that_trades_after_its_halt(lab_factory, tmp_path):
    """engine-001's kill switch API says "ok, emergency_stopped" and ignores the halt (killswitch-lies).
    With verification off the module takes the API's word; only the orders proof can catch it. Every
    chain here is [killswitch_api, file]: applying the whole chain would halt the liar through its flag
    file a moment later, so the chain stops at the first method that answered (apply_all=false), leaving
    the lie in force for the whole orders window."""
    lab = lab_factory(engines=2, mix="killswitch_api", faults={"engine-001": "killswitch-lies"})
    report_path = tmp_path / "halt.json"
    proc = lab.run_playbook("p0_outage.yml", "--tags", "contain", "-e", "halt_trading_verify=false",
                            "-e", "halt_trading_apply_all=false", "-e", "halt_trading_quiesce_seconds=1",
                            "-e", f"halt_trading_report_path={report_path}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, "the contain phase passed although engine-001 kept trading:\n" + out[-5000:]
    m = re.search(r"(engine-\d{3}) wrote (\d+) orders AFTER its halt", out)
    assert m, out[-5000:]
    assert m.group(1) == "engine-001" and int(m.group(2)) > 0, m.group(0)
    assert "engine-002 wrote" not in out, "the honest engine was named as trading"

    # the setup is what the test means: the kill switch of both engines answered, nothing else was applied
    report = read_json(report_path)
    targets = {t["name"]: t for t in report["result"]["targets"]}
    for name in ("engine-001", "engine-002"):
        assert targets[name]["method"] == "http" and targets[name]["halted_at"], targets[name]
        assert [a["type"] for a in targets[name]["methods_tried"]] == ["http"], targets[name]
        assert not (Path(lab.lab.engine(name)["dir"]) / "EMERGENCY_STOP").exists(), name
    rows = {r["name"]: r for r in report["orders"]}
    assert rows["engine-001"]["orders_after"] > 0 and rows["engine-002"]["orders_after"] == 0, rows

    # and the proof told the truth, as a user sees it: the liar trades on, the honest engine is halted
    now = time.time()
    assert lab.wait_for_orders(["engine-001"], since=now)["engine-001"] > 0, "engine-001 stopped trading"
    assert trading_status(lab, "engine-001") == TRADING
    assert trading_status(lab, "engine-002") == STOPPED
    flushed_past(lab, "engine-001", now)
    assert lab.orders_after("engine-002", targets["engine-002"]["halted_at"]) == 0


def test_repair_makes_an_in_memory_halt_durable_before_restarting_a_crashed_engine(lab_factory, tmp_path):
    """engine-001 is halted through its own kill switch API (outside the playbook: no flag file, no Redis
    key; the halt lives in the engine's memory only), then crashes. The P0 assess and repair phases (no
    contain phase, whose fallback would write the durable flag first) find it NO-GO and restart it. A
    restart drops what an engine holds in memory, so only the repair's first step, which applies every
    durable kill-switch method before the restart, keeps it from trading between its restart and the
    re-verify after it."""
    lab = lab_factory(engines=2, mix="killswitch_api", order_interval=0.05)
    name, witness = "engine-001", "engine-002"
    flag = Path(lab.lab.engine(name)["dir"]) / "EMERGENCY_STOP"

    res = engine_call(lab, name, "POST", "/api/v1/emergency/kill_switch",
                      body={"reason": "on-call halt by hand", "user_id": "oncall"}, token=lab.lab.admin_token())
    assert res.status == 200, res.text
    assert trading_status(lab, name) == STOPPED
    view = wait_until(lambda: next((e for e in lab.lab.engines() if e["name"] == name and e["halted_at"]), None),
                      5, f"{name} to stop trading")
    assert view["halt_source"] == "killswitch_api", view
    assert not flag.exists() and not lab.lab.redis_client().keys("emergency_halt*")

    lab.lab.inject("crash", [name])
    crashed = next(e for e in lab.lab.engines() if e["name"] == name)
    assert crashed["listening"] is False and crashed["faults"] == ["crash"], crashed
    restarts_before = crashed["restarts"]

    started = time.time()
    proc = lab.run_playbook("p0_outage.yml", "--tags", "assess,repair", "-e", "service_recovery_stable_for=1",
                            "-e", "service_recovery_interval=0.5")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
    ended = time.time()

    # the repair restarted it, in this run
    health = engine_call(lab, name, "GET", "/health/detailed").json()
    assert health["restarts"] == restarts_before + 1, health
    restarted_at = health["started_at"]
    assert started < restarted_at < ended, (started, restarted_at, ended)
    # no order from its restart through the re-verify (and the end of the run) ...
    flushed_past(lab, witness, ended)
    written = lab.orders_between(name, restarted_at, ended)
    assert written == 0, f"{name} wrote {written} orders between its restart and the re-verify"
    # ... because a durable source held it across the restart, and still does
    assert flag.exists(), "no EMERGENCY_STOP flag: the halt was not made durable before the restart"
    assert health["halted"] is True and health["halt_source"] == "file", health
    assert trading_status(lab, name) == STOPPED
    # the witness was never touched: the proof is not vacuous
    assert trading_status(lab, witness) == TRADING
