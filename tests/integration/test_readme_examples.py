"""Every command example of README.md runs, against one lab, and exits as documented: the documentation cannot
rot. The examples are the lines of the fenced shell blocks (```sh, ```shell, ```bash, ```console) and the
``$ ``-prompted lines of untagged blocks, with their trailing ``# comments`` taken off.

Each README line is either in PLAN (run by bash, exactly as written or, for a synopsis such as
``tradeops lab up [--engines N] ...``, as the concrete commands listed with it, in the order of PLAN: lab up first,
lab down last) or in EXCUSED (why it must not run in a test, and what covers it instead).
test_every_readme_command_is_planned_or_excused fails when README gains a command that is in neither, and when
PLAN or EXCUSED name a command README no longer has."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
SHELL_BLOCKS = {"sh", "shell", "bash", "console", "zsh"}


@dataclass
class Step:
    readme: str  # the command line as README shows it (comment taken off)
    run: list[str] = field(default_factory=list)  # what runs (default: the README line itself)
    rc: int = 0  # the documented exit code
    why: str = ""  # why the README line is not run exactly as written

    @property
    def commands(self) -> list[str]:
        return self.run or [self.readme]


LAB_UP = "tradeops lab up [--engines N] [--mix killswitch_api,orchestrate_api,redis,file] [--fault ENGINE=FAULT]"
INJECT = "tradeops lab inject FAULT ENGINE... [--clear]"

PLAN = [
    Step(LAB_UP, ["tradeops lab up --engines 4 --mix killswitch_api,orchestrate_api,redis,file "
                  "--fault engine-003=crash"], why="a synopsis: every option given once"),
    Step("tradeops lab status [--json]", ["tradeops lab status", "tradeops lab status --json"],
         why="a synopsis: with and without the option"),
    Step("tradeops incidents"),
    Step('tradeops run p0_outage -e p0_outage_reason="INC-1234 engines down"'),
    Step("tradeops run p0_outage --check"),
    Step("tradeops run p0_outage --secret-var vault_token=VAULT_TOKEN"),  # VAULT_TOKEN is set (a canary)
    Step("tradeops run p0_outage --via-worker"),
    Step("tradeops report latest"),
    Step("tradeops report latest --format md"),
    Step(INJECT, ["tradeops lab inject latency engine-001", "tradeops lab inject latency engine-001 --clear"],
         why="a synopsis: a fault, then --clear"),
    Step("tradeops lab restart ENGINE...", ["tradeops lab restart engine-002"], why="a synopsis: one engine"),
    Step("tradeops lab inject cancel-lies engine-002"),
    Step("tradeops lab inject cancel-lies engine-002 --clear"),
    Step("tradeops lab down"),
    # the main job, last: its own 20-engine lab (.lab-drill), faults, p0_outage, the approved resume, torn down
    Step("make drill"),
]

EXCUSED = {
    "make test": "runs every test, this one included (recursion; about 25 minutes)",
    # the closed loop's commands need a lab with monitoring and ansible-rulebook of their own: each runs exactly
    # as written in tests/integration/test_closed_loop.py (test_drill_auto_..., test_readme_eda_commands_...)
    "tradeops drill auto": "run as written by test_closed_loop.py::test_drill_auto_halts_the_faulted_engine_...",
    "tradeops lab up --monitoring": "run as written by test_closed_loop.py::test_readme_eda_commands_run_as_written",
    "tradeops eda start": "run as written by test_closed_loop.py::test_readme_eda_commands_run_as_written",
    "tradeops eda status": "run as written by test_closed_loop.py::test_readme_eda_commands_run_as_written",
    "tradeops eda stop": "run as written by test_closed_loop.py::test_readme_eda_commands_run_as_written",
}


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` that starts a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[str]:
    """The command lines of README's fenced shell blocks and ``$ `` lines of untagged blocks, in order."""
    commands = []
    for m in re.finditer(r"^```[ \t]*([^\n`]*)\n(.*?)^```", text, re.M | re.S):
        info = (m.group(1).split() or [""])[0].lower()
        for line in m.group(2).splitlines():
            if info in SHELL_BLOCKS:
                line = line.removeprefix("$ ")
            elif info == "" and line.startswith("$ "):
                line = line[2:]
            else:
                continue
            command = " ".join(_strip_comment(line).split())
            if command:
                commands.append(command)
    return commands


def test_every_readme_command_is_planned_or_excused():
    found = readme_commands(README.read_text(encoding="utf-8"))
    assert len(found) >= 10, found  # the extraction itself works
    planned = [s.readme for s in PLAN]
    unknown = [c for c in found if c not in planned and c not in EXCUSED]
    assert not unknown, (f"README.md has command examples this test neither runs nor excuses: {unknown}. Add each "
                         f"to PLAN in {Path(__file__).name} (in the order it can run) or to EXCUSED with the reason")
    stale = [c for c in [*planned, *EXCUSED] if c not in found]
    assert not stale, f"PLAN/EXCUSED name commands README.md no longer has: {stale}"
    assert len(set(planned)) == len(planned) and not set(planned) & set(EXCUSED)


