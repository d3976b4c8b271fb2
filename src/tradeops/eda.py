"""`tradeops eda`: ansible-rulebook with the collection's rulebook, against a lab with monitoring.

``start`` runs ``ansible-rulebook -r tradeops.remediation.trading_incidents`` in the background, its source
listening where the lab's Alertmanager sends (``state["monitoring"]["webhook"]``), with a vars file written
here (0600 directory). Its automatic runs go to ``<lab_dir>/eda/runs`` and every alert it receives to the
journal ``<lab_dir>/eda/alerts.jsonl``. In production the same rulebook runs as a service (a systemd unit
running the same command) or as a rulebook activation on EDA controller (README, "Event-Driven Ansible").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .lab import Lab, LabError
from .lab.procs import http_request, pid_alive, tail, terminate
from .lab.state import read_json, write_json_atomic

EDA_DIR = "eda"
RULEBOOK = "tradeops.remediation.trading_incidents"
STATE_FILE = "rulebook.json"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


def _dir(lab: Lab) -> Path:
    return lab.lab_dir / EDA_DIR


def journal_path(lab: Lab) -> Path:
    return _dir(lab) / "alerts.jsonl"


def runs_dir(lab: Lab) -> Path:
    return _dir(lab) / "runs"


def log_path(lab: Lab) -> Path:
    return _dir(lab) / "rulebook.log"


def find_rulebook_cli() -> str:
    for cand in (str(Path(sys.executable).parent / "ansible-rulebook"), shutil.which("ansible-rulebook")):
        if cand and os.access(cand, os.X_OK):
            return cand
    raise LabError("ansible-rulebook not found: `make setup` installs it (pyproject's dev extras)")


def status(lab: Lab) -> dict[str, Any] | None:
    """The running rulebook's record (pid, port, ...), or None."""
    info = read_json(_dir(lab) / STATE_FILE)
    if info and pid_alive(info.get("pid"), "ansible-rulebook"):
        return info
    return None


def start(lab: Lab, root: Path, allow_repair: Sequence[str] = (),
          timeout: float = START_TIMEOUT) -> dict[str, Any]:
    """Start ansible-rulebook for ``lab`` (which must run with monitoring) from the checkout ``root``."""
    st = lab.state
    mon = st.get("monitoring")
    if not mon:
        raise LabError("the lab runs no monitoring: start it with `tradeops lab up --monitoring`")
    if status(lab):
        raise LabError(f"a rulebook already runs for this lab (pid {status(lab)['pid']}): `tradeops eda stop`")
    d = _dir(lab)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    runs_dir(lab).mkdir(exist_ok=True)
    hook = mon["webhook"]
    vars_file = d / "vars.yml"
    vars_file.write_text(yaml.safe_dump({
        "tradeops_eda_host": hook["host"], "tradeops_eda_port": int(hook["port"]),
        "tradeops_eda_token_file": hook["token_file"], "tradeops_eda_journal": str(journal_path(lab)),
        "tradeops_eda_allow_repair": list(allow_repair),
    }))
    env = dict(os.environ)
    env.update({
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(root / "collections"),
        "TRADEOPS_PROJECT_DIR": str(root),
        "TRADEOPS_LAB_DIR": str(lab.lab_dir),
        "TRADEOPS_RUNS_DIR": str(runs_dir(lab)),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    env.pop("TRADEOPS_LAB_STATE", None)
    # run_playbook needs an inventory: the controller itself (alert_response.yml runs there), with this Python
    inventory = d / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    argv = [find_rulebook_cli(), "-r", RULEBOOK, "--vars", str(vars_file), "-i", str(inventory), "-v"]
    logf = open(log_path(lab), "ab")
    try:
        proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        logf.close()
    info = {"pid": proc.pid, "started_at": time.time(), "allow_repair": list(allow_repair),
            "webhook": {k: hook[k] for k in ("host", "port", "path")}, "log": str(log_path(lab)),
            "journal": str(journal_path(lab)), "runs_dir": str(runs_dir(lab))}
    write_json_atomic(d / STATE_FILE, info)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise LabError(f"ansible-rulebook exited ({proc.returncode}) at start:\n{tail(log_path(lab), 30)}")
        try:
            if http_request(hook["host"], hook["port"], "GET", "/metrics", timeout=1.0).status == 200:
                info["ready_after"] = round(time.time() - info["started_at"], 2)
                write_json_atomic(d / STATE_FILE, info)
                return info
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(lab)
            raise LabError(f"ansible-rulebook's source did not listen within {timeout:.0f}s:\n"
                           f"{tail(log_path(lab), 30)}")
        time.sleep(0.2)


def stop(lab: Lab) -> bool:
    """Stop the lab's rulebook (and the runs it started: its process group). True if it was running."""
    info = read_json(_dir(lab) / STATE_FILE)
    if not info or not pid_alive(info.get("pid"), "ansible-rulebook"):
        return False
    try:
        os.killpg(info["pid"], 15)
    except OSError:
        pass
    terminate(info["pid"], "ansible-rulebook", timeout=STOP_TIMEOUT)
    return True


def journal(lab: Lab) -> list[dict[str, Any]]:
    """Every alert the source received, in order."""
    try:
        text = journal_path(lab).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def webhook_counts(lab: Lab) -> dict[str, int]:
    """The source's counters (``GET /metrics``): requests by result, alerts by status."""
    info = status(lab)
    if not info:
        raise LabError("no rulebook runs for this lab")
    res = http_request(info["webhook"]["host"], info["webhook"]["port"], "GET", "/metrics", timeout=5.0)
    out: dict[str, int] = {}
    for line in res.text.splitlines():
        if line.startswith("tradeops_eda_") and "{" in line:
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0].removeprefix("tradeops_eda_") + ":" + name.split('"')[1]] = int(float(value))
    return out


def runs(lab: Lab) -> list[dict[str, Any]]:
    """The automatic runs started so far, oldest first: run id, incident, status and times from each run's
    ``result.json`` (a run still going has none yet: ``{"run_id", "running": True}``)."""
    out = []
    base = runs_dir(lab)
    if not base.is_dir():
        return out
    for run in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "incidents"):  # the runner's records
        result = read_json(run / "result.json") if (run / "result.json").exists() else None
        out.append({"run_id": run.name, "dir": str(run), "running": result is None, "result": result,
                    "created": run.stat().st_mtime})
    return sorted(out, key=lambda r: r["created"])
