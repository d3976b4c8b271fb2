"""tradeops.lab.node: one part of the lab per host (what the Molecule drills run in each container),
exercised here on this machine: a database node on the loopback, an engine node trading into it, the
drill's faults (SIGKILL, SIGSTOP), the restart that repairs them, and the database faults."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psycopg2
import pytest

from tradeops.lab import node
from tradeops.lab.postgres import PostgresServer
from tradeops.lab.procs import free_port, pid_alive
from tradeops.lab.redis_server import RedisServer
from tradeops.lab.state import ENGINES_CONFIG_FILE, write_json_atomic


def cli(capsys, *argv: str) -> tuple[int, dict]:
    rc = node.main(list(argv))
    captured = capsys.readouterr()
    return rc, (json.loads(captured.out) if rc == 0 else {"stderr": captured.err})


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("node-db")
    out = node.db_up(directory, "127.0.0.1", free_port(), free_port(),
                     {"postgres_password": "pgsecret-123", "redis_password": "redissecret-456"})
    assert out["changed"] is True
    try:
        yield directory
    finally:
        state = json.loads((directory / node.DB_FILE).read_text())
        RedisServer(directory).stop(state["redis"])
        PostgresServer(directory).stop(state["postgres"])


def db_state(directory: Path) -> dict:
    return json.loads((directory / node.DB_FILE).read_text())


def test_db_up_uses_the_given_passwords_is_idempotent_and_never_prints_them(db_dir, capsys):
    state = db_state(db_dir)
    assert state["postgres"]["password"] == "pgsecret-123" and state["redis"]["password"] == "redissecret-456"
    assert oct((db_dir / node.DB_FILE).stat().st_mode & 0o777) == "0o600"
    rc, out = cli(capsys, "db", "up", "--dir", str(db_dir))
    assert rc == 0 and out["changed"] is False
    assert "password" not in json.dumps(out) and "pgsecret" not in json.dumps(out)
    assert out["postgres"]["port"] == state["postgres"]["port"]


def test_secrets_on_stdin_are_checked():
    import io

    assert node._read_secrets(io.StringIO('{"postgres_password": "a"}')) == {"postgres_password": "a"}
    with pytest.raises(node.LabInputError, match="unknown key"):
        node._read_secrets(io.StringIO('{"admin": "a"}'))
    with pytest.raises(node.LabInputError, match="not JSON"):
        node._read_secrets(io.StringIO("password=a"))


@pytest.fixture
def engine_dir(db_dir, tmp_path):
    state = db_state(db_dir)
    port = free_port()
    (tmp_path / "secrets.env").write_text("ADMIN_TOKEN=admintoken-1\n")
    write_json_atomic(tmp_path / ENGINES_CONFIG_FILE, {
        "admin_token": "admintoken-1", "control_token": "controltoken-1", "secrets_file": str(tmp_path / "secrets.env"),
        "order_interval": 0.05, "postgres": state["postgres"], "redis": state["redis"],
        "engines": [{"name": "node-engine", "host": "127.0.0.1", "bind": "127.0.0.1", "port": port,
                     "dir": str(tmp_path / "engines" / "node-engine"), "methods": ["killswitch_api", "redis"],
                     "redis_key": "emergency_halt:node-engine", "faults": []}],
    })
    yield tmp_path
    pid = node._read_pid(tmp_path)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def orders(db_dir: Path, since: float) -> int:
    state = db_state(db_dir)["postgres"]
    conn = psycopg2.connect(host=state["host"], port=state["port"], dbname=state["dbname"], user=state["user"],
                            password=state["password"])
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM orders WHERE engine = 'node-engine' AND created_at > to_timestamp(%s)",
                        (since,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def wait_orders(db_dir: Path, since: float, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := orders(db_dir, since)) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return n


def test_engines_start_serve_on_the_fixed_port_and_trade_into_the_database_node(db_dir, engine_dir, capsys):
    since = time.time()
    rc, out = cli(capsys, "engines", "start", "--dir", str(engine_dir))
    assert rc == 0 and out["changed"] is True and out["state"] == "running", out
    port = json.loads((engine_dir / ENGINES_CONFIG_FILE).read_text())["engines"][0]["port"]
    assert out["engines"] == {"node-engine": {"port": port, "listening": True}}
    assert wait_orders(db_dir, since) > 0
    rc, again = cli(capsys, "engines", "start", "--dir", str(engine_dir))
    assert rc == 0 and again["changed"] is False and again["pid"] == out["pid"]


def test_freeze_hangs_kill_crashes_and_restart_repairs_both(db_dir, engine_dir, capsys):
    assert cli(capsys, "engines", "start", "--dir", str(engine_dir))[0] == 0
    rc, frozen = cli(capsys, "engines", "freeze", "--dir", str(engine_dir))
    assert rc == 0 and frozen["changed"] is True and frozen["state"] == "stopped", frozen
    assert frozen["engines"]["node-engine"]["listening"] is False
    assert cli(capsys, "engines", "freeze", "--dir", str(engine_dir))[1]["changed"] is False
    # start does not touch a hung process: the restart is the repair
    assert cli(capsys, "engines", "start", "--dir", str(engine_dir))[1]["pid"] == frozen["pid"]

    rc, restarted = cli(capsys, "engines", "restart", "--dir", str(engine_dir))
    assert rc == 0 and restarted["stopped_with"] == "SIGKILL" and restarted["previous_pid"] == frozen["pid"]
    assert restarted["state"] == "running" and restarted["engines"]["node-engine"]["listening"] is True
    assert not pid_alive(frozen["pid"])
    since = time.time()
    assert wait_orders(db_dir, since) > 0

    rc, killed = cli(capsys, "engines", "kill", "--dir", str(engine_dir))
    assert rc == 0 and killed["state"] == "dead" and killed["pid"] is None
    assert cli(capsys, "engines", "kill", "--dir", str(engine_dir))[1]["changed"] is False
    rc, back = cli(capsys, "engines", "restart", "--dir", str(engine_dir))
    assert rc == 0 and back["stopped_with"] == "not running" and back["state"] == "running"


def test_restart_of_a_running_engine_stops_it_gracefully(engine_dir, capsys):
    assert cli(capsys, "engines", "start", "--dir", str(engine_dir))[0] == 0
    rc, out = cli(capsys, "engines", "restart", "--dir", str(engine_dir))
    assert rc == 0 and out["stopped_with"] == "SIGTERM" and out["pid"] != out["previous_pid"]


def test_engines_without_a_config_fail_clearly(tmp_path, capsys):
    rc, out = cli(capsys, "engines", "start", "--dir", str(tmp_path))
    assert rc == 1 and "engines-config.json not found" in out["stderr"]


def test_the_database_faults_are_the_labs_and_happen_once(db_dir, capsys):
    rc, rows = cli(capsys, "db", "corrupt-rows", "--dir", str(db_dir))
    assert rc == 0 and rows["changed"] is True and rows["total"] == 21
    assert cli(capsys, "db", "corrupt-rows", "--dir", str(db_dir))[1] == {**rows, "changed": False}
    rc, index = cli(capsys, "db", "corrupt-index", "--dir", str(db_dir))
    assert rc == 0 and index["changed"] is True and index["amcheck"]["status"] == "corrupt", index
    assert db_state(db_dir)["postgres"]["pid"] != 0 and pid_alive(db_state(db_dir)["postgres"]["pid"])
    rc, again = cli(capsys, "db", "corrupt-index", "--dir", str(db_dir))
    assert rc == 0 and again["changed"] is False
