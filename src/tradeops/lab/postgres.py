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
from collections.abc import Callable
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
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    engine text NOT NULL,
    symbol text NOT NULL,
    side text NOT NULL,
    quantity numeric NOT NULL,
    price numeric NOT NULL,
    created_at timestamptz NOT NULL,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    venue text NOT NULL DEFAULT 'primary'  -- the exchange the engine traded on (seed 003: trades by exchange)
);
CREATE INDEX orders_engine_created_at_idx ON orders (engine, created_at);

CREATE TABLE accounts (
    id int PRIMARY KEY,
    name text
);

-- Modelled on seed 002. The lab simulates a system whose constraints were never enforced, so that the
-- integrity checks of the runbook (and the corrupt-rows fault) have something to find:
--   * no CHECK constraints (NULL prices, bad statuses, non-positive quantities, future timestamps);
--   * no primary key on id: a NON-unique btree index instead, so an id can appear twice (duplicate ids);
--     ids still come from a sequence, so fresh rows never collide;
--   * no foreign key from account_id to accounts (orphan trades), only an index.
-- orders (written by the engines) keeps its primary key.
CREATE SEQUENCE positions_id_seq;
CREATE TABLE positions (
    id bigint NOT NULL DEFAULT nextval('positions_id_seq'),
    account_id int,
    symbol text,
    quantity numeric,
    entry_price numeric,
    current_price numeric,
    status text,
    updated_at timestamptz
);
ALTER SEQUENCE positions_id_seq OWNED BY positions.id;
CREATE INDEX positions_id_idx ON positions (id);
CREATE INDEX positions_account_symbol_idx ON positions (account_id, symbol);

