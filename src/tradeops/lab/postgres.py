"""A throwaway PostgreSQL cluster for the lab: initdb, start, schema + seed data, stop.

When running as root (initdb and postgres refuse to), the cluster runs as the ``postgres`` system user
and lives in a fresh ``tradeops-lab-pg-*`` temporary dir (every ancestor of it is traversable), which
``stop`` removes. Otherwise it lives in ``<lab_dir>/postgres`` and runs as the current user.
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from .errors import LabError
from .procs import free_port, pid_alive, tail, terminate, wait_for
from .state import LOOPBACK, POSTGRES_LOG

DBNAME = "trading"
DBUSER = "tradeops"
PG_TMP_PREFIX = "tradeops-lab-pg-"
CONNECT_TIMEOUT = 5
START_TIMEOUT = 30.0
SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; the socket file name adds ~16

SCHEMA_SQL = """
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    engine text NOT NULL,
    symbol text NOT NULL,
    side text NOT NULL,
    quantity numeric NOT NULL,
    price numeric NOT NULL,
    created_at timestamptz NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_engine_created_at_idx ON orders (engine, created_at);

CREATE TABLE accounts (
    id int PRIMARY KEY,
    name text
);

-- Modelled on seed 002. Deliberately no CHECK constraints: integrity is what the runbook's SQL checks,
-- and corruption faults must be injectable.
CREATE TABLE positions (
    id bigserial PRIMARY KEY,
    account_id int REFERENCES accounts (id),
    symbol text,
    quantity numeric,
    entry_price numeric,
    current_price numeric,
    status text,
    updated_at timestamptz
);

CREATE TABLE trades (
    id bigserial PRIMARY KEY,
    account_id int REFERENCES accounts (id),
    symbol text,
    side text,
    quantity numeric,
    price numeric,
    status text,
    created_at timestamptz
);
CREATE INDEX trades_account_symbol_idx ON trades (account_id, symbol);
"""

SEED_ACCOUNTS = ["alpha-fund", "beta-capital", "gamma-desk", "delta-arb", "epsilon-mm"]
SEED_SYMBOLS = {
    "BTC-USD": 65000.0,
    "ETH-USD": 3400.0,
    "SOL-USD": 150.0,
    "AAPL": 190.0,
    "MSFT": 420.0,
    "EUR-USD": 1.08,
}


def find_bindir() -> Path:
    """PostgreSQL server binaries: ``$TRADEOPS_PG_BINDIR``, the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates: list[Path] = []
    if os.environ.get("TRADEOPS_PG_BINDIR"):
        candidates.append(Path(os.environ["TRADEOPS_PG_BINDIR"]))

    def version(p: str) -> float:
        try:
            return float(Path(p).parent.name)
        except ValueError:
            return 0.0

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for cand in candidates:
        if all((cand / exe).is_file() for exe in ("initdb", "postgres", "pg_ctl")):
            return cand
    raise LabError(
        "PostgreSQL server binaries (initdb, postgres, pg_ctl) not found; install the postgresql package "
        "or set TRADEOPS_PG_BINDIR"
    )


@dataclass(frozen=True)
class _RunAs:
    """Who the cluster runs as; uid/gid None means the current user."""

    uid: int | None = None
    gid: int | None = None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


def _run_as_for_cluster() -> _RunAs:
    if os.geteuid() != 0:
        return _RunAs()
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise LabError(
            "running as root: PostgreSQL must run as the 'postgres' system user, which does not exist"
        ) from exc
    return _RunAs(pw.pw_uid, pw.pw_gid)


def _run_as_for_datadir(datadir: Path) -> _RunAs:
    """Run pg_ctl as the owner of an existing data dir (when we are root)."""
    if os.geteuid() != 0:
        return _RunAs()
    try:
        st = os.stat(datadir)
    except OSError:
        return _run_as_for_cluster()
    return _RunAs(st.st_uid, st.st_gid) if st.st_uid != 0 else _RunAs()


def _pg_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def dsn(info: dict[str, Any], dbname: str | None = None) -> str:
    """A libpq DSN for the cluster described by a state-file ``postgres`` entry."""
    parts = {
        "host": info["host"],
        "port": info["port"],
        "dbname": dbname or info["dbname"],
        "user": info["user"],
        "password": info["password"],
        "connect_timeout": CONNECT_TIMEOUT,
        "application_name": "tradeops-lab",
    }
    return " ".join(f"{k}={_quote(str(v))}" for k, v in parts.items())


