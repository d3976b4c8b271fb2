"""The lab's connection pooler: Debian's pgbouncer between the engines and PostgreSQL.

The engines' order writer connects through it (transaction pooling, SCRAM to the client and to PostgreSQL);
the lab's own management connections, the playbooks' probes and ``pg_sessions`` go to PostgreSQL directly, as a
DBA's do. It runs as the cluster's user (pgbouncer refuses root) from files in the cluster's base directory, which
that user owns: ``pgbouncer.ini`` and ``userlist.txt`` (the password; mode 0600). Its log goes to
``<lab_dir>/pgbouncer.log``, opened by us.

The short timeouts are deliberate: a client waits at most ``query_wait_timeout`` for a server connection, and
after PostgreSQL comes back pgbouncer retries its login after ``server_login_retry`` (1 s, not the default 15 s),
so a restarted database is usable through the pooler at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psycopg2

from .errors import LabError
from .postgres import _run_as_for_datadir, dsn, spawn_logged
from .procs import free_port, pid_alive, tail, terminate
from .state import LOOPBACK

START_TIMEOUT = 15.0
PGBOUNCER_LOG = "pgbouncer.log"


def find_pgbouncer() -> str:
    """``$TRADEOPS_PGBOUNCER``, else pgbouncer on PATH or in /usr/sbin."""
    for cand in (os.environ.get("TRADEOPS_PGBOUNCER"), shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise LabError("pgbouncer not found; install the pgbouncer package or set TRADEOPS_PGBOUNCER")


def pooled(pg: dict[str, Any], pooler: dict[str, Any] | None) -> dict[str, Any]:
    """The state-file ``postgres`` entry as a client of the pooler sees it (its host and port), or ``pg`` itself
    when the lab has no pooler."""
    if not pooler:
        return dict(pg)
    return {**pg, "host": pooler["host"], "port": pooler["port"]}


def answers(pg: dict[str, Any], pooler: dict[str, Any], timeout: int = 2) -> bool:
    """Whether the pooler serves a query (a connection through it and ``SELECT 1``) within ``timeout`` s."""
    try:
        conn = psycopg2.connect(dsn(pooled(pg, pooler)), connect_timeout=timeout)
    except psycopg2.Error:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        return True
    except psycopg2.Error:
        return False
    finally:
        conn.close()


class PgBouncer:
    """Starts and stops the lab's pgbouncer for the cluster described by a state-file ``postgres`` entry."""

    def __init__(self, lab_dir: Path, pg: dict[str, Any]) -> None:
        self.lab_dir = Path(lab_dir)
        self.pg = pg
        self.datadir = Path(pg["datadir"])
        self.dir = self.datadir.parent / "pgbouncer"
        self.ini = self.dir / "pgbouncer.ini"
        self.userlist = self.dir / "userlist.txt"
        self.log_path = self.lab_dir / PGBOUNCER_LOG

    def start(self, port: int | None = None) -> dict[str, Any]:
        """Start pgbouncer on a free loopback port (or on ``port``, the one it had); returns the state-file
        ``pgbouncer`` entry. LabError, with its log, if it does not serve a query within 15 s."""
        exe = find_pgbouncer()
        run_as = _run_as_for_datadir(self.datadir)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        run_as.chown(self.dir)
        last = ""
        for _attempt in range(3):
            info = {"host": LOOPBACK, "port": port or free_port(), "pid": None, "dir": str(self.dir)}
            self._write_files(info, run_as)
            proc = spawn_logged([exe, str(self.ini)], self.dir, self.log_path, run_as, "pgbouncer")
            info["pid"] = proc.pid
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                if answers(self.pg, info, timeout=2):
                    return info
                time.sleep(0.05)
            last = tail(self.log_path, 20)
            self.stop(info)
            if port or "Address already in use" not in last:
                break
        raise LabError(f"pgbouncer did not start; last lines of {self.log_path}:\n{last}")

    def _write_files(self, info: dict[str, Any], run_as: Any) -> None:
        pg = self.pg
        for value in (pg["user"], pg["password"]):
            if any(c in value for c in '"\n\\ '):
                raise LabError("the PostgreSQL user and password must not contain quotes, backslashes or spaces")
        ini = "\n".join(
            [
                "[databases]",
                f"{pg['dbname']} = host={pg['host']} port={pg['port']} dbname={pg['dbname']}",
                "",
                "[pgbouncer]",
                f"listen_addr = {LOOPBACK}",
                f"listen_port = {info['port']}",
                "unix_socket_dir =",
                f"auth_file = {self.userlist}",
                "auth_type = scram-sha-256",
                "pool_mode = transaction",
                "max_client_conn = 500",
                "default_pool_size = 20",
                # psycopg2 clients may send `options` (a statement_timeout); pgbouncer cannot pass it through
                "ignore_startup_parameters = options,extra_float_digits",
                "server_connect_timeout = 3",
                "server_login_retry = 1",
                "query_wait_timeout = 10",
                "server_reset_query = DISCARD ALL",
                "log_connections = 0",
                "log_disconnections = 0",
                "",
            ]
        )
        for path, text in ((self.ini, ini), (self.userlist, f'"{pg["user"]}" "{pg["password"]}"\n')):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            run_as.chown(path)

    def stop(self, info: dict[str, Any] | None, timeout: float = 5.0) -> None:
        """Stop pgbouncer: SIGTERM (its immediate shutdown) then SIGCONT, as systemd does, so a stopped
        (SIGSTOP) pooler gets it too; SIGKILL after ``timeout``. Idempotent, tolerant of stale pids."""
        pid = (info or {}).get("pid")
        if not pid_alive(pid, "pgbouncer"):
            return
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        terminate(pid, "pgbouncer", timeout=timeout)
