"""The runner API (tradeops.run_incident) against real labs: a correct IncidentResult on success and on
failure, cancel, secret hygiene proven with canaries, and transmit | worker | process = a direct run."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tarfile
import time
from datetime import datetime
from pathlib import Path

import pytest

import tradeops
from tests.conftest import ROOT, VENV_BIN, start_lab
from tests.helpers.records import read_record
from tradeops.runner import IncidentResult, Secret, run_incident, run_incident_async
from tradeops.runner.interface import _copy_project
from tradeops.runner.result import load_events, summarize
from tradeops.runner.secrets import MASK

pytestmark = pytest.mark.integration

FAST = {"halt_trading_quiesce_seconds": 1, "health_gate_stable_for": 2, "halt_trading_timeout": 4}
PHASES = ["contain", "assess", "evidence", "repair", "verify", "resume", "learn"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One lab for the module: 5 engines, engine-002 crashed."""
    handle = start_lab(tmp_path_factory.mktemp("runner-lab"), engines=5, faults={"engine-002": "crash"})
    yield handle
    handle.lab.down()


@pytest.fixture
def lab_env(lab, monkeypatch):
    monkeypatch.setenv("TRADEOPS_LAB_DIR", str(lab.dir))
    monkeypatch.delenv("TRADEOPS_LAB_STATE", raising=False)
    return lab


def secret_dirs() -> set[str]:
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob("tradeops-secrets-*")} if shm.is_dir() else set()


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Every file under root (tar.gz evidence archives opened) that holds any needle."""
    hits = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        blobs = [path.read_bytes()]
        if path.name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                blobs += [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
        if any(n.encode() in b for b in blobs for n in needles):
            hits.append(str(path.relative_to(root)))
    return hits


def test_p0_resolves_with_a_correct_result_and_no_secret_reaches_the_runs_dir(lab_env, tmp_path, monkeypatch):
    lab = lab_env
    canary_var, canary_env, canary_url = (f"cnry-{what}-{secrets.token_hex(6)}" for what in ("var", "env", "url"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary_env)
    monkeypatch.setenv("TRADEOPS_API_TOKEN", canary_env)  # an allow-listed prefix, but a secret name
    monkeypatch.setenv("DATABASE_URL", f"postgres://ops:{canary_url}@db.internal/trading")
    before = secret_dirs()
    seen: list[dict] = []
    runs = tmp_path / "runs"
    started = time.time()
    result = tradeops.run_incident("p0_outage", extravars={**FAST, "canary_password": Secret(canary_var),
                                                           "p0_outage_reason": "INC-1 runner api test"},
                                   event_handler=seen.append, runs_dir=runs)
    elapsed = time.time() - started
    engines = lab.engines()

    assert (result.status, result.rc, result.outcome, result.exit_code) == ("successful", 0, "resolved", 0), \
        result.verdict + str(result.failures)
    assert result.awaiting_approval and "awaiting approval" in result.verdict
    assert result.halted == engines and result.not_halted == [] and result.resumed == []
    assert result.contained == [e for e in engines if e != "engine-002"]
    assert result.restarted == result.recovered == ["engine-002"] and result.not_recovered == []
    assert result.still_nogo == [] and result.health_gate == "GO"
    for name in engines:
        assert result.hosts[name].halt_status in ("halted", "already_halted") and result.hosts[name].health == "GO"
        assert result.hosts[name].failures == 0
    assert result.hosts["lab-controller"].ok > 0
    # the timeline: (time, phase, task, host, result), in order, every phase
    first_seen = list(dict.fromkeys(t.phase for t in result.timeline))
    assert first_seen == PHASES
    assert all(len(t) == 5 and t.time and t.task for t in result.timeline)
    assert [t.time for t in result.timeline] == sorted(t.time for t in result.timeline)
    assert ("repair", "engine-002", "changed") in {(t.phase, t.host, t.result) for t in result.timeline}
    # the report and the artifacts
    report = read_record(Path(result.report_path).parent, Path(result.report_path).stem)
    # one computation: the record's verdict is the runner's outcome, exit code and wording
    assert report["verdict"]["text"] == result.verdict and report["verdict"]["exit_code"] == result.exit_code
    assert report["verdict"]["text"].startswith("RECOVERED") and report == result.report
    assert Path(result.report_markdown_path).is_file() and result.evidence
    artifacts = Path(result.artifacts_path)
    assert len(list((artifacts / "job_events").glob("*.json"))) == len(seen) > 0
    assert all("tradeops" in e for e in seen)
    assert IncidentResult.load(Path(result.run_dir) / "result.json").halted == engines
    assert tradeops.load_result(result.run_id, runs).verdict == result.verdict
    # the lab agrees: nothing trades, and no contained engine traded after its verified halt (the record's time of
    # the contain phase's halt call, not the phase's first task: the call may come seconds later on a loaded machine)
    assert not [e["name"] for e in lab.lab.engines() if e["trading_active"]]
    [contain] = [h for h in report["halts"] if h["phase"] == "contain"]
    since = datetime.fromisoformat(contain["at"].replace("Z", "+00:00")).timestamp()
    assert all(lab.orders_after(n, since) == 0 for n in result.contained)

    # secret hygiene: the canaries reached no file, the environment stayed behind, the secret file is gone
    assert files_holding(runs, [canary_var, canary_env, canary_url]) == []
    assert result.redacted_files == []
    command = json.loads((artifacts / "command").read_text())
    assert not {"AWS_SECRET_ACCESS_KEY", "TRADEOPS_API_TOKEN", "DATABASE_URL"} & set(command["env"])
    assert any(arg.startswith("@") and "tradeops-secrets-" in arg for arg in command["command"])
    assert "canary_password" not in (Path(result.run_dir) / "env" / "extravars").read_text()
    assert secret_dirs() <= before
    print(f"\np0_outage via the runner API: {elapsed:.1f}s")


CANARY_PLAYBOOK = """---
- name: "Canary | Print every secret the run was given"
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Canary | Debug the secret extra var
      ansible.builtin.debug:
        var: canary_password
    - name: Canary | Echo the secret environment variable
      ansible.builtin.command: echo "{{ lookup('ansible.builtin.env', 'CANARY_ENV') }}"
      changed_when: false
    - name: Canary | A fact made of both
      ansible.builtin.set_fact:
        leaked: "{{ canary_password }}/{{ lookup('ansible.builtin.env', 'CANARY_ENV') }}"
    - name: Canary | Fail with it
      ansible.builtin.fail:
        msg: "{{ leaked }}"
      ignore_errors: true
