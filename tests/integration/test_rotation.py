"""Secret rotation against real labs, with real ansible-playbook and ansible-runner.

- Routine rotation (playbooks/rotate_secrets.yml) costs a client that polls throughout zero failed
  calls; the same run with staging=direct (the new token written as current at once) does cost failed
  calls, which shows the consumer below can see them.
- A fault injected at each step (create, set, test, finish, and the revoke after them) always leaves a
  token that every engine accepts: never the old and the new both refused.
- A planted secret appears nowhere: not in -vvv output, not with --check --diff, not in the runner's
  artifacts (command, env/, job events), not in the report.

Faults are real: an impossible value for create; the lab directory made immutable (chattr +i, which
even root cannot write through) for set, finish and revoke; for test and finish, one extra test URL
is a real HTTP server of this test (the "gate") that stands for a server which refuses the new value,
or which makes the directory immutable once the test has reached it (so the fault lands exactly
between the test and the finish).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import ansible_env
from tests.helpers.http import JsonHandler, LocalServer
from tests.integration.lab.helpers import wait_until
from tests.integration.test_runner_api import files_holding

pytestmark = pytest.mark.integration

ENGINE_URLS = ("{{ groups['trading_engines'] | map('extract', hostvars, ['tradeops_engine', 'base_url'])"
               " | map('regex_replace', '$', '/pnl/status') | list%s }}")


def tokens(lab) -> dict[str, str]:
    out = {}
    for line in (lab.dir / "secrets.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def status(engine, token, source="management"):
    req = urllib.request.Request(f"http://{engine['host']}:{engine['port']}/pnl/status",
                                 headers={"X-Admin-Token": token, "X-Lab-Source": source})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def accepted_everywhere(lab, token, wait=2.0) -> bool:
    """Every engine answers 200 to the token (engines re-read the file within ~0.5 s)."""
    deadline = time.time() + wait
    while True:
        if all(status(e, token) == 200 for e in lab.state["engines"]):
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.1)


def refused_everywhere(lab, token, wait=2.0) -> bool:
    deadline = time.time() + wait
    while True:
        if all(status(e, token) == 401 for e in lab.state["engines"]):
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.1)


def fingerprint(value: str, key_path: Path) -> str:
    """rotate_secret's fingerprint of ``value``: keyed with the fingerprint key file of ``key_path``."""
    from ansible_collections.tradeops.remediation.plugins.module_utils._secrets import Fingerprinter

    return Fingerprinter.from_file(str(key_path))(value)


class Gate:
    """A real HTTP server used as one more test URL. `behaviour(token)` returns the status to answer."""

    def __init__(self, behaviour):
        gate = self
        self.behaviour = behaviour
        self.calls = 0

        class Handler(JsonHandler):
            def do_GET(self):
                gate.calls += 1
                self.reply(gate.behaviour(self.headers.get("X-Admin-Token")), None)

        self.server = LocalServer(Handler)
        self.url = self.server.url + "/whoami"

    def close(self):
        self.server.close()


def immutable(path: Path, on: bool):
    proc = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True, check=False)
    # not a skip: the fault tests need it, and the test suite runs as root on ext4 (see scripts/setup.sh)
    assert proc.returncode == 0, f"chattr cannot set the immutable flag on {path}: {proc.stderr.strip()}"


def rotation_vars(tmp_path, gate=None, generate=None, timeout=3.0, name="vars.yml") -> str:
    """A vars file with the lab's admin token as the one secret, tested on every engine (+ the gate)."""
    extra = f" + ['{gate.url}']" if gate else ""
    item = {
        "name": "lab admin token",
        "store": {"type": "env_file", "path": "{{ tradeops_lab_secrets_file }}", "key": "ADMIN_TOKEN"},
        "generate": generate or {"length": 32, "alphabet": "urlsafe"},
        "test": {"urls": ENGINE_URLS % extra, "interval": 0.1, "timeout": timeout,
                 "headers": {"X-Lab-Source": "management"}},
        "revoke_previous": True,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"secret_rotation_secrets": [item]}))
    return f"@{path}"