CREATE SEQUENCE trades_id_seq;
CREATE TABLE trades (
    id bigint NOT NULL DEFAULT nextval('trades_id_seq'),
    account_id int,
    symbol text,
    side text,
    quantity numeric,
    price numeric,
    status text,
    created_at timestamptz
);
ALTER SEQUENCE trades_id_seq OWNED BY trades.id;
CREATE INDEX trades_id_idx ON trades (id);
CREATE INDEX trades_account_symbol_idx ON trades (account_id, symbol);
"""

SEED_ACCOUNTS = [
    "alpha-fund", "beta-capital", "gamma-desk", "delta-arb", "epsilon-mm",
    "zeta-fund", "eta-capital", "theta-desk", "iota-arb", "kappa-mm",
    "lambda-fund", "mu-capital", "nu-desk", "xi-arb", "omicron-mm",
    "pi-fund", "rho-capital", "sigma-desk", "tau-arb", "upsilon-mm",
]  # fmt: skip
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


def spawn_logged(argv: list[str], cwd: Path, log_path: Path, run_as: _RunAs, what: str) -> subprocess.Popen[bytes]:
    """Start a server of the cluster's (postgres, pgbouncer) detached, as ``run_as``, its output appended to
    ``log_path`` - opened by us: works even if the cluster user cannot enter the lab dir."""
    logf = open(log_path, "ab")
    try:
        return subprocess.Popen(argv, cwd=cwd, env=_pg_env(), stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                **run_as.popen_kwargs())
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"cannot start {what}: {exc}") from exc
    finally:
        logf.close()


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

    def __init__(
        self, lab_dir: Path, bindir: Path | None = None, listen: str = LOOPBACK, port: int | None = None
    ) -> None:
        """``listen`` and ``port``: the lab listens on the loopback on a free port; a lab node in a container
        (``tradeops.lab.node``) listens on its network (``0.0.0.0``, password auth from anywhere) on a fixed port."""
        self.lab_dir = Path(lab_dir)
        self.bindir = bindir or find_bindir()
        self.listen = listen
        self.fixed_port = port
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
        if self.listen != LOOPBACK:
            with open(datadir / "pg_hba.conf", "a", encoding="utf-8") as fh:
                fh.write("\n# tradeops lab node: password auth from the network\n"
                         "host all all 0.0.0.0/0 scram-sha-256\n")
        socket_dir = str(base) if len(str(base)) <= SOCKET_PATH_MAX else ""
        last_log = ""
        for _attempt in range(3):
            port = self.fixed_port or free_port()
            self._write_conf(datadir, port, socket_dir)
            info["port"] = port
            started, last_log = self._launch(datadir, base, run_as, info)
            if on_progress:
                on_progress(dict(info))
            if started:
                self._create_database(info)
                return info
            if self.fixed_port or ("could not bind" not in last_log and "already in use" not in last_log):
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
                    f"listen_addresses = '{self.listen}'",
                    f"unix_socket_directories = '{socket_dir}'",
                    "fsync = off",
                    "synchronous_commit = off",
                    "full_page_writes = off",
                    "max_connections = 100",
                    "shared_buffers = 32MB",
                    "logging_collector = off",
                    "log_line_prefix = '%m [%p] %q%u@%d '",
                    "log_min_messages = warning",
                    # seed 003/004's slow-query analysis reads pg_stat_statements
                    "shared_preload_libraries = 'pg_stat_statements'",
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
        self._proc = spawn_logged([str(self.bindir / "postgres"), "-D", str(datadir)], base, self.log_path, run_as,
                                  "postgres")
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

    # -- restart -------------------------------------------------------------------------------------------

    def restart(
        self,
        info: dict[str, Any],
        while_stopped: Callable[[], None] | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Stop the running cluster (``pg_ctl stop -m fast``, as the data dir's owner), call
        ``while_stopped()``, start it again on the same port and data dir; returns the updated ``info``
        (a new ``pid``). Clients see their connections dropped, as in a real database restart.

        The cluster is started again even if ``while_stopped`` raises (which is then re-raised), and
        ``on_progress(info)`` is called with the new pid as soon as it exists, before anything is raised,
        so the caller can record it. A server that does not come up is stopped again.
        """
        datadir = Path(info["datadir"])
        if not (datadir / "PG_VERSION").is_file():
            raise LabError(f"{datadir} is not a PostgreSQL data directory")
        stop_cluster(info, self.bindir, remove_tmp=False, timeout=timeout)
        if pid_alive(info.get("pid")) or (datadir / "postmaster.pid").exists():
            raise LabError(f"PostgreSQL (pid {info.get('pid')}) did not stop; see {self.log_path}")
        new = dict(info)
        try:
            if while_stopped is not None:
                while_stopped()
        finally:
            started, last_log = self._launch(datadir, datadir.parent, _run_as_for_datadir(datadir), new)
            if on_progress is not None:
                on_progress(dict(new))
            if not started:
                stop_cluster(new, self.bindir, remove_tmp=False, timeout=timeout)
                raise LabError(f"PostgreSQL did not start again; last lines of {self.log_path}:\n{last_log}")
        return new

    def start_again(self, info: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Start a stopped cluster again on its port and data dir (what a service manager does after a crash);
        returns the updated ``info`` (a new ``pid``). LabError if it does not come up."""
        datadir = Path(info["datadir"])
        if not (datadir / "PG_VERSION").is_file():
            raise LabError(f"{datadir} is not a PostgreSQL data directory")
        pidfile = datadir / "postmaster.pid"
        try:
            running = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            running = None
        for pid in (info.get("pid"), running):
            if pid_alive(pid, str(datadir)):
                raise LabError(f"PostgreSQL (pid {pid}) is still running")
        pidfile.unlink(missing_ok=True)  # left by a crash: its postmaster is gone
        new = dict(info)
        started, last_log = self._launch(datadir, datadir.parent, _run_as_for_datadir(datadir), new)
        if not started:
            stop_cluster(new, self.bindir, remove_tmp=False, timeout=timeout)
            raise LabError(f"PostgreSQL did not start again; last lines of {self.log_path}:\n{last_log}")
        return new

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
    info: dict[str, Any], bindir: Path | None = None, remove_tmp: bool = True, timeout: float = 30.0,
    immediate: bool = False,
) -> None:
    """Stop a lab cluster from its state entry; idempotent, tolerant of stale pids and missing dirs.
    ``immediate``: ``pg_ctl stop -m immediate`` (a crash: no checkpoint, recovery at the next start)."""
    datadir = Path(info["datadir"]) if info.get("datadir") else None
    pid = info.get("pid")
    expect = str(datadir) if datadir else "postgres"
    if datadir and (datadir / "postmaster.pid").exists() and pid_alive(pid, expect):
        try:
            pg_ctl = str((bindir or find_bindir()) / "pg_ctl")
            subprocess.run(
                [pg_ctl, "stop", "-D", str(datadir), "-m", "immediate" if immediate else "fast", "-w", "-t",
                 str(int(timeout))],
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


SEED_SYMBOLS_PER_ACCOUNT = 5


def seed(cur: psycopg2.extensions.cursor) -> None:
    """A consistent data set modelled on seed 002: 20 accounts, 100 positions, about 2,700 trades.

    Every integrity check of the runbook is clean on it (tests/integration/lab checks each one):

    * no NULL prices; every trade status is one of 'open', 'closed', 'cancelled';
    * every position's quantity equals the sum of the quantities of its account's *closed* trades in
      its symbol. Closed trades are all buys (sells are still open, or were cancelled), so the plain
      sum and the signed sum (buy +, sell -) agree; entry_price is their average price;
    * every account_id exists in accounts; ids are unique (from the sequences);
    * quantities and prices are positive; every timestamp lies in the past (up to 30 days ago).
    """
    rng = random.Random(20240601)
    now = time.time()
    cur.executemany("INSERT INTO accounts (id, name) VALUES (%s, %s)", list(enumerate(SEED_ACCOUNTS, start=1)))
    trades: list[tuple[Any, ...]] = []
    positions: list[tuple[Any, ...]] = []

    def when(max_age: float, min_age: float = 120.0) -> float:
        return now - rng.uniform(min_age, max_age)

    for account_id in range(1, len(SEED_ACCOUNTS) + 1):
        for symbol in sorted(rng.sample(sorted(SEED_SYMBOLS), SEED_SYMBOLS_PER_ACCOUNT)):
            base = SEED_SYMBOLS[symbol]
            unit = 1 if base > 100 else 1000

            def price(spread: float = 0.05, base: float = base) -> float:
                return round(base * rng.uniform(1 - spread, 1 + spread), 4)

            closed = [(rng.randint(1, 5) * unit, price()) for _ in range(rng.randint(10, 20))]
            for q, p in closed:
                trades.append((account_id, symbol, "buy", q, p, "closed", when(30 * 86400, 86400)))
            # Open and cancelled trades, both sides, do not count towards the position.
            for _ in range(rng.randint(4, 10)):
                side = rng.choice(("buy", "sell"))
                trades.append((account_id, symbol, side, rng.randint(1, 3) * unit, price(0.02), "open", when(86400)))
            for _ in range(rng.randint(3, 7)):
                side = rng.choice(("buy", "sell"))
                trades.append(
                    (account_id, symbol, side, rng.randint(1, 3) * unit, price(), "cancelled", when(20 * 86400))
                )
            quantity = sum(q for q, _ in closed)
            entry = round(sum(q * p for q, p in closed) / quantity, 4)
            positions.append((account_id, symbol, quantity, entry, price(0.03), "open", when(3600, 60)))
    trades.sort(key=lambda t: t[-1])  # ids in time order, like a real system's
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO trades (account_id, symbol, side, quantity, price, status, created_at) VALUES %s",
        trades,
        template="(%s, %s, %s, %s, %s, %s, to_timestamp(%s))",
        page_size=1000,
    )
    psycopg2.extras.execute_values(
        cur,
        "INSERT INTO positions (account_id, symbol, quantity, entry_price, current_price, status, updated_at)"
        " VALUES %s",
        positions,
        template="(%s, %s, %s, %s, %s, %s, to_timestamp(%s))",
    )
    cur.execute("ANALYZE accounts, positions, trades")
