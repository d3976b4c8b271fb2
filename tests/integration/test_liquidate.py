"""playbooks/liquidate.yml (seed 001's portfolio liquidation) against the lab and its exchange, read back
through ccxt: without approval it halts and cancels and sells nothing; with approval it sells every position
within max_slippage, and the venue shows the positions gone."""

from __future__ import annotations

import json
import time

import ccxt
import pytest

from tests.conftest import start_lab

pytestmark = pytest.mark.integration


def balances(lab, name):
    acct = lab.venue_accounts()[name]
    ex = ccxt.kraken({"apiKey": acct["key"], "secret": acct["secret"], "enableRateLimit": False, "timeout": 5000})
    url = lab.state["exchange"]["url"]
    ex.urls["api"] = {"public": url, "private": url}
    return {k: v for k, v in ex.fetch_balance()["total"].items() if v}


def test_liquidation_sells_nothing_without_approval_and_everything_with_it(tmp_path_factory):
    handle = start_lab(tmp_path_factory.mktemp("liquidate-lab"), engines=3)
    lab = handle.lab
    reports = tmp_path_factory.mktemp("reports")
    try:
        names = handle.engines()
        deadline = time.monotonic() + 15
        while not all(n > 0 for n in lab.working_orders().values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(n > 0 for n in lab.working_orders().values()), "the engines rest orders at the venue"
        held = {n: balances(lab, n) for n in names}
        assert all(set(b) - {"USD"} for b in held.values()), held  # every account holds positions

        first = handle.run_playbook("liquidate.yml", "-e", f"incident_report_dir={reports}",
                                    "-e", "liquidate_incident_id=liq-test")
        assert first.returncode == 0, first.stdout[-3000:]
        assert "Liquidation SKIPPED: no approval" in first.stdout
        handle.assert_stays_halted(names, since=time.time(), window=1.0)
        assert lab.working_orders() == dict.fromkeys(names, 0)
        for n in names:  # nothing sold
            assert {k for k in balances(lab, n) if k != "USD"} == {k for k in held[n] if k != "USD"}

        started = time.time()
        second = handle.run_playbook("liquidate.yml", "-e", f"incident_report_dir={reports}",
                                     "-e", "liquidate_incident_id=liq-test", "-e", "liquidate_approved=true",
                                     "-e", "liquidate_max_slippage=0.02", "-e", "liquidate_time_limit=60")
        assert second.returncode == 0, second.stdout[-3000:]
        for n in names:
            left = {k: v for k, v in balances(lab, n).items() if k != "USD"}
            assert left == {}, f"{n} still holds {left}"
        fills = [f for f in lab.venue_fills(since=started) if f["account"] in names]
        assert fills and all(f["type"] == "sell" for f in fills)
        record = json.loads((reports / "liq-test.json").read_text())
        flatten = [c for c in record["venue"]["calls"] if c["action"] == "flatten"]
        assert flatten and flatten[0]["failed"] == []
        assert [a["name"] for a in record["actions"] if a["name"] == "liquidation"] == ["liquidation"]
    finally:
        lab.down()
