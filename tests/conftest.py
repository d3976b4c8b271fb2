"""Shared fixtures: the collection on sys.path, and real labs (PostgreSQL, Redis, engines)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLLECTIONS = ROOT / "collections"
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
VENV_BIN = Path(sys.executable).parent


# tests/output holds artifacts (the per-checkout basetemp, molecule logs, copies of the collection
# with their own tests/): never collect from it.
collect_ignore_glob = ["output/*"]


def pytest_configure(config):
    # Registered here rather than in pyproject.toml: a pyproject change makes `make setup` reinstall the venv.
    config.addinivalue_line("markers", "molecule: runs `molecule test -s <scenario>` in real Docker containers")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs on every core (pytest-xdist, ``--dist loadfile``: a file's tests on one worker, so its
    module-scoped lab starts once). The Molecule drills are one file, run one after another on one worker (they
    share container names and the drill network). The files that use Docker go first: they are the longest
    stretch of the run, and the other workers take every other file meanwhile."""
    if not (config.pluginmanager.hasplugin("xdist") and getattr(config.option, "dist", "no") == "loadfile"):
        return
    docker_files = {item.nodeid.split("::")[0] for item in items
                    if "drill_images" in getattr(item, "fixturenames", ()) or item.get_closest_marker("molecule")}
    items[:] = ([item for item in items if item.nodeid.split("::")[0] in docker_files]
                + [item for item in items if item.nodeid.split("::")[0] not in docker_files])


def ansible_env(lab_dir: Path | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env.pop("TRADEOPS_LAB_STATE", None)
    if lab_dir is not None:
        env["TRADEOPS_LAB_DIR"] = str(lab_dir)
    env.update(extra)
    return env


class LabHandle:
    """A running lab plus the helpers tests use to prove what happened in the database."""

    def __init__(self, lab):
        self.lab = lab
        self.dir = Path(lab.lab_dir)

    @property
    def state(self):
        return self.lab.state

    def engines(self):
        return [e["name"] for e in self.state["engines"]]

    def query(self, sql, args=None):
        conn = self.lab.pg_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall()
        finally:
            conn.close()

    def orders_after(self, engine: str, epoch: float) -> int:
        return self.query("SELECT count(*) FROM orders WHERE engine = %s AND created_at > to_timestamp(%s)",
                          (engine, epoch))[0][0]

    def orders_between(self, engine: str, start: float, end: float) -> int:
        return self.query(
            "SELECT count(*) FROM orders WHERE engine = %s AND created_at > to_timestamp(%s) "
            "AND created_at <= to_timestamp(%s)", (engine, start, end))[0][0]

    def wait_for_orders(self, engines, since: float, timeout: float = 10.0) -> dict[str, int]:
        """Wait until every engine has written an order after `since`; return the counts."""
        deadline = time.time() + timeout
        while True:
            counts = {e: self.orders_after(e, since) for e in engines}
            if all(counts.values()) or time.time() > deadline:
                return counts
            time.sleep(0.2)

    def engines_view(self) -> dict[str, dict]:
        """Each engine's live state, as the engines report it (trading_active, halted, restarts, ...)."""
        return {e["name"]: e for e in self.lab.engines()}

    def assert_stays_halted(self, names, since: float, window: float = 1.0) -> None:
        """Watch ``names`` for ``window`` seconds: at every poll each reports trading stopped and has written no
        order since ``since``. Watching is the proof that nothing happens (an order in flight would show up
        meanwhile), not a sleep before one look."""
        deadline = time.monotonic() + window
        while True:
            view = self.engines_view()
            for name in names:
                assert not view[name]["trading_active"], f"{name} is trading: {view[name]}"
                after = self.orders_after(name, since)
                assert after == 0, f"{name} wrote {after} orders after {since}"
            if time.monotonic() > deadline:
                return
            time.sleep(0.2)

    def run_playbook(self, playbook: str, *args: str, timeout: float = 240, env: dict[str, str] | None = None):
        cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / "playbooks" / playbook), *args]
        started = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env={**ansible_env(self.dir), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        proc.elapsed = time.time() - started
        return proc


def start_lab(base: Path, engines: int = 6, faults: dict | None = None, mix=None, order_interval: float = 0.1):
    from tradeops.lab import Lab

    lab = Lab(base)
    lab.up(engines=engines, faults=faults or {}, mix=mix, order_interval=order_interval)
    return LabHandle(lab)


@pytest.fixture
def lab_factory(tmp_path_factory):
    """Start labs on demand; every one is torn down at the end of the test."""
    started = []

    def factory(**kwargs):
        handle = start_lab(tmp_path_factory.mktemp("lab"), **kwargs)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.lab.down()


DRILL_IMAGES = {"base": "tradeops/base:current", "trading_host": "tradeops/trading-host:current"}
IMAGES_TIMEOUT = 1200  # a cold build (debootstrap + apt in docker build) takes about a minute here


def docker_problem() -> str | None:
    """Why Docker cannot run containers here (None when it can): no CLI, or no daemon answering."""
    try:
        proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)
    except FileNotFoundError:
        return "the docker CLI is not installed (apt-get install docker.io; `make setup` does it)"
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 30 s"
    if proc.returncode != 0:
        return f"no Docker daemon answers: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return None


@pytest.fixture(scope="session")
def drill_images():
    """The drill images (tradeops/base, tradeops/trading-host), built by scripts/images.sh once per session
    (about a second when they are up to date). Without Docker this FAILS, naming the cause: the drills and
    the Docker tests never skip."""
    problem = docker_problem()
    if problem:
        pytest.fail(f"Docker cannot run here: {problem}. The Molecule drills and the Docker tests need it: run "
                    f"`make setup` as root (it starts dockerd), or start dockerd by hand.", pytrace=False)
    try:
        proc = subprocess.run([str(ROOT / "scripts" / "images.sh")], cwd=ROOT, capture_output=True, text=True,
                              timeout=IMAGES_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/images.sh did not finish within {IMAGES_TIMEOUT} s:\n{str(exc.stderr or '')[-3000:]}",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/images.sh failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}",
                    pytrace=False)
    return dict(DRILL_IMAGES)


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)