@pytest.fixture
def where(tmp_path):
    """The lab dir (through TRADEOPS_LAB_DIR) and runs dir the README's commands use; the lab is always torn down."""
    lab_dir, runs = tmp_path / "lab", tmp_path / "runs"
    yield lab_dir, runs
    if (lab_dir / "state.json").exists():
        from tradeops.lab import Lab

        Lab(lab_dir).down()


def test_every_readme_command_exits_as_documented(where):
    test_every_readme_command_is_planned_or_excused()
    lab_dir, runs = where
    canary = f"cnry-readme-{secrets.token_hex(8)}"
    env = ansible_env(lab_dir, TRADEOPS_RUNS_DIR=str(runs), VAULT_TOKEN=canary)
    env.pop("ANSIBLE_CONFIG", None)  # tradeops sets it itself, as for a user in the checkout
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    timings = []
    for step in PLAN:
        for command in step.commands:
            started = time.monotonic()
            proc = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=600)
            timings.append(f"{time.monotonic() - started:6.1f}s  {command}")
            assert proc.returncode == step.rc, (
                f"README example `{step.readme}` (ran `{command}`) exited {proc.returncode}, README documents "
                f"{step.rc}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
            check = CHECKS.get(command)
            if check:
                check(proc, runs, lab_dir)
    print("\n" + "\n".join(timings))
    assert not any(canary.encode() in p.read_bytes() for p in runs.rglob("*") if p.is_file())
    assert not (lab_dir / "state.json").exists()  # `tradeops lab down` took it down


def _latest_result(runs: Path) -> dict:
    newest = max((p for p in runs.iterdir() if (p / "result.json").is_file()),
                 key=lambda p: (p / "result.json").stat().st_mtime)
    return json.loads((newest / "result.json").read_text())


def _check_reason(proc, runs, lab_dir):
    """The reason reached the playbook whole, spaces included: the kill switch was called with it."""
    from tradeops.runner.result import load_events

    result = _latest_result(runs)
    assert result["awaiting_approval"] and len(result["halted"]) == 4, result["verdict"]
    reasons = {((e["event_data"].get("res") or {}).get("invocation") or {}).get("module_args", {}).get("reason")
               for e in load_events(Path(result["artifacts_path"])) if e.get("event") == "runner_on_ok"}
    assert "INC-1234 engines down" in reasons, reasons


def _check_status_json(proc, runs, lab_dir):
    status = json.loads(proc.stdout)
    assert len(status["engines"]) == 4


def _check_secret_var(proc, runs, lab_dir):
    result = _latest_result(runs)
    assert "vault_token" not in (Path(result["run_dir"]) / "env" / "extravars").read_text()


def _check_via_worker(proc, runs, lab_dir):
    assert _latest_result(runs)["via_worker"] is True


def _check_postmortem(proc, runs, lab_dir):
    """The latest run's incident, as a post-mortem draft rendered from its record, Mermaid timeline included."""
    result = _latest_result(runs)
    assert proc.stdout.startswith("# Post-mortem draft: "), proc.stdout[:500]
    assert f"| Verdict | **{json.loads(Path(result['report_path']).read_text())['verdict']['text']}** |" in proc.stdout
    assert "```mermaid\ngantt\n" in proc.stdout and "## 3. Root cause analysis" in proc.stdout


def _check_cancel_lies(proc, runs, lab_dir):
    """The exchange itself now lies about engine-002's cancels (and only engine-002's)."""
    from tradeops.lab import Lab

    assert "cancel-lies injected" in proc.stdout
    faults = Lab(lab_dir).exchange_control("GET", "/lab/state")["faults"]
    assert faults["accounts"] == {"cancel-lies": ["engine-002"]}, faults


def _check_cancel_lies_cleared(proc, runs, lab_dir):
    from tradeops.lab import Lab

    assert Lab(lab_dir).exchange_control("GET", "/lab/state")["faults"]["accounts"] == {}


def _check_drill(proc, runs, lab_dir):
    """The drill passed: every engine halted and verified, repaired, and trading again after the approved resume."""
    assert re.search(r"^\s*verdict: PASS ", proc.stdout, re.M), proc.stdout[-3000:]
    # working orders rested at the venue before the contain phase, and none after it
    assert re.search(r"^\s*venue: [1-9][0-9]* working order\(s\) before contain, 0 after", proc.stdout, re.M), \
        proc.stdout[-3000:]
    assert "PROBLEM:" not in proc.stdout and "drill: lab torn down" in proc.stdout, proc.stdout[-3000:]


CHECKS = {
    "tradeops lab inject cancel-lies engine-002": _check_cancel_lies,
    "tradeops lab inject cancel-lies engine-002 --clear": _check_cancel_lies_cleared,
    "tradeops report latest --format md": _check_postmortem,
    "make drill": _check_drill,
    'tradeops run p0_outage -e p0_outage_reason="INC-1234 engines down"': _check_reason,
    "tradeops lab status --json": _check_status_json,
    "tradeops run p0_outage --secret-var vault_token=VAULT_TOKEN": _check_secret_var,
    "tradeops run p0_outage --via-worker": _check_via_worker,
}
