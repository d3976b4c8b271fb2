"""`tradeops run` keeps every form of secret out of the runs directory (issue 13, medium 3), directly and with
--via-worker, while the playbook still gets each real value: a canary per form, every file under the runs
directory searched for it, and the play itself asserting (by hash, so the expected value is no secret) that it
received the canary. Also: --keep-runs deletes only the runs this tool created."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env

pytestmark = pytest.mark.integration

# Each form: how the canary is given, and the expression by which the play reads it back.
FORMS = {
    "nested_extravar": ("extravar", "my_db", "my_db.login_password"),
    "pgpassword": ("extravar", "pgpassword", "pgpassword"),
    "db_pw": ("extravar", "db_pw", "db_pw"),
    "env_hashi_vault_secret_id": ("env", "ANSIBLE_HASHI_VAULT_SECRET_ID",
                                  "lookup('ansible.builtin.env', 'ANSIBLE_HASHI_VAULT_SECRET_ID')"),
    "env_tradeops_pgpassword": ("env", "TRADEOPS_PGPASSWORD",
                                "lookup('ansible.builtin.env', 'TRADEOPS_PGPASSWORD')"),
}

PLAYBOOK = """---
- name: "Canary | The play gets the secret"
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Canary | The value the play got is the canary (compared by hash)
      ansible.builtin.assert:
        that:
          - ({expr}) | hash('sha256') == canary_sha256
          - my_db_host is not defined or my_db_host == 'db.internal'
        quiet: true
    - name: Canary | Print it, as a careless playbook would
      ansible.builtin.debug:
        msg: "got {{{{ {expr} }}}}"
"""


@pytest.fixture
def outside():
    """A directory outside the checkout (a playbook there is sent to a worker on its own)."""
    with tempfile.TemporaryDirectory(prefix="tradeops-canary-") as where:
        yield Path(where)


def files_holding(root: Path, needle: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and needle.encode() in p.read_bytes())


def tradeops(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 180):
    env = ansible_env(None, **(env_extra or {}))
    env.pop("ANSIBLE_CONFIG", None)
    return subprocess.run([str(VENV_BIN / "tradeops"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("via_worker", [False, True], ids=["direct", "via_worker"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_secret_form_reaches_the_play_and_no_file_of_the_runs_dir(form, via_worker, tmp_path, outside):
    kind, name, expr = FORMS[form]
    canary = f"cnry-{form}-{secrets.token_hex(8)}"
    playbook = outside / f"canary_{form}.yml"
    playbook.write_text(PLAYBOOK.format(expr=expr))
    runs = tmp_path / "runs"
    args = ["run", str(playbook), "-i", str(ROOT / "inventories" / "production.example"), "--runs-dir", str(runs),
            "--progress", "plain", "-e", f"canary_sha256={hashlib.sha256(canary.encode()).hexdigest()}"]
    env_extra = {}
    if kind == "env":
        env_extra[name] = canary
    elif name == "my_db":
        args += ["-e", json.dumps({"my_db": {"host": "db.internal", "login_password": canary}}),
                 "-e", "my_db_host='{{ my_db.host }}'"]  # the var's other values still work (and template)
    else:
        args += ["-e", f"{name}={canary}"]
    if via_worker:
        args.append("--via-worker")
    proc = tradeops(*args, env_extra=env_extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    result = json.loads((run_dir / "result.json").read_text())
    # the play got the real value: its assert passed (a wrong, missing or masked value fails the run)
    assert result["status"] == "successful" and result["hosts"]["localhost"]["ok"] == 2, result
    assert result["hosts"]["localhost"]["failures"] == 0
    assert (run_dir / "artifacts").is_dir() and (run_dir / "env" / "extravars").is_file()
    assert files_holding(runs, canary) == []
    assert canary not in proc.stdout + proc.stderr
    assert result["redacted_files"] == []  # kept out, not written and swept afterwards
    command = json.loads(next((run_dir / "artifacts").glob("*/command")).read_text())
    assert name not in command["env"]
    if kind == "extravar":
        assert name not in json.loads((run_dir / "env" / "extravars").read_text())


def test_a_malformed_extra_vars_file_says_where_not_what(tmp_path):
    canary = f"cnry-file-{secrets.token_hex(8)}"
    bad = tmp_path / "vars.yml"
    bad.write_text(f"reason: INC-1\ndb_password: \"{canary}\n  other: [\n")
    proc = tradeops("run", "p0_outage", "-e", f"@{bad}", "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 3, proc.stderr
    assert canary not in proc.stdout + proc.stderr
    assert str(bad) in proc.stderr and "line " in proc.stderr and "column " in proc.stderr


def test_keep_runs_deletes_only_runs_of_this_tool(tmp_path):
    """A foreign ansible-runner directory (a real `ansible-runner run`) in the runs directory survives
    --keep-runs 1; the older run of this tool does not."""
    runs = tmp_path / "runs"
    foreign = runs / "other-tool-job"
    (foreign / "project").mkdir(parents=True)
    (foreign / "project" / "noop.yml").write_text(
        "- name: Noop\n  hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: Noop | Say so\n      ansible.builtin.debug:\n        msg: noop\n")
    env = ansible_env(None)
    env.pop("ANSIBLE_CONFIG", None)
    made = subprocess.run([str(VENV_BIN / "ansible-runner"), "run", str(foreign), "-p", "noop.yml"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    assert (foreign / "artifacts").is_dir()
    playbook = tmp_path / "noop.yml"
    playbook.write_text((foreign / "project" / "noop.yml").read_text())
    seen = {foreign.name}
    ours = []
    for _ in range(2):
        proc = tradeops("run", str(playbook), "-i", str(ROOT / "inventories" / "production.example"),
                        "--runs-dir", str(runs), "--keep-runs", "1", "--progress", "none")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        (new,) = {p.name for p in runs.iterdir()} - seen
        seen.add(new)
        ours.append(new)
    first, second = ours
    left = {p.name for p in runs.iterdir()}
    assert left == {foreign.name, second}, left
    assert (foreign / "artifacts").is_dir() and (foreign / "project" / "noop.yml").is_file()
    assert first not in left
