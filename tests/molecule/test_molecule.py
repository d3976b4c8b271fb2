"""Every Molecule scenario under molecule/: `molecule test -s <scenario>` in real Docker containers.

A scenario is any directory of molecule/ with a molecule.yml, so a new one is picked up without
touching this file. The images come from scripts/images.sh, once per session (the `drill_images`
fixture). Without a Docker daemon every test here FAILS, naming the cause; nothing is skipped.
Each run is bounded (TRADEOPS_MOLECULE_TIMEOUT, default 900 s); on failure or timeout the tail of
molecule's output is shown, the whole log is kept in tests/output/molecule/<scenario>.log, and the
scenario's containers are destroyed.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.molecule

MOLECULE_DIR = ROOT / "molecule"
SCENARIOS = sorted(p.parent.name for p in MOLECULE_DIR.glob("*/molecule.yml"))
TIMEOUT = int(os.environ.get("TRADEOPS_MOLECULE_TIMEOUT", "900"))
LOG_DIR = ROOT / "tests" / "output" / "molecule"
TAIL_LINES = 120


def molecule_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # plain text: the log and the failure message are read by people, not terminals
    env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0", MOLECULE_NO_LOG="false")
    for var in ("ANSIBLE_CONFIG", "ANSIBLE_INVENTORY", "TRADEOPS_LAB_DIR", "TRADEOPS_LAB_STATE"):
        env.pop(var, None)  # molecule writes its own ansible.cfg and inventory
    return env


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def test_the_drills_are_there():
    """The scenarios this suite must run (others are picked up as they appear)."""
    assert {"p0_outage", "data_corruption", "docker_runtime", "agent_failure"} <= set(SCENARIOS), SCENARIOS


@pytest.mark.timeout(TIMEOUT + 120)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(scenario: str, drill_images: dict[str, str]) -> None:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{scenario}.log"
    cmd = [str(VENV_BIN / "molecule"), "test", "-s", scenario]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=molecule_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode("utf-8", "replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        log.write_text(out)
        subprocess.run([str(VENV_BIN / "molecule"), "destroy", "-s", scenario], cwd=ROOT, env=molecule_env(),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
        pytest.fail(f"molecule test -s {scenario} did not finish within {TIMEOUT} s (containers destroyed); "
                    f"log: {log}\n{tail(out)}", pytrace=False)
    elapsed = time.monotonic() - started
    log.write_text(proc.stdout)
    assert proc.returncode == 0, (
        f"molecule test -s {scenario} exited {proc.returncode} after {elapsed:.0f} s; log: {log}\n{tail(proc.stdout)}")
    print(f"molecule test -s {scenario}: {elapsed:.0f} s")


def test_scenarios_name_their_containers_and_share_only_their_own_networks():
    """Containers are named tradeops-*, use local tradeops/ images, and the only networks they share are
    ones their scenario creates (never the host's)."""
    import yaml

    for scenario in SCENARIOS:
        config = yaml.safe_load(Path(MOLECULE_DIR / scenario / "molecule.yml").read_text())
        assert config["driver"]["name"] == "docker", scenario
        platforms = config["platforms"]
        created = {n["name"] for p in platforms for n in p.get("docker_networks", [])}
        assert all(n.startswith("tradeops") for n in created), (scenario, created)
        for platform in platforms:
            assert platform["name"].startswith("tradeops"), (scenario, platform["name"])
            assert platform["image"].startswith("tradeops/"), (scenario, platform["image"])
            assert platform.get("network_mode") in (None, "bridge"), (scenario, platform["name"])
            assert {n["name"] for n in platform.get("networks", [])} <= created, (scenario, platform["name"])
