"""One part of the lab per host: how the Molecule drills spread the lab over containers.

The lab (``tradeops lab up``) runs the whole stack on one machine, on the loopback. A drill runs it across
hosts instead: a database host (PostgreSQL and Redis, listening on its network) and engine hosts (one
engines process each, listening on their network address, writing orders to the database host). This
module is what runs on each of those hosts (``python3 -m tradeops.lab.node ...`` in the
``tradeops/trading-host`` image); it reuses the lab's own pieces (``PostgresServer``, ``RedisServer``,
the engines process, the database faults) and knows nothing of Ansible or Docker::

    db up            --dir DIR [--listen ADDR] [--pg-port N] [--redis-port N] [--secrets-stdin]
    db corrupt-rows  --dir DIR [--kinds a,b] [--count N]     the lab's corrupt-rows fault (exact, recorded counts)
    db corrupt-index --dir DIR                               the lab's index-corruption fault (trades_id_idx on disk)
    engines start    --dir DIR      start the engines process of DIR/engines-config.json; wait until it serves
    engines restart  --dir DIR      stop it (SIGTERM, SIGKILL when stopped or stuck) and start it again
    engines status   --dir DIR
    engines kill     --dir DIR      SIGKILL: the "crash" of a drill (the process is gone)
    engines freeze   --dir DIR      SIGSTOP: the "hang" of a drill (the process is there, answers nothing)
    venue start      --dir DIR [--listen ADDR] [--port N]    the lab exchange, with DIR/exchange-accounts.json

``db up`` generates the PostgreSQL and Redis passwords, or reads them as JSON from stdin with ``--secrets-stdin``
(``{"postgres_password": ..., "redis_password": ...}``: never on a command line), and writes ``DIR/db.json``
(0600, it holds the passwords): ``{"postgres": {...}, "redis": {...}}`` in
the lab's state-file shapes (``host`` is the loopback: the address other hosts use is theirs to know).
``engines start`` needs ``DIR/engines-config.json`` in the format the lab manager writes (admin and control
tokens, secrets file, order interval, the database host's ``postgres`` and ``redis``, and ``engines`` whose
specs may carry ``bind`` and a fixed ``port``); the process id goes to ``DIR/engines.pid``.

Every command prints one JSON object with ``changed`` (and never a password) and exits 0, or prints the
error on stderr and exits 1. ``db up``, ``engines start`` and the faults are idempotent: run again, they
report ``changed: false``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import dbfaults
from .errors import LabError, LabInputError
from .postgres import PostgresServer
from .postgres import connect as pg_connect
from .procs import pid_alive, tail, wait_for
from .redis_server import RedisServer
from .state import ENGINES_CONFIG_FILE, ENGINES_LOG, ENGINES_RUNTIME_FILE, new_secret, read_json, write_json_atomic

DB_FILE = "db.json"
PID_FILE = "engines.pid"
FAULTS_DIR = "faults"
ENGINES_MODULE = "tradeops.lab.engines"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


def _emit(data: dict[str, Any]) -> None:
    print(json.dumps(data, sort_keys=True))


# -- the database host -----------------------------------------------------------------------------------


def _db_running(info: dict[str, Any] | None) -> bool:
    if not info:
        return False
    pg, rd = info.get("postgres") or {}, info.get("redis") or {}
    return pid_alive(pg.get("pid"), "postgres") and pid_alive(rd.get("pid"), "redis-server")


def _public(info: dict[str, Any]) -> dict[str, Any]:
    """``db.json`` without the passwords."""
    return {k: {kk: vv for kk, vv in v.items() if kk != "password"} for k, v in info.items() if isinstance(v, dict)}


def db_up(
    directory: Path, listen: str, pg_port: int, redis_port: int, secrets: dict[str, str] | None = None
) -> dict[str, Any]:
    path = directory / DB_FILE
    info = read_json(path)
    if _db_running(info):
        return {"changed": False, **_public(info)}
    secrets = secrets or {}
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pg = PostgresServer(directory, listen=listen, port=pg_port).start(secrets.get("postgres_password") or new_secret())
    try:
        rd = RedisServer(directory).start(secrets.get("redis_password") or new_secret(), listen=listen, port=redis_port)
    except LabError:
        PostgresServer(directory).stop(pg)
        raise
    info = {"postgres": pg, "redis": rd}
    write_json_atomic(path, info)
    return {"changed": True, **_public(info)}


def _db_info(directory: Path) -> dict[str, Any]:
    info = read_json(directory / DB_FILE)
    if not _db_running(info):
        raise LabError(f"no database is running from {directory} (run: db up --dir {directory})")
    return info


def db_corrupt_rows(directory: Path, kinds: str | None, count: int | None) -> dict[str, Any]:
    """The lab's corrupt-rows fault, once: a second call reports the first one's record."""
    record_path = directory / FAULTS_DIR / "corrupt-rows.json"
    existing = read_json(record_path)
    if existing:
        return {"changed": False, **existing}
    info = _db_info(directory)
    plan = dbfaults.corrupt_plan(kinds, count)
    injected_at = time.time()
    conn = pg_connect(info["postgres"])
    try:
        kinds_done = dbfaults.corrupt_rows(conn, plan)
    finally:
        conn.close()
    record = {"fault": "corrupt-rows", "injected_at": injected_at,
              "total": sum(k["count"] for k in kinds_done.values()), "kinds": kinds_done}
    record_path.parent.mkdir(mode=0o700, exist_ok=True)
    write_json_atomic(record_path, record)
    return {"changed": True, **record}


def _index_file(info: dict[str, Any], index: str) -> tuple[str, int, str]:
    conn = pg_connect(info["postgres"])
    try:
        return dbfaults.locate_index(conn, index)
    finally:
        conn.close()


def db_corrupt_index(directory: Path) -> dict[str, Any]:
    """The lab's index-corruption fault: bytes of a leaf page of ``trades_id_idx`` overwritten while the
    cluster is stopped (same port, same data dir), then ``bt_index_check`` must see it. Once: while the index
    still lives in the corrupted file (a REINDEX gives it a new one), a second call changes nothing."""
    index = dbfaults.INDEX_TARGET
    path = directory / DB_FILE
    record_path = directory / FAULTS_DIR / "index-corruption.json"
    info = _db_info(directory)
    relation_file, block_size, data_directory = _index_file(info, index)
    existing = read_json(record_path)
    if existing and existing.get("relation_file") == relation_file:
        return {"changed": False, **existing}
    datadir = Path(info["postgres"]["datadir"]).resolve()
    if Path(data_directory).resolve() != datadir:
        raise LabError(f"refusing to touch {datadir}: the server says its data directory is {data_directory}")
    done: dict[str, Any] = {}

    def corrupt() -> None:
        done.update(dbfaults.corrupt_index_page(datadir, relation_file, block_size))

    def started(pg: dict[str, Any]) -> None:
        info["postgres"] = pg
        write_json_atomic(path, info)

    stopped_at = time.time()
    PostgresServer(directory).restart(info["postgres"], corrupt, started)
    conn = pg_connect(info["postgres"])
    try:
        check = dbfaults.check_index(conn, index)
    finally:
        conn.close()
    if check["status"] != "corrupt":
        raise LabError(f"index-corruption: bt_index_check does not see the corruption of {index}: {check}")
    record = {"fault": "index-corruption", "injected_at": stopped_at, "index": index,
              "table": dbfaults.INDEX_TARGET_TABLE, **done, "block_size": block_size, "amcheck": check}
    record_path.parent.mkdir(mode=0o700, exist_ok=True)
    write_json_atomic(record_path, record)
    return {"changed": True, **record}


# -- an engine host -------------------------------------------------------------------------------------


def _proc_state(pid: int | None) -> str:
    """``running``, ``stopped`` (SIGSTOP) or ``dead``, for the engines process ``pid``."""
    if not pid_alive(pid, ENGINES_MODULE):
        return "dead"
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return "running"
    return "stopped" if state in ("T", "t") else "running"


def _read_pid(directory: Path) -> int | None:
    try:
        return int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _config(directory: Path) -> dict[str, Any]:
    config = read_json(directory / ENGINES_CONFIG_FILE)
    if not config:
        raise LabInputError(f"{directory / ENGINES_CONFIG_FILE} not found: write the engines config first")
    return config


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def engines_status(directory: Path) -> dict[str, Any]:
    pid = _read_pid(directory)
    state = _proc_state(pid)
    runtime = read_json(directory / ENGINES_RUNTIME_FILE) or {}
    engines = {}
    for spec in _config(directory).get("engines", []):
        port = int(spec.get("port") or (runtime.get("engines") or {}).get(spec["name"]) or 0)
        engines[spec["name"]] = {"port": port, "listening": bool(port) and state == "running" and _listening(port)}
    return {"changed": False, "pid": pid if state != "dead" else None, "state": state, "engines": engines}


def _spawn(directory: Path) -> int:
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    (directory / ENGINES_RUNTIME_FILE).unlink(missing_ok=True)
    with open(directory / ENGINES_LOG, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", ENGINES_MODULE, "--lab-dir", str(directory)],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the command (and the `docker exec`) that started it
            close_fds=True,
        )
    (directory / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"the engines process exited ({proc.returncode}); last lines of "
                           f"{directory / ENGINES_LOG}:\n{tail(directory / ENGINES_LOG, 30)}")
        runtime = read_json(directory / ENGINES_RUNTIME_FILE)
        if runtime and runtime.get("pid") == proc.pid:
            ports = [int(p) for p in (runtime.get("engines") or {}).values()]
            if all(_listening(p) for p in ports):
                return proc.pid
        time.sleep(0.1)
    raise LabError(f"the engines process did not serve within {START_TIMEOUT:.0f}s; last lines of "
                   f"{directory / ENGINES_LOG}:\n{tail(directory / ENGINES_LOG, 30)}")


def engines_start(directory: Path) -> dict[str, Any]:
    _config(directory)
    pid = _read_pid(directory)
    state = _proc_state(pid)
    if state != "dead":
        # a stopped (hung) process is not started twice: `restart` is what repairs it
        return {**engines_status(directory), "changed": False}
    _spawn(directory)
    return {**engines_status(directory), "changed": True}


def _stop(pid: int | None) -> str:
    """Stop the engines process: SIGTERM and a short wait; SIGKILL when it is stopped (a SIGCONT would let a
    hung engine run again before it dies) or does not exit. Returns what it took."""
    state = _proc_state(pid)
    if state == "dead" or pid is None:
        return "not running"
    how = "SIGTERM"
    if state == "running":
        os.kill(pid, signal.SIGTERM)
        if wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT):
            return how
    os.kill(pid, signal.SIGKILL)
    if not wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT):
        raise LabError(f"the engines process {pid} did not die on SIGKILL")
    return "SIGKILL" if state == "stopped" else "SIGTERM, then SIGKILL"


def engines_restart(directory: Path) -> dict[str, Any]:
    _config(directory)
    before = _read_pid(directory)
    stopped = _stop(before)
    _spawn(directory)
    return {**engines_status(directory), "changed": True, "previous_pid": before, "stopped_with": stopped}


def engines_signal(directory: Path, sig: signal.Signals) -> dict[str, Any]:
    """The drill's faults: SIGKILL (crash) or SIGSTOP (hang). Idempotent: a dead process is not killed
    again, a stopped one not stopped again."""
    pid = _read_pid(directory)
    state = _proc_state(pid)
    if state == "dead" or pid is None or (sig == signal.SIGSTOP and state == "stopped"):
        return {**engines_status(directory), "changed": False}
    os.kill(pid, sig)
    if sig == signal.SIGKILL:
        wait_for(lambda: not pid_alive(pid), STOP_TIMEOUT)
    else:
        wait_for(lambda: _proc_state(pid) == "stopped", STOP_TIMEOUT)
    return {**engines_status(directory), "changed": True, "signal": sig.name, "signalled_at": time.time()}


# -- venue host -----------------------------------------------------------------------------------------

VENUE_ACCOUNTS_FILE = "exchange-accounts.json"


def venue_start(directory: Path, listen: str, port: int) -> dict[str, Any]:
    """Start the lab exchange (Kraken's API) on ``listen``:``port`` with the accounts of
    ``DIR/exchange-accounts.json`` (``{"control_token", "accounts": {name: {"keys": {label: {key, secret}},
    "balances"}}}``, 0600, written by the drill). Idempotent: a running exchange is left as it is."""
    from . import venue
    from .exchange import RUNTIME_FILE

    runtime = read_json(directory / RUNTIME_FILE) if (directory / RUNTIME_FILE).exists() else None
    if runtime and pid_alive(runtime.get("pid"), "tradeops.lab.exchange"):
        return {"changed": False, "pid": runtime["pid"], "port": runtime["port"]}
    spec = read_json(directory / VENUE_ACCOUNTS_FILE)
    if not spec:
        raise LabInputError(f"no {VENUE_ACCOUNTS_FILE} in {directory}")
    entry = venue.start(directory, spec["control_token"], spec["accounts"], time.monotonic() + START_TIMEOUT,
                        listen=listen, port=port)
    return {"changed": True, "pid": entry["pid"], "port": entry["port"]}


# -- CLI ------------------------------------------------------------------------------------------------


def _read_secrets(stream: Any) -> dict[str, str]:
    try:
        data = json.loads(stream.read() or "{}")
    except ValueError as exc:
        raise LabInputError(f"--secrets-stdin: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise LabInputError("--secrets-stdin: expected a JSON object of strings")
    unknown = sorted(set(data) - {"postgres_password", "redis_password"})
    if unknown:
        raise LabInputError(f"--secrets-stdin: unknown key(s) {', '.join(unknown)}")
    return data



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradeops.lab.node", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    db = sub.add_parser("db", help="the database host: PostgreSQL and Redis")
    db.add_argument("action", choices=["up", "corrupt-rows", "corrupt-index"])
    db.add_argument("--dir", required=True, type=Path)
    db.add_argument("--listen", default="0.0.0.0")
    db.add_argument("--pg-port", type=int, default=5432)
    db.add_argument("--redis-port", type=int, default=6379)
    db.add_argument("--secrets-stdin", action="store_true", help="up: read the passwords as JSON from stdin")
    db.add_argument("--kinds", help="corrupt-rows: the kinds, comma separated (default all)")
    db.add_argument("--count", type=int, help="corrupt-rows: rows per kind (default: the lab's counts)")
    en = sub.add_parser("engines", help="an engine host: one engines process")
    en.add_argument("action", choices=["start", "restart", "status", "kill", "freeze"])
    en.add_argument("--dir", required=True, type=Path)
    ve = sub.add_parser("venue", help="a venue host: the lab exchange")
    ve.add_argument("action", choices=["start"])
    ve.add_argument("--dir", required=True, type=Path)
    ve.add_argument("--listen", default="0.0.0.0")
    ve.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    try:
        if args.part == "db":
            if args.action == "up":
                secrets = _read_secrets(sys.stdin) if args.secrets_stdin else None
                out = db_up(directory, args.listen, args.pg_port, args.redis_port, secrets)
            elif args.action == "corrupt-rows":
                out = db_corrupt_rows(directory, args.kinds, args.count)
            else:
                out = db_corrupt_index(directory)
        elif args.part == "venue":
            out = venue_start(directory, args.listen, args.port)
        elif args.action == "start":
            out = engines_start(directory)
        elif args.action == "restart":
            out = engines_restart(directory)
        elif args.action == "status":
            out = engines_status(directory)
        else:
            out = engines_signal(directory, signal.SIGKILL if args.action == "kill" else signal.SIGSTOP)
    except LabError as exc:
        print(f"tradeops.lab.node: {exc}", file=sys.stderr)
        return 1
    _emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
