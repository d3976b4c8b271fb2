"""`tradeops run / report` against a real lab: exit codes 0, 1, 2, 3, live progress per phase and host
(plain lines off a terminal, rich on one), the summary and the report path, --json, --via-worker."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env, start_lab

pytestmark = pytest.mark.integration

FAST = ["-e", "halt_trading_quiesce_seconds=1 health_gate_stable_for=2 halt_trading_timeout=4"]
PHASES = ["contain", "assess", "evidence", "repair", "verify", "resume", "learn"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = start_lab(tmp_path_factory.mktemp("cli-lab"), engines=4, faults={"engine-003": "crash"})
    yield handle
    handle.lab.down()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def tradeops(lab_dir: Path, runs: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = ansible_env(lab_dir)
    env.pop("ANSIBLE_CONFIG", None)
    started = time.time()
    proc = subprocess.run([str(VENV_BIN / "tradeops"), *args, "--runs-dir", str(runs)] if args[0] != "incidents"
                          else [str(VENV_BIN / "tradeops"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.elapsed = time.time() - started
    return proc


def test_resolved_run_exits_0_with_progress_per_phase_summary_and_report(lab, runs):
    proc = tradeops(lab.dir, runs, "run", "p0_outage", *FAST)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    phases = re.findall(r"^\[[\d:]+\] phase (\w+):", out, re.M)
    assert phases == PHASES
    # per host: the crashed engine is repaired in the repair phase, on its own line
    assert re.search(r"^\[[\d:]+\]\s+repair\s+engine-003\s+changed\s+Recovery", out, re.M)
    assert "kill switch: halted 3, already 0, failed 0, unverified 1 (engine-003)" in out
    assert "RECOVERED: health gate GO, trading HALTED awaiting approval to resume" in out
    assert "halted (verified): 4/4" in out and "repair: restarted engine-003; recovered engine-003" in out
    assert "exit code 0 (resolved)" in out
    report = Path(re.search(r"^  report: (\S+)$", out, re.M).group(1))
    assert report.is_file() and report.suffix == ".md"
    run_id = re.search(r"^p0_outage run (\S+):", out, re.M).group(1)

    shown = tradeops(lab.dir, runs, "report", run_id)
    assert shown.returncode == 0 and "awaiting approval" in shown.stdout and "timeline:" in shown.stdout
    assert re.search(r"repair\s+engine-003\s+changed", shown.stdout)
    latest = json.loads(tradeops(lab.dir, runs, "report", "latest", "--json").stdout)
    assert latest["run_id"] == run_id and latest["exit_code"] == 0 and latest["recovered"] == ["engine-003"]
    print(f"\ntradeops run p0_outage: {proc.elapsed:.1f}s")


def test_repair_failure_exits_2_and_json_goes_to_stdout(lab, runs):
    lab.lab.inject("unrecoverable", engines=["engine-001"])
    try:
        proc = tradeops(lab.dir, runs, "run", "p0_outage", "--json", *FAST, "-e", "service_recovery_rto_seconds=3")
    finally:
        lab.lab.inject("unrecoverable", engines=["engine-001"], clear=True)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["outcome"] == "halted_not_recovered" and result["exit_code"] == 2
    assert result["still_nogo"] == ["engine-001"] and result["halted"] == lab.engines()
    assert "phase repair" in proc.stderr and "exit code 2 (halted_not_recovered)" in proc.stderr
    assert "still NO-GO: engine-001" in proc.stderr


def test_an_engine_that_cannot_be_halted_exits_1_via_the_worker(lab_factory, runs):
    # A lab of its own: on the module's lab every engine already holds a durable halt from the runs before (a
    # flag file or a Redis key, read back as halted even while the engine is down), so none would fail to halt.
    fresh = lab_factory(engines=3, faults={"engine-003": "crash"})
    proc = tradeops(fresh.dir, runs, "run", "p0_outage", "--via-worker", "--tags", "contain", *FAST)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "via transmit|worker|process" in proc.stdout
    assert "REMEDIATION FAILED: not verified halted: engine-003" in proc.stdout
    assert "phase contain" in proc.stdout


def test_bad_input_exits_3(lab, runs, tmp_path):
    no_lab = tradeops(tmp_path / "no-lab", runs, "run", "p0_outage")
    assert no_lab.returncode == 3 and "no host matched" in no_lab.stdout
    assert "lab state file" in no_lab.stdout
    unknown = tradeops(lab.dir, runs, "run", "p0_outge")
    assert unknown.returncode == 3 and "did you mean p0_outage" in unknown.stderr


def test_rich_progress_on_a_terminal(lab, runs):
    """On a TTY the same run shows rich's live view (phases and hosts tables)."""
    env = ansible_env(lab.dir)
    env.pop("ANSIBLE_CONFIG", None)
    env.update({"COLUMNS": "150", "LINES": "50", "TERM": "xterm-256color"})
    parent, child = pty.openpty()
    proc = subprocess.Popen([str(VENV_BIN / "tradeops"), "run", "health_check", "--runs-dir", str(runs)],
                            cwd=ROOT, env=env, stdin=child, stdout=child, stderr=child)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(parent, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    rc = proc.wait(timeout=120)
    os.close(parent)
    text = b"".join(chunks).decode(errors="replace")
    assert rc == 0, text[-3000:]
    assert "\x1b[" in text  # rich drew on the terminal
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "phase health check" in plain and "engine-001" in plain and "health: GO" in plain
    assert re.search(r"phase\s+state\s+tasks\s+failed\s+time", plain)  # the live phases table
    assert "exit code 0 (resolved)" in plain