def _quote(value: str) -> str:
    if value and all(c.isalnum() or c in "-_.:/" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def connect(info: dict[str, Any], dbname: str | None = None, **kwargs: Any) -> psycopg2.extensions.connection:
    """psycopg2 connection with connect and statement timeouts."""
    kwargs.setdefault("options", "-c statement_timeout=30000")
    try:
        return psycopg2.connect(dsn(info, dbname), **kwargs)
    except psycopg2.Error as exc:
        raise LabError(f"cannot connect to PostgreSQL at {info['host']}:{info['port']}: {exc}".strip()) from exc


class PostgresServer:
    """Creates, starts and stops the lab's PostgreSQL cluster."""

    def __init__(self, lab_dir: Path, bindir: Path | None = None) -> None:
        self.lab_dir = Path(lab_dir)
        self.bindir = bindir or find_bindir()
        self.log_path = self.lab_dir / POSTGRES_LOG
        self._proc: subprocess.Popen[bytes] | None = None

    # -- start ---------------------------------------------------------------------------------------------

    def start(self, password: str, on_progress: Any = None) -> dict[str, Any]:
        """initdb + start + create the ``trading`` database, schema and seed data.

        Returns the state-file ``postgres`` entry. ``on_progress(info)`` is called as soon as there is
        something to clean up (the data dir, then the running server), so a failed ``up`` can tear down.
        """
        run_as = _run_as_for_cluster()
        if run_as.uid is not None:
            base = Path(tempfile.mkdtemp(prefix=PG_TMP_PREFIX))
        else:
            base = self.lab_dir / "postgres"
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_as.chown(base)
        os.chmod(base, 0o700)
        datadir = base / "data"
        info: dict[str, Any] = {
            "host": LOOPBACK,
            "port": 0,
            "dbname": DBNAME,
            "user": DBUSER,
            "password": password,
            "datadir": str(datadir),
            "pid": None,
        }
        if on_progress:
            on_progress(dict(info))
        self._initdb(datadir, base, password, run_as)
        socket_dir = str(base) if len(str(base)) <= SOCKET_PATH_MAX else ""
        last_log = ""
        for _attempt in range(3):
            port = free_port()
            self._write_conf(datadir, port, socket_dir)
            info["port"] = port
            started, last_log = self._launch(datadir, base, run_as, info)
            if on_progress:
                on_progress(dict(info))
            if started:
                self._create_database(info)
                return info
            if "could not bind" not in last_log and "already in use" not in last_log:
                break
        raise LabError(f"PostgreSQL did not start; last lines of {self.log_path}:\n{last_log}")

    def _initdb(self, datadir: Path, base: Path, password: str, run_as: _RunAs) -> None:
        pwfile = base / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        run_as.chown(pwfile)
        cmd = [
            str(self.bindir / "initdb"),
            "-D", str(datadir),
            "-U", DBUSER,
            "-A", "scram-sha-256",
            f"--pwfile={pwfile}",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]  # fmt: skip
        try:
            res = subprocess.run(
                cmd,
                cwd=base,
                env=_pg_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                **run_as.popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabError(f"initdb failed to run: {exc}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode("utf-8", "replace")
            raise LabError(f"initdb failed (exit {res.returncode}):\n{out[-2000:]}")
        with open(datadir / "postgresql.conf", "a", encoding="utf-8") as fh:
            fh.write(
                "\n# tradeops lab settings (port, sockets, durability off)\ninclude_if_exists = 'tradeops-lab.conf'\n"
            )

    def _write_conf(self, datadir: Path, port: int, socket_dir: str) -> None:
        conf = datadir / "tradeops-lab.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port = {port}",
                    f"listen_addresses = '{LOOPBACK}'",
                    f"unix_socket_directories = '{socket_dir}'",
                    "fsync = off",
                    "synchronous_commit = off",
                    "full_page_writes = off",
                    "max_connections = 100",
                    "shared_buffers = 32MB",
                    "logging_collector = off",
                    "log_line_prefix = '%m [%p] %q%u@%d '",
                    "log_min_messages = warning",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        st = os.stat(datadir)
        if os.geteuid() == 0:
            os.chown(conf, st.st_uid, st.st_gid)

    def _launch(self, datadir: Path, base: Path, run_as: _RunAs, info: dict[str, Any]) -> tuple[bool, str]:
        """Start the postmaster detached, logging to the lab dir; wait until it accepts connections."""
        logf = open(self.log_path, "ab")  # opened by us: works even if the cluster user cannot enter the lab dir
        try:
            self._proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(datadir)],
                cwd=base,
                env=_pg_env(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **run_as.popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise LabError(f"cannot start postgres: {exc}") from exc
        finally:
            logf.close()
        info["pid"] = self._proc.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False, tail(self.log_path, 20)
            try:
                conn = psycopg2.connect(dsn(info, "postgres"), connect_timeout=2)
            except psycopg2.OperationalError:
                time.sleep(0.1)
                continue
            conn.close()
            return True, ""
        return False, tail(self.log_path, 20) + f"\n(no connection after {START_TIMEOUT:.0f}s)"

    def _create_database(self, info: dict[str, Any]) -> None:
        conn = connect(info, "postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DBNAME} OWNER {DBUSER}")
        except psycopg2.Error as exc:
            raise LabError(f"cannot create database {DBNAME}: {exc}") from exc
        finally:
            conn.close()
        conn = connect(info)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(SCHEMA_SQL)
                seed(cur)
        except psycopg2.Error as exc:
            raise LabError(f"cannot create the lab schema: {exc}") from exc
        finally:
            conn.close()

    # -- stop ----------------------------------------------------------------------------------------------

    def stop(self, info: dict[str, Any] | None, remove_tmp: bool = True, timeout: float = 30.0) -> None:
        """Stop the cluster described by ``info`` (``pg_ctl stop -m fast``, signals as a fallback)."""
        if not info:
            return
        stop_cluster(info, self.bindir, remove_tmp=remove_tmp, timeout=timeout)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None


def stop_cluster(
    info: dict[str, Any], bindir: Path | None = None, remove_tmp: bool = True, timeout: float = 30.0
) -> None:
    """Stop a lab cluster from its state entry; idempotent, tolerant of stale pids and missing dirs."""
    datadir = Path(info["datadir"]) if info.get("datadir") else None
    pid = info.get("pid")
    expect = str(datadir) if datadir else "postgres"
    if datadir and (datadir / "postmaster.pid").exists() and pid_alive(pid, expect):
        try:
            pg_ctl = str((bindir or find_bindir()) / "pg_ctl")
            subprocess.run(
                [pg_ctl, "stop", "-D", str(datadir), "-m", "fast", "-w", "-t", str(int(timeout))],
                cwd="/",
                env=_pg_env(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout + 10,
                **_run_as_for_datadir(datadir).popen_kwargs(),
            )
        except (OSError, subprocess.SubprocessError, LabError):
            pass
    if pid_alive(pid, expect):
        # SIGQUIT is postgres' "immediate shutdown"; terminate() escalates to SIGKILL.
        terminate(pid, expect, timeout=10.0, sig=signal.SIGQUIT)
    if pid:
        wait_for(lambda: not pid_alive(pid), 5.0)
    if remove_tmp and datadir is not None:
        base = datadir.parent
        if base.name.startswith(PG_TMP_PREFIX) and base.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(base, ignore_errors=True)


def seed(cur: psycopg2.extensions.cursor) -> None:
    """A small, consistent data set modelled on seed 002.

    Invariants (what the runbook's integrity SQL checks): no NULL prices; trade statuses are in
    ('open', 'closed', 'cancelled'); for every position, quantity = the signed sum (buy +, sell -) of
    that account's *closed* trades in that symbol; entry_price is the average price of those closed buys;
    status is 'open' when quantity > 0, else 'closed'.
    """
    rng = random.Random(20240601)
    now = time.time()
    cur.executemany("INSERT INTO accounts (id, name) VALUES (%s, %s)", list(enumerate(SEED_ACCOUNTS, start=1)))
    trades: list[tuple[Any, ...]] = []
    positions: list[tuple[Any, ...]] = []
    for account_id in range(1, len(SEED_ACCOUNTS) + 1):
        for symbol in rng.sample(sorted(SEED_SYMBOLS), 4):
            base = SEED_SYMBOLS[symbol]
            qty_unit = 1 if base > 100 else 1000
            closed_buys = [(rng.randint(1, 5) * qty_unit, round(base * rng.uniform(0.95, 1.05), 4)) for _ in range(3)]
            bought = sum(q for q, _ in closed_buys)
            sold = rng.randint(0, bought // qty_unit - 1) * qty_unit
            t0 = now - 86400 * 7
            for i, (q, p) in enumerate(closed_buys):
                trades.append((account_id, symbol, "buy", q, p, "closed", t0 + i * 3600))
            if sold:
                trades.append(
                    (
                        account_id,
                        symbol,
                        "sell",
                        sold,
                        round(base * rng.uniform(0.95, 1.05), 4),
                        "closed",
                        t0 + 4 * 3600,
                    )
                )
            # Open and cancelled trades do not count towards the position.
            trades.append((account_id, symbol, "buy", qty_unit, round(base * 0.98, 4), "open", now - 600))
            if rng.random() < 0.5:
                trades.append((account_id, symbol, "sell", qty_unit, round(base * 1.02, 4), "cancelled", now - 1200))
            quantity = bought - sold
            entry = round(sum(q * p for q, p in closed_buys) / bought, 4)
            current = round(base * rng.uniform(0.97, 1.03), 4)
            positions.append(
                (account_id, symbol, quantity, entry, current, "open" if quantity > 0 else "closed", now - 60)
            )
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO trades (account_id, symbol, side, quantity, price, status, created_at) VALUES %s",
        trades,
        template="(%s, %s, %s, %s, %s, %s, to_timestamp(%s))",
    )
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO positions (account_id, symbol, quantity, entry_price, current_price, status, updated_at)"
        " VALUES %s",
        positions,
        template="(%s, %s, %s, %s, %s, %s, to_timestamp(%s))",
    )
