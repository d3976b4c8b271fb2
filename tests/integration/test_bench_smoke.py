"""A smoke run of the benchmark harness (N=5, one run, paths a and e) so that it cannot rot. Not a benchmark:
it asserts only that the harness runs, writes its results, and measured, from the engines' own logs, a
halt of every engine, confirmed halted by the lab afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, ansible_env

pytestmark = pytest.mark.integration


def test_bench_harness_runs_and_measures_a_verified_halt_of_every_engine(tmp_path):
    out_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "halt", "--engines", "5", "--runs", "1",
         "--paths", "a,e", "--out-dir", str(out_dir), "--readme", "no"],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in out_dir.iterdir())
    assert len(written) == 2 and written[0].endswith(".json") and written[1].endswith(".md"), written
    res = json.loads((out_dir / written[0]).read_text())
    assert res["failed"] == []
    assert len(res["loadavg_start"]) == 3 and len(res["loadavg_end"]) == 3
    section = res["halt"]["by_engines"]["5"]
    assert set(section["paths"]) == {"a", "e"}
    for path, entry in section["paths"].items():
        (run,) = entry["runs"]
        assert run["ok"] and run["rc"] == 0, (path, run)
        assert run["halts_recorded"] == 5, (path, run)  # each engine logged its own halt after t0 ...
        assert run["halted_verified"] == 5, (path, run)  # ... and the lab reports every engine halted
        assert 0 < run["time_to_first_halt_s"] <= run["time_to_last_halt_s"] < 60, (path, run)
        assert entry["time_to_last_halt_s"]["median"] == run["time_to_last_halt_s"]
    a = section["paths"]["a"]["runs"][0]
    assert a["module_verified"] == 5  # halt_trading read every halt back
    assert a["time_to_last_verified_s"] >= a["time_to_last_halt_s"] - 0.01
    assert section["ratios"]["a/e"] > 1  # ansible-playbook cannot beat the bare fan-out
    table = (out_dir / written[1]).read_text()
    assert "| a. ansible-playbook p0_outage.yml --tags contain |" in table


def test_bench_venue_section_runs_and_the_exchange_confirms_zero_working_orders(tmp_path):
    """venue_guard's cancel-all against the per-order ccxt loop, small (3 accounts x 10 orders, one run): each
    figure counts only when the exchange itself lists no working order afterwards (bench/venue.py)."""
    out_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--only", "venue", "--runs", "1", "--venue-accounts", "3",
         "--venue-orders", "10", "--out-dir", str(out_dir), "--readme", "no"],
        cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(out_dir.glob("*.json")).read_text())
    venue = res["venue"]
    assert venue["failed_runs"] == 0 and venue["guard_s"]["n"] == 1 and venue["loop_s"]["n"] == 1
    assert venue["rate_limited_unverified"]["max"] == 0
    assert venue["ratios"]["loop/guard"] is not None
    assert "### Venue cancel-all" in next(out_dir.glob("*.md")).read_text()
