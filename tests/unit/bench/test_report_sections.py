"""bench/report.py renders issue 20's figures and judges each target met or missed (synthetic results; the
harness itself runs in tests/integration/test_bench_smoke.py); bench/test_times.py reads a real JUnit file."""

from __future__ import annotations

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from report import markdown, targets  # noqa: E402
from test_times import run_test_times  # noqa: E402


def stat(x):
    return {"median": x, "min": x, "max": x, "n": 1}


def results():
    halt_a = {"label": "ansible-playbook p0_outage.yml --tags contain", "time_to_last_halt_s": stat(3.0),
              "wall_s": stat(6.0), "failed_runs": 0}
    return {
        "date": "2026-12-04", "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1], "duration_s": 60,
        "options": {"runs": 1},
        "machine": {"cpus": 2, "python": "3.11", "platform": "linux", "cpu_model": "x"},
        "halt": {"by_engines": {"1000": {"ratios": {"a/e": 3.0}, "paths": {"a": halt_a},
                                      "loadavg_start": [1, 1, 1], "loadavg_end": [1, 1, 1]}}},
        "loop": {"method": "Closed loop.", "engines": 10, "failed_runs": 0, "fault_to_halt_s": stat(10.3),
                 "fault_to_cancelled_s": stat(14.0), "intervals_s": {"fault injected -> alert firing": stat(5.1)}},
        "scale": {"method": "Scale.", "failed_runs": 0, "p0_healthy": {"engines": 200, "wall_s": stat(20.5)},
                  "mttr": {"engines": 200, "faulted": 20, "mttr_s": stat(55.0)}},
        "tests": {"method": "make test.", "wall_s": 1900.0, "timestamp": "2026-12-04T19:00:00",
                  "tiers": {"unit": {"tests": 600, "summed_s": 300.0, "failed": 0}}},
    }


def test_each_new_target_is_judged():
    got = {t["target"]: t["met"] for t in targets(results())}
    assert got["halt N=1000: contain (a), process start to last engine halted"] is True
    assert got["halt N=1000: contain phase (a) done, orders proof included, process start to exit"] is False
    assert got["closed loop: fault to verified halt (Prometheus, Alertmanager, ansible-rulebook)"] is True
    assert got["p0_outage.yml on 200 healthy engines"] is False
    assert got["P0 drill MTTR, 200 engines, 20 faulted"] is True
    assert got["`make test` wall time (the last run)"] is True


def test_the_sections_render():
    res = results()
    res["targets"] = targets(res)
    md = markdown(res)
    assert "### Closed loop: fault to verified halt, no human" in md
    assert "| **fault to verified halt** | 10.30" in md
    assert "| `p0_outage.yml` end to end, 200 healthy engines | 20.50" in md
    assert "**31.7 min** wall" in md
    assert "| p0_outage.yml on 200 healthy engines | ≤ 12 s | 20.5 s | **no** |" in md


def test_test_times_reads_a_junit_file(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest" time="125.5" timestamp="t">'
        '<testcase classname="tests.unit.x" name="a" time="1.5"/>'
        '<testcase classname="tests.integration.y" name="b" time="100"><failure message="m"/></testcase>'
        '<testcase classname="tests.integration.z" name="c" time="20"/>'
        "</testsuite></testsuites>")
    out = run_test_times(junit)
    assert out["wall_s"] == 125.5
    assert out["tiers"] == {"integration": {"tests": 2, "summed_s": 120.0, "failed": 1},
                            "unit": {"tests": 1, "summed_s": 1.5, "failed": 0}}
    assert "missing" in run_test_times(tmp_path / "none.xml")