class PollingClient(threading.Thread):
    """A client that re-reads ADMIN_TOKEN from the secrets file before EVERY call (the fastest possible
    switch to a new token) and calls GET /pnl/status on the engines in turn, as fast as it can."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()
        self.results: list[tuple[str, int]] = []

    def run(self):
        engines = self.lab.state["engines"]
        i = 0
        while not self.stop.is_set():
            token = tokens(self.lab)["ADMIN_TOKEN"]
            engine = engines[i % len(engines)]
            self.results.append((engine["name"], status(engine, token)))
            i += 1
            time.sleep(0.005)

    def failures(self):
        return [r for r in self.results if r[1] != 200]


def run_rotation(lab, tmp_path, gate=None, *extra, **kw):
    return lab.run_playbook("rotate_secrets.yml", "-e", rotation_vars(tmp_path, gate, **kw), *extra)


# ---------------------------------------------------------------------------- routine rotation


def wait_for_calls(client, count, timeout=10.0) -> None:
    """Until the client has made ``count`` more calls (it polls throughout; not a fixed sleep)."""
    target = len(client.results) + count
    wait_until(lambda: len(client.results) >= target, timeout, f"the client to make {count} more calls")


def rotate_while_polling(lab, tmp_path, staging, attempt=0):
    """One routine rotation while a client polls before, throughout and after it; returns (old token, client)."""
    old = tokens(lab)["ADMIN_TOKEN"]
    client = PollingClient(lab)
    client.start()
    try:
        wait_for_calls(client, 50)
        proc = run_rotation(lab, tmp_path, None, "-e", f"secret_rotation_staging={staging}",
                            "-e", "secret_rotation_revoke_grace=1.5", name=f"vars-{attempt}.yml")
        wait_for_calls(client, 50)
    finally:
        client.stop.set()
        client.join(5)
    assert proc.returncode == 0, proc.stdout[-4000:]
    new = tokens(lab)["ADMIN_TOKEN"]
    assert new != old and set(tokens(lab)) == {"ADMIN_TOKEN"}
    assert accepted_everywhere(lab, new) and refused_everywhere(lab, old)
    assert len(client.results) > 200, "the client did not poll throughout"
    # routine: no halt, the engines kept trading
    assert all(e["trading_active"] for e in lab.lab.engines())
    return old, client


def test_routine_rotation_costs_a_polling_client_no_failed_call(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    _old, client = rotate_while_polling(lab, tmp_path, "pending")
    assert client.failures() == [], f"{len(client.failures())} failed calls of {len(client.results)}"


def test_the_control_a_direct_rotation_costs_the_same_client_failed_calls(lab_factory, tmp_path):
    """The control, which shows the client above can see a failed call: the new token written as current at
    once, the client switches to it before the engines re-read the file. The engines look at the file at most
    every 0.5 s, so the window is anywhere from 0 to 0.5 s; a window shorter than one poll of the client (a few
    ms, about 1 rotation in 50) shows nothing. Up to three rotations: at least one must cost failed calls, and
    every failure is a 401 (a refused token, never an error)."""
    lab = lab_factory(engines=4)
    failures = []
    for attempt in range(3):
        _old, client = rotate_while_polling(lab, tmp_path, "direct", attempt)
        failures = client.failures()
        if failures:
            break
    assert failures, "three rotations with staging=direct cost the client no failed call"
    assert {code for dummy, code in failures} == {401}


# ---------------------------------------------------------------------------- a fault at each step


def test_fault_at_create_changes_nothing_and_the_old_token_works(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    before = (lab.dir / "secrets.env").read_bytes()
    old = tokens(lab)["ADMIN_TOKEN"]
    proc = run_rotation(lab, tmp_path, None, "-e", "secret_rotation_revoke_grace=0",
                        generate={"length": 8, "alphabet": "hex"})  # no value can be created
    assert proc.returncode != 0 and "generate.length must be between 16 and 4096" in proc.stdout
    assert (lab.dir / "secrets.env").read_bytes() == before
    assert accepted_everywhere(lab, old, wait=0)


def test_fault_at_set_changes_nothing_and_the_old_token_works(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    before = (lab.dir / "secrets.env").read_bytes()
    old = tokens(lab)["ADMIN_TOKEN"]
    immutable(lab.dir, True)
    try:
        proc = run_rotation(lab, tmp_path, None, "-e", "secret_rotation_revoke_grace=0")
    finally:
        immutable(lab.dir, False)
    assert proc.returncode != 0
    assert "Operation not permitted; nothing was changed" in proc.stdout, proc.stdout[-3000:]
    assert (lab.dir / "secrets.env").read_bytes() == before
    assert accepted_everywhere(lab, old, wait=0)


def test_fault_at_test_rolls_back_and_every_engine_still_accepts_the_old_token(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    before = (lab.dir / "secrets.env").read_bytes()
    old = tokens(lab)["ADMIN_TOKEN"]
    gate = Gate(lambda token: 200 if token == old else 401)  # a server that never takes the new token
    try:
        proc = run_rotation(lab, tmp_path, gate, "-e", "secret_rotation_revoke_grace=0", timeout=1.5)
    finally:
        gate.close()
    assert proc.returncode != 0 and gate.calls > 0
    assert "refused the new value" in proc.stdout and "Rolled back" in proc.stdout, proc.stdout[-3000:]
    assert gate.url in proc.stdout  # the message names the server that refused it
    assert (lab.dir / "secrets.env").read_bytes() == before
    # the engines had accepted the staged token; after the rollback they accept the old one only
    assert accepted_everywhere(lab, old)
    assert old not in proc.stdout


def test_fault_at_finish_leaves_the_old_token_current_and_working(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    old = tokens(lab)["ADMIN_TOKEN"]

    def freeze(token):  # the test reached this server: freeze the store before the finish can write
        if token != old:
            immutable(lab.dir, True)
        return 200

    gate = Gate(freeze)
    try:
        proc = run_rotation(lab, tmp_path, gate, "-e", "secret_rotation_revoke_grace=0")
        held = tokens(lab)
    finally:
        immutable(lab.dir, False)
        gate.close()
    assert proc.returncode != 0
    assert "could not be promoted" in proc.stdout or "so did the rollback" in proc.stdout, proc.stdout[-3000:]
    # the store is as the set left it: the old token current (what clients send), the new one pending
    assert held["ADMIN_TOKEN"] == old and held.get("ADMIN_TOKEN_PENDING") not in (None, old)
    assert accepted_everywhere(lab, old)
    # a re-run replaces the stale pending value and finishes
    proc = run_rotation(lab, tmp_path, None, "-e", "secret_rotation_revoke_grace=0")
    assert proc.returncode == 0, proc.stdout[-3000:]
    new = tokens(lab)["ADMIN_TOKEN"]
    assert new not in (old, held["ADMIN_TOKEN_PENDING"]) and set(tokens(lab)) == {"ADMIN_TOKEN"}
    assert accepted_everywhere(lab, new) and refused_everywhere(lab, old)


def test_fault_at_revoke_leaves_both_tokens_working(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    old = tokens(lab)["ADMIN_TOKEN"]
    frozen = threading.Event()

    def freeze_after_finish():  # once the finish wrote ADMIN_TOKEN_PREVIOUS, freeze before the revoke
        deadline = time.time() + 60
        while time.time() < deadline and not frozen.is_set():
            if "ADMIN_TOKEN_PREVIOUS" in tokens(lab):
                immutable(lab.dir, True)
                frozen.set()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=freeze_after_finish, daemon=True)
    watcher.start()
    try:
        proc = run_rotation(lab, tmp_path, None, "-e", "secret_rotation_revoke_grace=2")
    finally:
        frozen.set()
        watcher.join(5)
        immutable(lab.dir, False)
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "Operation not permitted" in proc.stdout
    held = tokens(lab)
    new = held["ADMIN_TOKEN"]
    assert new != old and held["ADMIN_TOKEN_PREVIOUS"] == old
    assert accepted_everywhere(lab, new) and accepted_everywhere(lab, old)


# ---------------------------------------------------------------------------- a planted secret


def plant(lab, value):
    text = (lab.dir / "secrets.env").read_text()
    lines = [f"ADMIN_TOKEN={value}" if line.startswith("ADMIN_TOKEN=") else line for line in text.splitlines()]
    (lab.dir / "secrets.env").write_text("\n".join(lines) + "\n")
    lab.lab.reload_secrets()
    assert accepted_everywhere(lab, value)


def test_a_planted_secret_is_not_shown_by_check_diff_at_vvv(lab_factory, tmp_path, monkeypatch):
    lab = lab_factory(engines=3)
    canary = "CANARYplanted" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    plant(lab, canary)
    # the installation's fingerprint key, made by an earlier run (check mode creates none); ansible-playbook
    # and its modules inherit the variable (tests.conftest.ansible_env)
    key_path = tmp_path / "state" / "fingerprint.key"
    monkeypatch.setenv("TRADEOPS_FINGERPRINT_KEY_PATH", str(key_path))
    expected = fingerprint(canary, key_path)
    before = (lab.dir / "secrets.env").read_bytes()
    for playbook in ("rotate_secrets.yml", "security_breach.yml"):
        proc = lab.run_playbook(playbook, "--check", "--diff", "-vvv", "-e", f"incident_report_dir={tmp_path}",
                                "-e", f"evidence_dest={tmp_path}/evidence")
        out = proc.stdout + proc.stderr
        # the rotation ran in check mode and showed its diff: fingerprints, never the value
        assert "Stage, test and promote each secret" in out, out[-3000:]
        assert f"ADMIN_TOKEN: {expected}" in out, out[-3000:]
        assert hashlib.sha256(canary.encode()).hexdigest()[:12] not in out  # keyed, not a bare sha256
        assert canary not in out, playbook
    assert (lab.dir / "secrets.env").read_bytes() == before  # check mode changed nothing
    assert accepted_everywhere(lab, canary, wait=0)


def test_a_planted_secret_reaches_no_runner_artifact_and_no_report(lab_factory, tmp_path, monkeypatch):
    from tradeops.runner import run_incident

    lab = lab_factory(engines=3)
    canary = "CANARYrunner" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    plant(lab, canary)
    for key, value in ansible_env(lab.dir).items():
        monkeypatch.setenv(key, value)
    runs = tmp_path / "runs"
    result = run_incident("security_breach", runs_dir=runs, verbosity=3,
                          extravars={"incident_report_dir": str(tmp_path / "reports"),
                                     "evidence_dest": str(tmp_path / "evidence"), "health_gate_stable_for": 1,
                                     "halt_trading_quiesce_seconds": 1})
    assert result.ok, result.verdict
    new = tokens(lab)["ADMIN_TOKEN"]
    assert new != canary and refused_everywhere(lab, canary) and accepted_everywhere(lab, new)
    artifacts = Path(result.artifacts_path)
    assert (artifacts / "command").is_file() and list((artifacts / "job_events").glob("*.json"))
    assert (Path(result.run_dir) / "env").is_dir()
    # every file: artifacts/*/command, env/, job events, stdout, the report; the evidence archives opened
    assert files_holding(runs, [canary, new]) == []
    assert files_holding(tmp_path / "reports", [canary, new]) == []
    assert list((tmp_path / "reports").glob("*.json")), "no report was written"
    assert files_holding(tmp_path / "evidence", [canary, new]) == []
    stdout = (artifacts / "stdout").read_text()
    assert "Stage, test and promote each secret" in stdout
    assert json.dumps(result.report).count(canary) == 0