"""


def test_job_events_are_filtered_even_when_a_playbook_prints_the_secrets(tmp_path, monkeypatch):
    """The playbook really gets both secrets (the echo proves it) and prints them; nothing on disk has them."""
    canary_var, canary_env = f"cnry-var-{secrets.token_hex(6)}", f"cnry-env-{secrets.token_hex(6)}"
    monkeypatch.setenv("CANARY_ENV", canary_env)
    playbook = tmp_path / "canary.yml"
    playbook.write_text(CANARY_PLAYBOOK)
    seen: list[dict] = []
    before = secret_dirs()
    result = run_incident(str(playbook), extravars={"canary_password": Secret(canary_var)},
                          secret_env=["CANARY_ENV"], inventory=str(ROOT / "inventories" / "production.example"),
                          event_handler=seen.append, runs_dir=tmp_path / "runs")
    assert result.status == "successful", result.failures
    texts = [json.dumps(e) for e in seen]
    assert not any(canary_var in t or canary_env in t for t in texts)
    echo = next(e for e in seen if e["event"] == "runner_on_ok" and "Echo" in e["event_data"]["task"])
    assert echo["event_data"]["res"]["stdout"] == MASK  # it was the secret, and it was masked
    assert any(MASK in str((e["event_data"].get("res") or {}).get("msg", "")) for e in seen
               if e["event"] == "runner_on_failed")
    assert files_holding(tmp_path / "runs", [canary_var, canary_env]) == []
    assert MASK in (Path(result.artifacts_path) / "stdout").read_text()
    command = json.loads((Path(result.artifacts_path) / "command").read_text())
    assert "CANARY_ENV" not in command["env"] and command["command"][1].endswith("_launch.py")
    assert secret_dirs() <= before


def test_a_repair_that_fails_leaves_every_engine_halted_exit_2(lab_env, tmp_path):
    lab = lab_env
    lab.lab.inject("unrecoverable", engines=["engine-004"])
    try:
        result = run_incident("p0_outage", extravars={**FAST, "service_recovery_rto_seconds": 3},
                              runs_dir=tmp_path / "runs")
    finally:
        lab.lab.inject("unrecoverable", engines=["engine-004"], clear=True)
    assert (result.status, result.rc) == ("failed", 2)
    assert (result.outcome, result.exit_code) == ("halted_not_recovered", 2), result.verdict
    assert result.halted == lab.engines() and result.not_halted == []
    assert result.still_nogo == ["engine-004"] and result.not_recovered == ["engine-004"]
    # (engine-002 of the module's lab is recovered here when this test runs first: it starts crashed)
    assert "engine-004" not in result.recovered and result.health_gate is None and not result.awaiting_approval
    # the playbook stops in the repair phase, trading halted, after writing the incident report
    assert result.report_path and Path(result.report_path).exists(), result.report_path
    report = read_record(Path(result.report_path).parent, Path(result.report_path).stem)
    assert report["verdict"]["text"] == result.verdict and report["verdict"]["outcome"] == "halted_not_recovered"
    assert result.verdict.startswith("HALTED, NOT RECOVERED in repair") and report["failure"]["phase"] == "repair"
    failure = next(f for f in result.failures if f.host == "engine-004")
    assert failure.phase == "repair" and "still NO-GO" in failure.message
    assert result.hosts["engine-004"].failures == 1 and result.hosts["engine-004"].health == "NO-GO"
    assert "verify" not in {t.phase for t in result.timeline}
    assert not [e["name"] for e in lab.lab.engines() if e["trading_active"]]


def test_async_run_can_be_canceled(lab_env, tmp_path):
    holder: list = []

    def on_event(event):
        if holder and (event.get("tradeops") or {}).get("phase") == "assess":
            holder[0].cancel()

    thread, handle = run_incident_async("p0_outage", extravars=FAST, event_handler=on_event,
                                        runs_dir=tmp_path / "runs")
    holder.append(handle)
    result = handle.wait(timeout=120)
    thread.join(timeout=10)
    assert not thread.is_alive() and handle.done
    assert (result.status, result.outcome, result.exit_code) == ("canceled", "canceled", 1)
    assert result.halted == lab_env.engines()  # the contain phase had run
    assert not {"repair", "verify", "learn"} & {t.phase for t in result.timeline}
    assert (Path(result.run_dir) / "result.json").is_file()


def _pipeline(pdd: Path, out: Path, lab_dir: Path, work: Path) -> subprocess.CompletedProcess:
    """ansible-runner transmit | ansible-runner worker | ansible-runner process, as real processes."""
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    (pdd / "env").mkdir(parents=True)
    (pdd / "env" / "envvars").write_text(json.dumps({"TRADEOPS_LAB_DIR": str(lab_dir), "ANSIBLE_NOCOLOR": "1"}))
    (pdd / "env" / "extravars").write_text(json.dumps(FAST))
    runner = VENV_BIN / "ansible-runner"
    cmd = (f"{runner} transmit {pdd} -p playbooks/p0_outage.yml --cmdline '--tags contain' --ident pipe"
           f" | {runner} worker --private-data-dir {work} --delete"
           f" | {runner} process {out} --ident pipe")
    return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True, text=True,
                          timeout=240)


def test_transmit_worker_process_halts_the_same_engines_as_a_direct_run(lab_factory, tmp_path, monkeypatch):
    faults = {"engine-002": "crash"}
    direct_lab, remote_lab, api_lab = (lab_factory(engines=4, faults=faults) for _ in range(3))
    monkeypatch.setenv("TRADEOPS_LAB_DIR", str(direct_lab.dir))
    direct = run_incident("p0_outage", tags="contain", extravars=FAST, runs_dir=tmp_path / "runs")

    pdd, out = tmp_path / "transmit", tmp_path / "process"
    _copy_project(ROOT, pdd / "project", ROOT / "playbooks" / "p0_outage.yml")
    proc = _pipeline(pdd, out, remote_lab.dir, tmp_path / "worker")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    artifacts = out / "artifacts" / "pipe"
    status, rc = (artifacts / "status").read_text().strip(), int((artifacts / "rc").read_text())
    remote = summarize(load_events(artifacts), status=status, rc=rc)

    assert direct.halted == remote["halted"] == ["engine-001", "engine-003", "engine-004"]
    assert direct.not_halted == remote["not_halted"] == ["engine-002"]
    assert direct.exit_code == remote["exit_code"] == 1  # contain alone cannot verify the crashed engine
    via = _via_worker_api(api_lab, tmp_path, monkeypatch)
    assert via.via_worker and via.halted == direct.halted and via.not_halted == direct.not_halted
    assert via.exit_code == 1 and Path(via.artifacts_path, "rc").read_text().strip() == "0"
    for lab in (direct_lab, remote_lab, api_lab):
        view = {e["name"]: e for e in lab.lab.engines()}
        assert [n for n, e in view.items() if e["trading_active"]] == []



def _via_worker_api(api_lab, tmp_path, monkeypatch):
    """The API's via_worker path: transmit and worker as processes, the process step in-process."""
    monkeypatch.setenv("TRADEOPS_LAB_DIR", str(api_lab.dir))
    return run_incident("p0_outage", tags="contain", extravars={**FAST, "p0_outage_reason": "via worker"},
                        via_worker=True, runs_dir=tmp_path / "runs")
