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

    def run_playbook(self, playbook: str, *args: str, timeout: float = 240):
        cmd = [str(VENV_BIN / "ansible-playbook"), str(ROOT / "playbooks" / playbook), *args]
        started = time.time()
        proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(self.dir), capture_output=True, text=True,
                              timeout=timeout)
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


def read_json(path: Path):
    with open(path) as fh:
        return json.load(fh)
