"""Static quality gates, run as tests so `make test` cannot pass without them.

- ansible-lint with the production profile and no ignores;
- ansible-test sanity on a copy laid out as ansible_collections/tradeops/remediation;
- ruff on the Python code;
- every playbook runs its fleet roles once per play, not once per engine;
- the collection tarball installs into a clean collections path and its module runs there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.sanity
STANDIN = Path(__file__).with_name("get_pip_offline.py")


def run(cmd, cwd=ROOT, env=None, timeout=900):
    base = dict(os.environ)
    base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
    base.update(env or {})
    return subprocess.run(cmd, cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout, check=False)


def tracked_files():
    out = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.splitlines()
    return [f for f in out if not f.startswith("collections/") and (ROOT / f).is_file()]


def test_ansible_lint_production_profile_with_no_ignores():
    config = yaml.safe_load((ROOT / ".ansible-lint").read_text())
    assert config["profile"] == "production"
    assert not config.get("skip_list") and not config.get("warn_list")
    assert not (ROOT / ".ansible-lint-ignore").exists()
    proc = run([str(VENV_BIN / "ansible-lint")])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "Profile 'production' was required, and it passed" in proc.stdout + proc.stderr


def test_ruff():
    proc = run([str(VENV_BIN / "ruff"), "check", "src", "tests", "plugins", "bench", "scripts"])
    assert proc.returncode == 0, proc.stdout[-5000:]


CONDITIONAL_KEYS = ("that", "when", "failed_when", "changed_when", "until")


def _non_string_conditionals(node, where):
    """Yield every conditional that YAML did not parse as a string (an unquoted ': ' makes it a mapping)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in CONDITIONAL_KEYS:
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, (str, bool)):
                        yield f"{where}: {key}: {item!r}"
            yield from _non_string_conditionals(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _non_string_conditionals(item, where)


def test_every_conditional_is_a_string():
    """ansible-core refuses a conditional that is not a string, but only when the task runs (molecule's
    verify, a rarely taken branch); ansible-lint does not see it. This finds them all at once."""
    files = [f for f in tracked_files() if f.endswith((".yml", ".yaml"))
             and f.startswith(("playbooks/", "roles/", "molecule/", "extensions/", "tests/"))]
    assert any(f.startswith("molecule/") for f in files) and any(f.startswith("roles/") for f in files)
    broken = [hit for f in files for hit in _non_string_conditionals(yaml.safe_load((ROOT / f).read_text()), f)]
    assert not broken, "quote these conditionals:\n" + "\n".join(broken)


def _tasks(node, rescue=False):
    """Yield (task, in_rescue) for every task of a task list, blocks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        yield task, rescue
        yield from _tasks(task.get("block"), rescue)
        yield from _tasks(task.get("rescue"), True)
        yield from _tasks(task.get("always"), rescue)


def _fleet_roles() -> set[str]:
    """The roles whose every task runs once for the whole fleet (run_once, a role import, or a meta task such as
    end_role; an import of the role's own task file is checked in that file): halt_trading and the like, as opposed
    to evidence or service_recovery, which work on each host."""
    fleet = set()
    for role in sorted((ROOT / "roles").iterdir()):
        tasks = [t for f in sorted((role / "tasks").glob("*.yml")) for t, _ in _tasks(yaml.safe_load(f.read_text()))
                 if "block" not in t]
        if tasks and all(t.get("run_once") or "ansible.builtin.import_role" in t or "ansible.builtin.meta" in t
                         or "ansible.builtin.import_tasks" in t for t in tasks):
            fleet.add(f"tradeops.remediation.{role.name}")
    return fleet


def test_fleet_roles_run_once_per_play_not_once_per_engine():
    """A playbook runs a fleet role with include_role and run_once. Imported, or included without run_once,
    the role runs for every engine of the play, and Ansible ends each run with an implicit task per host, in the
    plays --tags skips too: 13,000 of them, 12 s, for a contain phase on 1,000 engines. A rescue's per-host
    incident report (it names the host that failed) is the exception."""
    fleet = _fleet_roles()
    assert {"tradeops.remediation.halt_trading", "tradeops.remediation.venue_guard"} <= fleet, fleet
    wrong = []
    for path in sorted((ROOT / "playbooks").glob("*.yml")):
        for play in yaml.safe_load(path.read_text()) or []:
            for section in ("pre_tasks", "tasks", "post_tasks"):
                for task, in_rescue in _tasks(play.get(section)):
                    for action in ("ansible.builtin.import_role", "ansible.builtin.include_role"):
                        role = (task.get(action) or {}).get("name")
                        if role not in fleet:
                            continue
                        once = action.endswith("include_role") and task.get("run_once") is True
                        if not once and not (in_rescue and action.endswith("include_role")):
                            wrong.append(f"{path.name}: {task.get('name')}")
    assert not wrong, "run these fleet roles with include_role and run_once: true:\n" + "\n".join(wrong)


def _copy_as_collection(dest: Path) -> Path:
    coll = dest / "ansible_collections" / "tradeops" / "remediation"
    for rel in tracked_files():
        target = coll / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return coll


@pytest.fixture
def outside_checkout():
    """A temp dir outside this git checkout: inside it, ansible-test would list files with git."""
    path = Path(tempfile.mkdtemp(prefix="tradeops-sanity-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_ansible_test_sanity_on_modules_and_plugins(outside_checkout):
    coll = _copy_as_collection(outside_checkout)
    cmd = [str(VENV_BIN / "ansible-test"), "sanity", "--python", f"{sys.version_info[0]}.{sys.version_info[1]}",
           "--color", "no", "plugins/", "meta/"]
    proc = run(cmd, cwd=coll, timeout=1500)
    missing = re.search(r"can be manually downloaded and saved to: (\S+)", proc.stdout + proc.stderr)
    if missing:
        # No route to ansible-test's pip bootstrap host here: install the offline stand-in
        # (ensurepip + the machine's pip configuration) where ansible-test looks for it.
        cache = Path(missing.group(1))
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(STANDIN, cache)
        shutil.rmtree(Path.home() / ".ansible" / "test" / "venv", ignore_errors=True)
        proc = run(cmd, cwd=coll, timeout=1500)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, "\n".join(line for line in output.splitlines() if "ERROR" in line or "FATAL" in line)
    for test in ("validate-modules", "pylint", "pep8", "compile", "import", "ansible-doc", "yamllint"):
        assert f'Running sanity test "{test}"' in output, f"sanity test {test} did not run"


def test_collection_builds_installs_cleanly_and_its_module_runs(tmp_path):
    build = run([str(VENV_BIN / "ansible-galaxy"), "collection", "build", "--force", "--output-path",
                 str(tmp_path)])
    assert build.returncode == 0, build.stdout + build.stderr
    tarball = next(tmp_path.glob("tradeops-remediation-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "plugins/modules/halt_trading.py" in names
    assert "roles/halt_trading/tasks/main.yml" in names
    for dev_only in ("src", "collections", ".venv", "Makefile", "pyproject.toml", ".ci"):
        assert not any(n == dev_only or n.startswith(dev_only + "/") for n in names), dev_only

    colls = tmp_path / "colls"
    empty_cfg = tmp_path / "empty.cfg"
    empty_cfg.write_text("[defaults]\n")
    # A clean Ansible: no project ansible.cfg, so the checkout's symlinked collection is invisible.
    clean = {"ANSIBLE_CONFIG": str(empty_cfg), "ANSIBLE_COLLECTIONS_PATH": str(colls)}
    inst = run([str(VENV_BIN / "ansible-galaxy"), "collection", "install", "--no-deps", "-p", str(colls),
                str(tarball)], env=clean)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert (colls / "ansible_collections/tradeops/remediation/plugins/modules/halt_trading.py").exists()

    flag = tmp_path / "EMERGENCY_STOP"
    args = f'{{"targets": [{{"name": "e1", "methods": [{{"type": "file", "path": "{flag}"}}]}}]}}'
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = dict(clean, ANSIBLE_INVENTORY="localhost,")
    adhoc = run([str(VENV_BIN / "ansible"), "localhost", "-c", "local", "-m", "tradeops.remediation.halt_trading",
                 "-a", args, "-e", f"ansible_python_interpreter={sys.executable}"], cwd=work, env=env)
    assert adhoc.returncode == 0, adhoc.stdout + adhoc.stderr
    assert flag.exists(), "the installed module did not halt"
    doc = run([str(VENV_BIN / "ansible-doc"), "-t", "module", "tradeops.remediation.halt_trading"], cwd=work, env=env)
    assert doc.returncode == 0 and str(colls) in doc.stdout, doc.stdout[:500] + doc.stderr
