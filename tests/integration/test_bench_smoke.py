"""A smoke run of the benchmark harness (N=5, one run) so that it cannot rot. Not a benchmark:
it asserts only that the harness runs and measures a verified halt of every engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, ansible_env

pytestmark = pytest.mark.integration


def test_bench_harness_runs_and_measures_every_engine():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--engines", "5"], cwd=ROOT,
                          env=ansible_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert out["halt_trading"]["rc"] == 0 and out["halt_trading"]["halted"] == 5
    assert out["uri_per_host"]["rc"] == 0
    assert out["ratio_uri_over_halt_trading"] > 0
