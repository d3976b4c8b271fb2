"""The ``Lab``: brings the simulated trading stack up and down and gives access to its parts."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import dbfaults, pgbouncer, postgres, redis_server, venue
from .engines import VENUE_CREDENTIAL_FILE, VENUE_CREDENTIAL_VAR
from .errors import LabError, LabInputError
from .exchange import ACCOUNT_FAULTS as EXCHANGE_ACCOUNT_FAULTS
from .exchange import FAULT_KEY_EXPIRED, FAULT_WS_DOWN
from .exchange import FAULTS as EXCHANGE_FAULTS
from .pgbouncer import PgBouncer
from .postgres import PostgresServer, stop_cluster
from .procs import http_request, pid_alive, tail, terminate
from .redis_server import RedisServer
from .state import (
    ALL,
    BALLAST_DIR,
    BLOAT_TABLE,
    DB_FAULTS,
    ENGINES_CONFIG_FILE,
    ENGINES_LOG,
    ENGINES_RUNTIME_FILE,
    FAULT_CORRUPT_ROWS,
    FAULT_INDEX_CORRUPTION,
    FAULT_LEAKED_SECRET,
    FAULT_LONG_QUERY,
    FAULT_PG_DOWN,
    FAULT_POOLER_STUCK,
    FAULT_REDIS_OOM,
    FAULT_TABLE_BLOAT,
    FAULTS_DIR,
    LOCK_FILE,
    MARKER_FILE,
    ORCHESTRATE_API,
    REDIS_CACHE_PREFIX,
    SECRET_CURRENT,
    SECRETS_FILE,
    SELF_HALT_REASONS,
    SERVICE_FAULTS,
    SERVICES,
    SESSION_FAULTS,
    STARTING_FILE,
    STATE_FILE,
    STATE_VERSION,
    build_engine_specs,
    default_lab_dir,
    new_secret,
    read_json,
    read_secrets_env,
    restart_argv,
    validate_fault,
    write_json_atomic,
    write_secrets_env,
)
from .streams import STREAM_FAULTS

log = logging.getLogger("tradeops.lab")

UP_TIMEOUT = 60.0
CONTROL_TIMEOUT = 10.0
RESTART_TIMEOUT = 30.0  # restarting many engines at once
ENGINES_STOP_TIMEOUT = 15.0
DB_FAULT_TIMEOUT = 30.0  # a session fault's control call: start or end the session, wait for pg_stat_activity
RECONNECT_TIMEOUT = 15.0  # after index-corruption restarted PostgreSQL: until the order writer commits again
BACKUP_EXCHANGE_DIR = "exchange-backup"
REDIS_OOM_HEADROOM = 4 * 1024 * 1024  # redis-oom: maxmemory this far above what Redis uses when injected
SECRETS_RELOAD_TIMEOUT = 5.0  # after SIGHUP: until the engines process has re-read the secrets file
_OWN_FILES = (STATE_FILE, STARTING_FILE, ENGINES_CONFIG_FILE, ENGINES_RUNTIME_FILE, SECRETS_FILE)


class VenueAccountInfo(dict):
    """An account at the lab exchange as venue_guard takes it (the dict), and its trading key (``trader``),
    which is not an option of the module and so is not in the dict."""

    trader: tuple[str, str] | None = None


def _control_token(st: Mapping[str, Any]) -> str:
    """The control API's token (state files from before ``control_token`` use the admin token)."""
    return str(st.get("control_token") or st["admin_token"])


def _control_call(
    control: Mapping[str, Any],
    token: str,
    method: str,
    path: str,
    body: Any = None,
    timeout: float = CONTROL_TIMEOUT,
) -> Any:
    host, port = control["host"], control["port"]
    try:
        res = http_request(host, port, method, path, body=body, headers={"X-Lab-Token": token}, timeout=timeout)
    except OSError as exc:
        raise LabError(f"the engines control API at {host}:{port} is unreachable: {exc}") from exc
    if res.status != 200:
        try:
            message = res.json().get("error", res.text)
        except (LabError, AttributeError):
            message = res.text
        cls = LabInputError if res.status == 400 else LabError
        raise cls(f"control API {method} {path} answered {res.status}: {message}")
    return res.json()


class Lab:
    """One lab: PostgreSQL, Redis and an engines process, all described by ``<lab_dir>/state.json``.

    ``Lab(lab_dir)`` does nothing by itself; ``up()`` starts the lab and ``down()`` stops it. Every other
    method needs a running lab (``state.json`` present) and raises ``LabError`` otherwise.
    """

    def __init__(self, lab_dir: str | os.PathLike[str] | None = None) -> None:
        self.lab_dir = Path(os.path.abspath(lab_dir)) if lab_dir else default_lab_dir()

    def __repr__(self) -> str:
        return f"Lab({str(self.lab_dir)!r})"

    # -- state ---------------------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.lab_dir / STATE_FILE

    @property
    def state(self) -> dict[str, Any]:
        """The state file, freshly loaded. Raises LabError if no lab is up in this dir."""
        st = read_json(self.state_path)
        if st is None:
            raise LabError(f"no lab is running in {self.lab_dir} (no {STATE_FILE}); start one with `tradeops lab up`")
        if st.get("version") != STATE_VERSION:
            raise LabError(f"{self.state_path} has unsupported version {st.get('version')!r}")
        return st

    @property
    def secrets_path(self) -> Path:
        """``<lab_dir>/secrets.env`` (mode 0600): ``ADMIN_TOKEN=<current>`` and, during a cutover,
        ``ADMIN_TOKEN_PREVIOUS=<old>`` (and ``ADMIN_TOKEN_PENDING=<new>`` while a rotation stages it).
        The engines accept exactly these admin tokens and re-read the file
        on change (within ~0.5 s) and on ``reload_secrets()`` (SIGHUP). After a rotation it, not
        ``state.json``'s ``admin_token``, holds the current token."""
        return self.lab_dir / SECRETS_FILE

    def admin_token(self) -> str:
        """The current admin token: the secrets file's ADMIN_TOKEN, else state.json's ``admin_token``."""
        values = read_secrets_env(self.secrets_path) or {}
        return values.get(SECRET_CURRENT) or str(self.state["admin_token"])

    def reload_secrets(self, timeout: float = SECRETS_RELOAD_TIMEOUT) -> dict[str, Any]:
        """Send SIGHUP to the engines process and wait until it has re-read the secrets file; returns
        what it accepts now (fingerprints only). LabError if the process is gone or the file is unusable."""
        st = self.state
        pid = st.get("engines_pid")
        before = self.control("GET", "/lab/secrets")
        if not pid_alive(pid, f"tradeops.lab.engines --lab-dir {self.lab_dir}"):
            raise LabError(f"the engines process {pid} is not running")
        try:
            os.kill(int(pid), signal.SIGHUP)
        except OSError as exc:
            raise LabError(f"cannot signal the engines process {pid}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            now = self.control("GET", "/lab/secrets")
            if now["reloads"] > before["reloads"]:
                return dict(now)
            if now.get("error") and now["error"] != before.get("error"):
                raise LabError(f"the engines did not reload the secrets file: {now['error']}")
            if time.monotonic() > deadline:
                detail = f": {now['error']}" if now.get("error") else ""
                raise LabError(f"the engines did not reload the secrets file within {timeout:.0f}s{detail}")
            time.sleep(0.02)

    def secrets(self) -> dict[str, Any]:
        """What the engines accept now: ``{"file", "accepted": {KEY: fingerprint}, "loaded_at", "reloads",
        "error"}`` (fingerprints, never values)."""
        return dict(self.control("GET", "/lab/secrets"))

    def firewall(
        self,
        engines: str | Sequence[str],
        enabled: bool,
        allow: str | Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Enable or disable the lab firewall of ``engines`` (names, or ``"*"``); ``allow`` replaces their
        allow-list (``None``: keep it). Returns ``[{"name", "firewall": {"enabled", "allow", "blocked"}}]``.

        Simulation: every caller is on 127.0.0.1, so the source of a request is its ``X-Lab-Source`` header
        (``public`` when absent). An enabled firewall answers 403 (and closes the connection) to a source
        outside the allow-list; ``management`` is always allowed and the control API is never filtered.
        The settings persist across engine restarts (``<lab_dir>/firewall.json``).
        """
        if not isinstance(enabled, bool):
            raise LabInputError(f"enabled must be a boolean, got {enabled!r}")
        body: dict[str, Any] = {"engines": self._engine_names(engines), "enabled": enabled}
        if allow is not None:
            body["allow"] = [allow] if isinstance(allow, str) else list(allow)
        return list(self.control("POST", "/lab/firewall", body)["engines"])

    def leaked(self) -> dict[str, Any] | None:
        """The leaked-secret client's live record (None if not injected): counts of 200 / 401 / 403 / other,
        ``first_unauthorized_at``, ``last_success_at``, per engine, and the last results under ``recent``."""
        res = self.control("GET", "/lab/leaked")["leaked"]
        return dict(res) if res is not None else None

    def is_up(self) -> bool:
        """Whether a state file exists (the lab was brought up and not taken down)."""
        return self.state_path.exists()

    # -- up ------------------------------------------------------------------------------------------------

    def up(
        self,
        engines: int = 5,
        mix: str | Sequence[str] | None = None,
        faults: Mapping[str, str | Iterable[str]] | None = None,
        order_interval: float = 0.2,
        wait: bool = True,
        timeout: float = UP_TIMEOUT,
        exchange: bool = True,
        monitoring: bool = False,
        monitoring_for_max: str | None = "3s",  # monitoring.LAB_FOR_MAX
    ) -> dict[str, Any]:
        """Start PostgreSQL, Redis and ``engines`` engines; return the state (also written to state.json).

        ``mix`` overrides the cycle of primary halt methods (``"redis,file"``); ``faults`` maps engine
        names (or ``"*"``) to faults active from the start. ``exchange`` (the default) starts the lab exchange
        (``tradeops.lab.exchange``, Kraken's REST API) with one account per engine, on which the engines keep
        a few resting orders while they trade. With ``wait`` (the default) returns once every
        engine listens and every engine not crashed has had an order committed; without it, once every
        engine's port is bound. ``monitoring`` also starts Prometheus, Alertmanager and the exporters
        (``tradeops.lab.monitoring``), the alert rules' ``for:`` cut to ``monitoring_for_max`` (None: as shipped).
        Anything started is torn down again if ``up`` fails.
        """
        if isinstance(order_interval, bool) or not isinstance(order_interval, int | float):
            raise LabInputError(f"order_interval must be a number, got {order_interval!r}")
        if not 0.01 <= float(order_interval) <= 60:
            raise LabInputError(f"order_interval must be between 0.01 and 60 seconds, got {order_interval}")
        specs = build_engine_specs(self.lab_dir, engines, mix, faults)
        self._check_dir_usable()
        with self._locked():
            self._refuse_if_present()
            self._wipe()
            (self.lab_dir / MARKER_FILE).write_text(
                "This directory is a tradeops lab; `tradeops lab down` deletes it.\n"
            )
            monitor = {"for_max": monitoring_for_max} if monitoring else None
            return self._up(specs, float(order_interval), wait, timeout, bool(exchange), monitor)

    def _up(
        self, specs: list[dict[str, Any]], order_interval: float, wait: bool, timeout: float, exchange: bool = True,
        monitor: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        t0 = time.monotonic()
        deadline = t0 + timeout
        st: dict[str, Any] = {
            "version": STATE_VERSION,
            "lab_dir": str(self.lab_dir),
            "started_at": time.time(),
            "admin_token": new_secret(),
            "control_token": new_secret(),
            "secrets_file": str(self.secrets_path),
            "control": None,
            "engines_pid": None,
            "postgres": None,
            "pgbouncer": None,
            "redis": None,
            "exchange": None,
            "exchange_backup": None,
            "monitoring": None,
            "engines": specs,
            "restart_argv": restart_argv(self.lab_dir),
        }
        starting = self.lab_dir / STARTING_FILE

        def save() -> None:
            write_json_atomic(starting, st)

        def on_pg(info: dict[str, Any]) -> None:
            st["postgres"] = info
            save()

        pg = PostgresServer(self.lab_dir)
        try:
            save()
            st["postgres"] = pg.start(new_secret(), on_progress=on_pg)
            save()
            log.info("postgres up on port %s (%.1fs)", st["postgres"]["port"], time.monotonic() - t0)
            st["pgbouncer"] = PgBouncer(self.lab_dir, st["postgres"]).start()
            save()
            log.info("pgbouncer up on port %s (%.1fs)", st["pgbouncer"]["port"], time.monotonic() - t0)
            st["redis"] = RedisServer(self.lab_dir).start(new_secret())
            save()
            log.info("redis up on port %s (%.1fs)", st["redis"]["port"], time.monotonic() - t0)
            if exchange:
                st["exchange"] = self._start_exchange(st, specs, deadline)
                save()
                log.info("exchange up on port %s (%.1fs)", st["exchange"]["port"], time.monotonic() - t0)
                st["exchange_backup"] = self._start_exchange(st, specs, deadline, backup=True)
                save()
                log.info("backup exchange up on port %s (%.1fs)", st["exchange_backup"]["port"],
                         time.monotonic() - t0)
            for spec in specs:
                Path(spec["dir"]).mkdir(parents=True, exist_ok=True)
                account = ((st["exchange"] or {}).get("accounts") or {}).get(spec["name"])
                if account and account.get("engine_key"):  # the engine's key as its deployment holds it
                    key = account["engine_key"]
                    write_secrets_env(Path(spec["dir"]) / VENUE_CREDENTIAL_FILE,
                                      {VENUE_CREDENTIAL_VAR: f"{key['key']}:{key['secret']}"})
            write_secrets_env(self.secrets_path, {SECRET_CURRENT: st["admin_token"]})
            st["order_interval"] = order_interval  # the inventory derives halt_trading_quiesce_seconds from it
            write_json_atomic(
                self.lab_dir / ENGINES_CONFIG_FILE,
                {
                    "admin_token": st["admin_token"],
                    "control_token": st["control_token"],
                    "secrets_file": st["secrets_file"],
                    "order_interval": order_interval,
                    "postgres": st["postgres"],
                    "pgbouncer": st["pgbouncer"],
                    "redis": st["redis"],
                    "exchange": st["exchange"],
                    "exchange_backup": st["exchange_backup"],
                    "engines": specs,
                },
            )
            proc = self._spawn_engines()
            st["engines_pid"] = proc.pid
            save()
            runtime = self._wait_runtime(proc, deadline)
            st["control"] = runtime["control"]
            for spec in specs:
                spec["port"] = int(runtime["engines"][spec["name"]])
            save()
            if monitor is not None:
                from .monitoring import Monitoring, default_rules_files  # not in a trading-host image: no yaml

                st["monitoring"] = Monitoring(self.lab_dir).start(
                    st, default_rules_files(), for_max=monitor.get("for_max"),
                    timeout=max(1.0, deadline - time.monotonic()))
                save()
                log.info("prometheus on port %s, alertmanager on port %s (%.1fs)",
                         st["monitoring"]["prometheus"]["port"], st["monitoring"]["alertmanager"]["port"],
                         time.monotonic() - t0)
            if wait:
                self._wait_ready(proc, st, deadline)
            write_json_atomic(self.state_path, st)
            starting.unlink(missing_ok=True)
            log.info("lab up: %d engines in %.1fs", len(specs), time.monotonic() - t0)
            return st
        except BaseException as exc:
            self._teardown(st)
            if isinstance(exc, LabError) or not isinstance(exc, Exception):
                raise
            raise LabError(f"lab up failed: {exc!r}") from exc

    @property
    def backup_exchange_dir(self) -> Path:
        """The backup exchange's own directory (its config, runtime and log files)."""
        return self.lab_dir / BACKUP_EXCHANGE_DIR

    def _start_exchange(self, st: Mapping[str, Any], specs: list[dict[str, Any]], deadline: float,
                        backup: bool = False) -> dict[str, Any]:
        """The lab exchange, or with ``backup`` a second one (seed 003's failover venue): another process in its
        own directory, with accounts of its own (other keys, the same starting balances)."""
        conn = postgres.connect(st["postgres"])
        try:
            with conn.cursor() as cur:
                accounts = venue.plan_accounts([s["name"] for s in specs], cur, len(postgres.SEED_ACCOUNTS))
        finally:
            conn.close()
        directory = self.lab_dir
        if backup:
            directory = self.backup_exchange_dir
            directory.mkdir(mode=0o700, exist_ok=True)
        return venue.start(directory, st["control_token"], accounts, deadline)

    def _spawn_engines(self) -> subprocess.Popen[bytes]:
        src_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.lab_dir / ENGINES_LOG, "ab") as logf:
            try:
                return subprocess.Popen(
                    [sys.executable, "-m", "tradeops.lab.engines", "--lab-dir", str(self.lab_dir)],
                    cwd=self.lab_dir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise LabError(f"cannot start the engines process: {exc}") from exc

    def _engines_failed(self, what: str) -> LabError:
        log_path = self.lab_dir / ENGINES_LOG
        return LabError(f"{what}; last lines of {log_path}:\n{tail(log_path, 30)}")

    def _wait_runtime(self, proc: subprocess.Popen[bytes], deadline: float) -> dict[str, Any]:
        path = self.lab_dir / ENGINES_RUNTIME_FILE
        while True:
            rc = proc.poll()
            if rc is not None:
                raise self._engines_failed(f"the engines process exited with status {rc} while starting")
            runtime = read_json(path)
            if runtime is not None and runtime.get("pid") == proc.pid:
                return runtime
            if time.monotonic() > deadline:
                raise self._engines_failed("the engines process did not bind its ports in time")
            time.sleep(0.05)

    def _wait_ready(self, proc: subprocess.Popen[bytes], st: dict[str, Any], deadline: float) -> None:
        pending: list[str] = []
        while True:
            rc = proc.poll()
            if rc is not None:
                raise self._engines_failed(f"the engines process exited with status {rc} while starting")
            try:
                snap = _control_call(st["control"], _control_token(st), "GET", "/lab/engines", timeout=5.0)["engines"]
            except LabError:
                snap = None
            if snap is not None:
                pending = [
                    e["name"]
                    for e in snap
                    if "crash" not in e["faults"] and not (e["listening"] and e["orders_written"] >= 1)
                ]
                if not pending:
                    return
            if time.monotonic() > deadline:
                detail = f"{len(pending)} engine(s) not ready: {', '.join(pending[:10])}" if pending else "no answer"
                raise self._engines_failed(f"the lab did not become ready in time ({detail})")
            time.sleep(0.1)

    def _check_dir_usable(self) -> None:
        d = self.lab_dir
        if d.exists() and not d.is_dir():
            raise LabInputError(f"{d} exists and is not a directory")
        if d.is_dir() and not (d / MARKER_FILE).exists():
            extra = [p.name for p in d.iterdir() if p.name != LOCK_FILE]
            if extra:
                raise LabInputError(f"{d} is not empty and is not a lab dir (no {MARKER_FILE}); refusing to use it")

    def _refuse_if_present(self) -> None:
        down = f"run `tradeops lab down --dir {self.lab_dir}`"
        if self.state_path.exists():
            try:
                st = read_json(self.state_path) or {}
            except LabError:
                st = {}
            if pid_alive(st.get("engines_pid"), "tradeops.lab.engines"):
                raise LabError(f"a lab is already running in {self.lab_dir}; {down} first")
            raise LabError(f"a stale lab (its processes are gone) is recorded in {self.lab_dir}; {down} to clean up")
        if (self.lab_dir / STARTING_FILE).exists():
            raise LabError(f"a lab is being started in {self.lab_dir}, or an earlier `up` was interrupted; {down}")

    def _wipe(self) -> None:
        """Clear a lab dir that holds no running lab (e.g. kept by `down --keep`)."""
        for child in self.lab_dir.iterdir():
            if child.name in (MARKER_FILE, LOCK_FILE):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lab_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lab_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LabError(f"another `tradeops lab` command is working on {self.lab_dir}") from exc
            yield
        finally:
            os.close(fd)

    # -- down ----------------------------------------------------------------------------------------------

    def down(self, keep: bool = False) -> None:
        """Stop everything and delete the lab dir (``keep``: keep it, minus state and secrets).

        Idempotent: a missing or already stopped lab is fine, and stale pids are skipped (each pid is
        checked against the command line it should have before it is signalled).
        """
        if not self.lab_dir.is_dir():
            return
        with self._locked():
            st: dict[str, Any] | None = None
            for name in (STATE_FILE, STARTING_FILE):
                try:
                    st = read_json(self.lab_dir / name)
                except LabError:
                    st = None
                if st:
                    break
            self._teardown(st or {})
            if not keep and (self.lab_dir / MARKER_FILE).exists():
                shutil.rmtree(self.lab_dir, ignore_errors=True)

    def _teardown(self, st: Mapping[str, Any]) -> None:
        """Stop engines, redis and postgres as far as ``st`` knows them; remove state and secret files."""
        if st.get("monitoring"):  # first: no alert about what is being stopped
            from .monitoring import Monitoring

            Monitoring(self.lab_dir).stop(st["monitoring"])
        pids = [st.get("engines_pid")]
        try:
            runtime = read_json(self.lab_dir / ENGINES_RUNTIME_FILE)
        except LabError:
            runtime = None
        if runtime:
            pids.append(runtime.get("pid"))
        expect = f"tradeops.lab.engines --lab-dir {self.lab_dir}"
        for pid in dict.fromkeys(p for p in pids if p):
            if not terminate(pid, expect, timeout=ENGINES_STOP_TIMEOUT):
                log.warning("engines process %s did not stop", pid)
        venue.stop(self.lab_dir, st.get("exchange"))
        if st.get("exchange_backup"):
            venue.stop(self.backup_exchange_dir, st["exchange_backup"])
        if st.get("redis"):
            RedisServer(self.lab_dir).stop(st["redis"])
        if st.get("pgbouncer") and st.get("postgres"):
            PgBouncer(self.lab_dir, st["postgres"]).stop(st["pgbouncer"])
        if st.get("postgres"):
            stop_cluster(st["postgres"])
        for name in _OWN_FILES:
            (self.lab_dir / name).unlink(missing_ok=True)
        for spec in st.get("engines") or []:  # each engine's exchange key
            if spec.get("dir"):
                (Path(spec["dir"]) / VENUE_CREDENTIAL_FILE).unlink(missing_ok=True)
        ballast = self.lab_dir / BALLAST_DIR  # the disk-pressure fault's filler: never worth keeping
        if ballast.is_dir() and not ballast.is_symlink():
            shutil.rmtree(ballast, ignore_errors=True)
        (self.lab_dir / "redis" / "redis.conf").unlink(missing_ok=True)  # holds the password

    # -- runtime -------------------------------------------------------------------------------------------

    def control(self, method: str, path: str, body: Any = None, timeout: float = CONTROL_TIMEOUT) -> Any:
        """Call the engines process' control API (``X-Lab-Token`` added); returns the decoded JSON."""
        st = self.state
        return _control_call(st["control"], _control_token(st), method, path, body, timeout)

    def engines(self) -> list[dict[str, Any]]:
        """Live per-engine state from the control API: name, port, methods, faults, trading_active,
        halted, halt_source, halted_at, orders_written, restarts, started_at (and a few more)."""
        return list(self.control("GET", "/lab/engines")["engines"])

    def engine(self, name: str) -> dict[str, Any]:
        """An engine's state-file entry, plus ``url`` (``http://127.0.0.1:PORT``)."""
        for spec in self.state["engines"]:
            if spec["name"] == name:
                return {**spec, "url": f"http://{spec['host']}:{spec['port']}"}
        raise LabInputError(f"no engine named {name!r} in {self.lab_dir}")

    def inject(
        self,
        fault: str,
        engines: str | Sequence[str] | None = None,
        clear: bool = False,
        *,
        kinds: str | Sequence[str] | None = None,
        count: int | Mapping[str, int] | None = None,
        seconds: float | None = None,
    ) -> Any:
        """Inject (or with ``clear``, clear) ``fault``.

        **Engine faults** (``FAULTS``) apply to ``engines`` (names, or ``"*"`` for all); ``fault="*"`` with
        ``clear=True`` clears every engine fault. Returns ``[{"name", "faults"}]`` afterwards.

        ``disk-pressure`` writes a 64 MiB ballast file to ``<lab_dir>/ballast/`` (removed once no engine has
        the fault any more) and makes the affected engines NO-GO (``components.disk: "error"``);
        ``unrecoverable`` makes them NO-GO (``components.engine: "error"``). Neither is fixed by a restart.
        Clearing ``crash`` restarts the engine (see ``restart``).

        **Database faults** (``DB_FAULTS``) are lab-wide: they take no ``engines`` (LabInputError if any
        are given). Each returns a dict describing what it did, also written to
        ``<lab_dir>/faults/<fault>.json`` (removed when the fault is cleared):

        * ``corrupt-rows``: bad rows of each kind in ``dbfaults.CORRUPT_KINDS`` (``kinds``, default all;
          ``count``: one number or ``{kind: n}``, default ``dbfaults.DEFAULT_CORRUPT_COUNTS``), no row hit
          by two kinds: ``{"kinds": {kind: {"count", "ids": {table: [ids]}, "what"}}, "total", ...}``.
          It cannot be cleared (repair is the playbook's job); injecting it again adds more rows, and the
          record keeps the earlier injections under ``earlier``.
        * ``index-corruption``: stops PostgreSQL, overwrites the key of a leaf item of ``trades_id_idx``
          (block 1) in its file, starts PostgreSQL again (``state.json`` gets the new pid; the engines
          reconnect) and checks that amcheck's ``bt_index_check`` now fails. Clear: ``REINDEX INDEX``.
          The restart ends the long-query and blocking-lock sessions, if any.
        * ``long-query``: a session of the engines process runs ``SELECT pg_sleep(seconds)`` (default 600)
          as application_name ``tradeops-lab-long-query``. Clear: ``pg_cancel_backend``.
        * ``blocking-lock``: a session (``tradeops-lab-blocker``) holds ``LOCK TABLE trades IN ACCESS
          EXCLUSIVE MODE`` in an open transaction; a second one (``tradeops-lab-blocked``) waits behind it
          in ``SELECT count(*) FROM trades``. The engines' orders are not affected. Clear: roll back, end both.

        Injecting an active index-corruption, long-query or blocking-lock again is a no-op (``"already":
        true``). ``down`` ends every session.

        **Security fault** ``leaked-secret`` (``engines``: default all): a rogue client in the engines process
        calls ``GET /pnl/status`` on each engine every 0.2 s with the admin token current at injection (source
        ``public``), recording 200 / 401 / 403 results with timestamps in ``<lab_dir>/faults/leaked-secret.json``
        and ``leaked()``. Returns ``{"leaked": record, "already"}``; ``clear`` stops it (the record stays,
        ``active: false``).
        """
        if fault in EXCHANGE_FAULTS:
            if kinds is not None or count is not None:
                raise LabInputError(f"kinds and count do not apply to {fault}")
            return self._inject_exchange(fault, engines, bool(clear), seconds)
        if fault in SERVICE_FAULTS:
            names = [engines] if isinstance(engines, str) else list(engines or [])
            if names or kinds is not None or count is not None or seconds is not None:
                raise LabInputError(f"{fault} is a service fault: it takes no engine names, kinds, count or seconds")
            return self._inject_service(fault, bool(clear))
        if fault in STREAM_FAULTS:
            names = [engines] if isinstance(engines, str) else list(engines or [])
            if names or kinds is not None or seconds is not None:
                raise LabInputError(f"{fault} is a stream fault: it takes no engine names, kinds or seconds")
            body: dict[str, Any] = {"fault": fault, "clear": bool(clear)}
            if count is not None:
                body["transient"] = count
            return self.control("POST", "/lab/streams", body)
        if fault == FAULT_KEY_EXPIRED:
            if clear or kinds is not None or count is not None or seconds is not None:
                raise LabInputError(f"{fault} cannot be cleared (rotate the keys) and takes only engine names")
            names = self._engine_names(engines if engines else [ALL])
            names = [s["name"] for s in self.state["engines"]] if ALL in names else names
            return dict(self.exchange_control("POST", "/lab/keys/expire", {"accounts": names, "label": "engine"}))
        if fault == FAULT_WS_DOWN:
            if engines or kinds is not None or count is not None or seconds is not None:
                raise LabInputError(f"{fault} applies to the exchange's market-data feed and takes no options")
            return dict(self.exchange_control("POST", "/lab/ws", {"fault": fault, "clear": bool(clear)}))
        if fault == FAULT_LEAKED_SECRET:
            if kinds is not None or count is not None or seconds is not None:
                raise LabInputError(f"kinds, count and seconds do not apply to {fault}")
            return self._leak(engines, bool(clear))
        if fault in DB_FAULTS:
            names = [engines] if isinstance(engines, str) else list(engines or [])
            if names:
                raise LabInputError(
                    f"{fault} is a database fault: it applies to the whole lab and takes no engine names "
                    f"(got {', '.join(names)})"
                )
            return self._inject_db(fault, bool(clear), kinds, count, seconds)
        if kinds is not None or count is not None or seconds is not None:
            raise LabInputError(
                f"kinds and count only apply to {FAULT_CORRUPT_ROWS}, seconds only to {FAULT_LONG_QUERY}"
            )
        validate_fault(fault, allow_all=clear)
        names = self._engine_names(engines if engines is not None else [])
        if fault in SELF_HALT_REASONS and not clear:
            methods = {e["name"]: e["methods"] for e in self.state["engines"]}
            without = [n for n in (list(methods) if ALL in names else names) if ORCHESTRATE_API not in methods[n]]
            if without:
                raise LabInputError(
                    f"{fault} needs an engine with seed 004's halt/unhalt API (method {ORCHESTRATE_API}); "
                    f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} none")
        res = self.control("POST", "/lab/faults", {"engines": names, "fault": fault, "clear": bool(clear)})
        return list(res["engines"])

    def issue_venue_keys(self, engines: Sequence[str]) -> dict[str, dict[str, str]]:
        """A new API key at the lab exchange for each engine's account (as an exchange's key management issues
        one): ``{engine: {key, secret, credential}}``; the old keys work until revoked. Secrets: keep them out of
        logs."""
        names = self._engine_names(list(engines))
        names = [s["name"] for s in self.state["engines"]] if ALL in names else names
        return dict(self.exchange_control("POST", "/lab/keys", {"accounts": names, "label": "engine"})["keys"])

    def streams(self) -> dict[str, Any]:
        """The streams' ledger: per stream, produced, processed, processed twice, unprocessed, poison, consumers."""
        return dict(self.control("GET", "/lab/streams"))

    def pause_producers(self, paused: bool = True) -> dict[str, Any]:
        """Stop (or restart) the streams' producers: the ledger then has an end to count to."""
        return dict(self.control("POST", "/lab/streams/producers", {"paused": bool(paused)}))

    def scale_consumers(self, stream: str, count: int, replace: Sequence[str] = ()) -> dict[str, Any]:
        """Run ``count`` consumers of ``stream``'s group, after stopping the ones named in ``replace`` (what they
        hold stays pending under their names), as a runtime replacing a pod or a container would."""
        return dict(self.control("POST", "/lab/streams/scale",
                                 {"stream": stream, "count": count, "replace": list(replace)}))

    def _inject_exchange(
        self, fault: str, accounts: str | Sequence[str] | None, clear: bool, seconds: float | None
    ) -> dict[str, Any]:
        names = [accounts] if isinstance(accounts, str) else list(accounts or [])
        if fault in EXCHANGE_ACCOUNT_FAULTS:
            names = [] if names in ([], [ALL]) else names  # accounts: the engines' and any added ones
        elif names:
            raise LabInputError(f"{fault} applies to the whole exchange and takes no engine names")
        if seconds is not None and fault != "exchange-slow":
            raise LabInputError(f"seconds only applies to exchange-slow, not {fault}")
        return dict(self.exchange_control("POST", "/lab/faults",
                                          {"fault": fault, "accounts": names, "clear": clear, "seconds": seconds}))

    # -- the exchange ----------------------------------------------------------------------------------------

    def exchange_control(self, method: str, path: str, body: Any = None, timeout: float = CONTROL_TIMEOUT,
                         backup: bool = False) -> Any:
        """Call the lab exchange's control API (``/lab/state``, ``/lab/orders``, ``/lab/fills``, ``/lab/move``,
        ``/lab/faults``, ``/lab/accounts``); ``backup``: the backup exchange's. LabError if this lab runs none."""
        st = self.state
        entry = st.get("exchange_backup" if backup else "exchange")
        if not entry:
            raise LabError(f"the lab in {self.lab_dir} runs no {'backup ' if backup else ''}exchange")
        return venue.control(entry, _control_token(st), method, path, body, timeout)

    def venue_accounts(self, backup: bool = False) -> dict[str, dict[str, Any]]:
        """Each engine's exchange account and its operations key: ``{engine: {key, secret, account_id}}``
        (the engine trades with a key of its own); ``backup``: at the backup exchange. Secrets: keep them out
        of logs."""
        accounts = (self.state.get("exchange_backup" if backup else "exchange") or {}).get("accounts") or {}
        return {name: {k: a[k] for k in ("key", "secret", "account_id")} for name, a in accounts.items()}

    def working_orders(self, exclude_stops: bool = False, backup: bool = False) -> dict[str, int]:
        """Working (open) orders per exchange account, as the exchange itself holds them; ``exclude_stops``
        leaves out the protective stop-loss orders (what the health gate places on every position);
        ``backup``: at the backup exchange."""
        accounts = self.exchange_control("GET", "/lab/state", backup=backup)["accounts"]
        counts = {name: int(a["open_orders"]) for name, a in accounts.items()}
        if exclude_stops:
            for order in self.exchange_control("GET", "/lab/orders?status=open", backup=backup)["orders"]:
                if order["descr"]["ordertype"] == "stop-loss":
                    counts[order["account"]] -= 1
        return counts

    def venue_fills(self, since: float = 0.0, account: str | None = None) -> list[dict[str, Any]]:
        """Fills at the exchange at or after the epoch time ``since``."""
        query = f"?since={since!r}" + (f"&account={account}" if account else "")
        return list(self.exchange_control("GET", "/lab/fills" + query)["fills"])

    def add_venue_account(
        self, name: str, balances: Mapping[str, float] | None = None, account_id: int | None = None
    ) -> dict[str, Any]:
        """A new account at the lab exchange (its operations key), in the shape venue_guard's accounts take:
        ``{name, exchange, url, api_key, secret}`` (plus ``account_id`` when given). Default balances:
        1,000,000 USD and 10 BTC."""
        body = {"name": name, "balances": dict(balances or {"ZUSD": 1_000_000, "XXBT": 10}), "account_id": account_id,
                "keys": ["ops", "trader"]}
        keys = self.exchange_control("POST", "/lab/accounts", body)["keys"]
        out = VenueAccountInfo(name=name, exchange="kraken", url=self.state["exchange"]["url"],
                               api_key=keys["ops"]["key"], secret=keys["ops"]["secret"])
        out.trader = (keys["trader"]["key"], keys["trader"]["secret"])
        if account_id is not None:
            out["account_id"] = account_id
        return out

    def rest_orders(self, account: Mapping[str, Any], count: int, pair: str = "XXBTZUSD",
                    distance_pct: float = 5.0) -> list[str]:
        """Place ``count`` limit orders for ``account`` (what ``add_venue_account`` returned) that rest: buys
        ``distance_pct`` below the price and sells above it, alternately, with the account's trading key (as
        an engine would: the operations key, with its own nonces, stays the collection's). Returns their txids."""
        ex = self.state["exchange"]
        key, secret = getattr(account, "trader", None) or (account["api_key"], account["secret"])
        client = venue.KrakenClient(ex["host"], ex["port"], key, secret)
        txids = []
        for i in range(count):
            side = "buy" if i % 2 == 0 else "sell"
            res = client.call("AddOrder", {"pair": pair, "type": side, "ordertype": "limit", "volume": "0.01",
                                           "price": f"{'-' if side == 'buy' else '+'}{distance_pct}%"})
            txids.append(res["txid"][0])
        return txids

    def move_price(self, pair: str, pct: float) -> float:
        """Move a pair's price by ``pct`` percent at once (resting orders it crosses fill)."""
        return float(self.exchange_control("POST", "/lab/move", {"pair": pair, "pct": pct})["price"])

    def _leak(self, engines: str | Sequence[str] | None, clear: bool) -> dict[str, Any]:
        if clear:
            return dict(self.control("POST", "/lab/leaked", {"clear": True}))
        names = self._engine_names(engines if engines else [ALL])
        res = dict(self.control("POST", "/lab/leaked", {"engines": names}))
        res["record"] = str(self.faults_dir / f"{FAULT_LEAKED_SECRET}.json")
        return res

    def restart(self, engines: str | Sequence[str], timeout: float = RESTART_TIMEOUT) -> list[dict[str, Any]]:
        """Restart ``engines`` (names, or ``"*"`` for all) like a process restart; returns their live state
        (as in ``engines()``) afterwards.

        A restart fixes the crash and hang faults and drops in-memory state (API halts); every other
        fault survives it (disk-pressure, unrecoverable, ...), and so do the halts held outside the
        engine (its EMERGENCY_STOP file, the redis keys): an engine whose flag is set comes back halted.
        Each engine listens again on the same port; its ``restarts`` count grows by one.
        """
        names = self._engine_names(engines)
        return list(self.control("POST", "/lab/engines/restart", {"engines": names}, timeout=timeout)["engines"])

    def restart_command(self, engine: str) -> list[str]:
        """The argv (no shell) that restarts ``engine`` from any process, e.g. ``ansible.builtin.command``:
        ``[python, -m, tradeops.cli, lab, restart, --dir, LAB_DIR, ENGINE]``."""
        st = self.state
        if engine != ALL and engine not in {spec["name"] for spec in st["engines"]}:
            raise LabInputError(f"no engine named {engine!r} in {self.lab_dir}")
        return [*(st.get("restart_argv") or restart_argv(self.lab_dir)), engine]

    def _engine_names(self, engines: str | Sequence[str]) -> list[str]:
        names = [engines] if isinstance(engines, str) else list(engines)
        if not names:
            raise LabInputError("no engines given (use '*' for all)")
        known = {spec["name"] for spec in self.state["engines"]}
        unknown = [n for n in names if n != ALL and n not in known]
        if unknown:
            raise LabInputError(f"unknown engine(s): {', '.join(unknown)}")
        return names

    # -- database faults -----------------------------------------------------------------------------------

    @property
    def faults_dir(self) -> Path:
        """``<lab_dir>/faults``: one ``<fault>.json`` per database fault injected and not cleared."""
        return self.lab_dir / FAULTS_DIR

    def _fault_record_path(self, fault: str) -> Path:
        directory = self.faults_dir
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            raise LabError(f"{directory} is not a plain directory")
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory / f"{fault}.json"

    def _inject_db(
        self,
        fault: str,
        clear: bool,
        kinds: str | Sequence[str] | None,
        count: int | Mapping[str, int] | None,
        seconds: float | None,
    ) -> dict[str, Any]:
        if fault != FAULT_CORRUPT_ROWS and (kinds is not None or count is not None):
            raise LabInputError(f"kinds and count only apply to {FAULT_CORRUPT_ROWS}, not to {fault}")
        if fault != FAULT_LONG_QUERY and seconds is not None:
            raise LabInputError(f"seconds only applies to {FAULT_LONG_QUERY}, not to {fault}")
        self.state  # noqa: B018 - raises LabError unless a lab is running here (before faults/ is created)
        if fault == FAULT_CORRUPT_ROWS:
            if clear:
                raise LabInputError(
                    f"{FAULT_CORRUPT_ROWS} cannot be cleared by the lab: repairing the rows is the playbook's "
                    f"job (what was corrupted is in {self.faults_dir / (FAULT_CORRUPT_ROWS + '.json')})"
                )
            return self._corrupt_rows(dbfaults.corrupt_plan(kinds, count))
        if fault == FAULT_INDEX_CORRUPTION:
            return self._reindex() if clear else self._corrupt_index()
        if fault == FAULT_TABLE_BLOAT:
            return self._unbloat() if clear else self._bloat()
        return self._session_fault(fault, clear, seconds)

    def _bloat(self) -> dict[str, Any]:
        """table-bloat: ``market_ticks`` (a hot table the lab creates: 20,000 rows, autovacuum off) updated
        three times over, so it holds 60,000 dead rows, then queried (pg_stat_statements shows the scans).
        VACUUM ANALYZE of the table is the fix; clearing drops the table."""
        path = self._fault_record_path(FAULT_TABLE_BLOAT)
        rows, rounds = 20_000, 3
        conn = self.pg_connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {BLOAT_TABLE} (id integer PRIMARY KEY, symbol text NOT NULL, "
                    "price numeric NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()) "
                    "WITH (autovacuum_enabled = false)"
                )
                cur.execute(f"ALTER TABLE {BLOAT_TABLE} SET (autovacuum_enabled = false)")
                cur.execute(
                    f"INSERT INTO {BLOAT_TABLE} (id, symbol, price) SELECT i, 'SYM' || (i %% 50), 100 + i %% 7 "
                    "FROM generate_series(1, %s) AS i ON CONFLICT (id) DO NOTHING", (rows,))
            for _ in range(rounds):
                with conn, conn.cursor() as cur:
                    cur.execute(f"UPDATE {BLOAT_TABLE} SET price = price * 1.0001, updated_at = now()")
            with conn, conn.cursor() as cur:
                for _ in range(5):
                    cur.execute(f"SELECT symbol, avg(price) FROM {BLOAT_TABLE} GROUP BY symbol")
        finally:
            conn.close()
        record = {"fault": FAULT_TABLE_BLOAT, "injected_at": time.time(), "table": BLOAT_TABLE,
                  "rows": rows, "dead_rows": rows * rounds}
        write_json_atomic(path, record)
        return record

    def _unbloat(self) -> dict[str, Any]:
        conn = self.pg_connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {BLOAT_TABLE}")
        finally:
            conn.close()
        path = self._fault_record_path(FAULT_TABLE_BLOAT)
        path.unlink(missing_ok=True)
        return {"fault": FAULT_TABLE_BLOAT, "cleared": True}

    def _corrupt_rows(self, plan: Mapping[str, int]) -> dict[str, Any]:
        path = self._fault_record_path(FAULT_CORRUPT_ROWS)
        injected_at = time.time()
        conn = self.pg_connect()
        try:
            kinds = dbfaults.corrupt_rows(conn, plan)
        finally:
            conn.close()
        record: dict[str, Any] = {
            "fault": FAULT_CORRUPT_ROWS,
            "injected_at": injected_at,
            "total": sum(k["count"] for k in kinds.values()),
            "kinds": kinds,
        }
        earlier = read_json(path)
        if earlier:
            record["earlier"] = [*earlier.pop("earlier", []), earlier]
        write_json_atomic(path, record)
        log.info("corrupt-rows: %d bad rows injected (%s)", record["total"], path)
        return {**{k: v for k, v in record.items() if k != "earlier"}, "record": str(path)}

    def _check_datadir(self, info: Mapping[str, Any], data_directory: str) -> Path:
        """The lab's own data dir, cross-checked against the server's ``data_directory`` setting."""
        datadir = Path(info["datadir"]).resolve()
        inside_lab = datadir == (self.lab_dir / "postgres" / "data").resolve()
        own_tmp = datadir.parent.name.startswith(postgres.PG_TMP_PREFIX) and datadir.name == "data"
        if not (inside_lab or own_tmp) or Path(data_directory).resolve() != datadir:
            raise LabError(
                f"refusing to touch {datadir}: not this lab's data directory (the server says {data_directory})"
            )
        return datadir

    def _corrupt_index(self) -> dict[str, Any]:
        index = dbfaults.INDEX_TARGET
        with self._locked():
            st = self.state
            path = self._fault_record_path(FAULT_INDEX_CORRUPTION)
            existing = read_json(path)
            if existing and self._index_corruption_active(existing):
                return {**existing, "already": True, "record": str(path)}
            conn = self.pg_connect()
            try:
                relation_file, block_size, data_directory = dbfaults.locate_index(conn, index)
            except psycopg2.Error as exc:
                raise LabError(f"index-corruption: cannot locate {index}: {exc}".strip()) from exc
            finally:
                conn.close()
            datadir = self._check_datadir(st["postgres"], data_directory)
            sessions = self._live_session_faults()
            done: dict[str, Any] = {}
            stopped_at = time.time()

            def corrupt() -> None:
                try:
                    done.update(dbfaults.corrupt_index_page(datadir, relation_file, block_size))
                except OSError as exc:
                    raise LabError(f"index-corruption: cannot rewrite {relation_file}: {exc}") from exc

            def started(info: dict[str, Any]) -> None:  # the new pid goes to state.json before anything can fail
                st["postgres"] = info
                write_json_atomic(self.state_path, st)

            new_pg = postgres.PostgresServer(self.lab_dir).restart(st["postgres"], corrupt, started)
            started_at = time.time()
            log.info("index-corruption: %s corrupted, postgres restarted as pid %s", index, new_pg["pid"])
            ended = [f for f in sessions if self._end_session_quietly(st, f)]
            conn = self.pg_connect()
            try:
                check = dbfaults.check_index(conn, index)
            finally:
                conn.close()
            if check["status"] == "ok":
                self._reindex_quietly(index)
                raise LabError(f"index-corruption: bt_index_check does not see the corruption of {index}; reindexed")
            reconnected = self._wait_writer_reconnected(st, started_at)
            record = {
                "fault": FAULT_INDEX_CORRUPTION,
                "injected_at": stopped_at,
                "index": index,
                "table": dbfaults.INDEX_TARGET_TABLE,
                **done,
                "block_size": block_size,
                "amcheck": check,
                "postgres_pid": new_pg["pid"],
                "postgres_down_s": round(started_at - stopped_at, 3),
                "engines_reconnected_s": None if reconnected is None else round(reconnected - started_at, 3),
                "ended_sessions": ended,
            }
            write_json_atomic(path, record)
            return {**record, "record": str(path)}

    def _reindex(self) -> dict[str, Any]:
        index = dbfaults.INDEX_TARGET
        path = self._fault_record_path(FAULT_INDEX_CORRUPTION)
        record = read_json(path)
        conn = self.pg_connect()
        try:
            dbfaults.reindex(conn, index)
            check = dbfaults.check_index(conn, index)
        finally:
            conn.close()
        if check["status"] == "corrupt":
            raise LabError(f"index-corruption: {index} still fails bt_index_check after REINDEX: {check['error']}")
        path.unlink(missing_ok=True)
        log.info("index-corruption cleared: REINDEX INDEX %s", index)
        return {
            "fault": FAULT_INDEX_CORRUPTION,
            "cleared": True,
            "was_injected": record is not None,
            "index": index,
            "action": f"REINDEX INDEX {index}",
            "amcheck": check,
        }

    def _reindex_quietly(self, index: str) -> None:
        try:
            conn = self.pg_connect()
            try:
                dbfaults.reindex(conn, index)
            finally:
                conn.close()
        except LabError as exc:
            log.error("%s", exc)

    def _index_corruption_active(self, record: Mapping[str, Any] | None) -> bool | None:
        """Whether the recorded corruption is still there: the index still lives in the corrupted file
        (a REINDEX gives it a new one). None if PostgreSQL cannot be asked."""
        if not record:
            return False
        try:
            conn = self.pg_connect()
            try:
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_relation_filepath(%s::regclass)", (record["index"],))
                    return bool(cur.fetchone()[0] == record["relation_file"])
            finally:
                conn.close()
        except (LabError, psycopg2.Error):
            return None

    def _wait_writer_reconnected(self, st: Mapping[str, Any], since: float) -> float | None:
        """When the engines' order writer next talked to the database after ``since`` (None: not in time)."""
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                health = _control_call(st["control"], _control_token(st), "GET", "/lab/health", timeout=5.0)
            except LabError:
                health = {}
            ok_at = health.get("database_ok_at")
            if health.get("database") and ok_at is not None and ok_at >= since:
                return float(ok_at)
            time.sleep(0.1)
        log.warning("index-corruption: the engines did not reconnect to PostgreSQL within %.0fs", RECONNECT_TIMEOUT)
        return None

    def _live_session_faults(self) -> list[str]:
        try:
            return list(self.control("GET", "/lab/db-faults", timeout=DB_FAULT_TIMEOUT)["faults"])
        except LabError:
            return []

    def _end_session_quietly(self, st: Mapping[str, Any], fault: str) -> bool:
        try:
            body = {"fault": fault, "clear": True}
            _control_call(st["control"], _control_token(st), "POST", "/lab/db-faults", body, timeout=DB_FAULT_TIMEOUT)
        except LabError as exc:
            log.error("cannot end the %s session: %s", fault, exc)
            return False
        (self.faults_dir / f"{fault}.json").unlink(missing_ok=True)
        return True

    def _session_fault(self, fault: str, clear: bool, seconds: float | None) -> dict[str, Any]:
        path = self._fault_record_path(fault)
        body: dict[str, Any] = {"fault": fault, "clear": clear}
        if seconds is not None:
            body["seconds"] = seconds
        res = dict(self.control("POST", "/lab/db-faults", body, timeout=DB_FAULT_TIMEOUT))
        if clear:
            path.unlink(missing_ok=True)
        else:
            write_json_atomic(path, res)
            res["record"] = str(path)
        return res

    def db_faults(self, ask_engines: bool = True) -> dict[str, Any]:
        """The database faults injected and not cleared, ``{fault: description}``; each has ``active``
        (True; False once repaired behind the lab's back, e.g. a REINDEX or pg_terminate_backend; None:
        cannot tell). corrupt-rows' ``active`` is always None: the lab does not track repairs of rows.

        The session faults come live from the engines process (``ask_engines=False``: from their records).
        """
        out: dict[str, Any] = {}
        directory = self.faults_dir
        rows = read_json(directory / f"{FAULT_CORRUPT_ROWS}.json")
        if rows:
            earlier = rows.get("earlier", [])
            counts = {k: v["count"] for k, v in rows["kinds"].items()}
            for e in earlier:
                for k, v in e["kinds"].items():
                    counts[k] = counts.get(k, 0) + v["count"]
            out[FAULT_CORRUPT_ROWS] = {
                "active": None,
                "injected_at": rows["injected_at"],
                "injections": 1 + len(earlier),
                "counts": counts,
                "total": sum(counts.values()),
            }
        index = read_json(directory / f"{FAULT_INDEX_CORRUPTION}.json")
        if index:
            out[FAULT_INDEX_CORRUPTION] = {
                "active": self._index_corruption_active(index),
                **{k: index[k] for k in ("injected_at", "index", "relation_file", "block", "item") if k in index},
            }
        bloat = read_json(directory / f"{FAULT_TABLE_BLOAT}.json")
        if bloat:
            out[FAULT_TABLE_BLOAT] = {**bloat, "active": None}
        live: dict[str, Any] | None = None
        if ask_engines:
            try:
                live = dict(self.control("GET", "/lab/db-faults")["faults"])
            except LabError:
                live = None
        for fault in SESSION_FAULTS:
            if live is not None:
                if fault in live:
                    out[fault] = live[fault]
            else:
                recorded = read_json(directory / f"{fault}.json")
                if recorded:
                    out[fault] = {**recorded, "active": None}
        return out

    # -- service faults and restarts: the lab's PostgreSQL and Redis themselves ----------------------------------

    def service_running(self, service: str) -> bool:
        """Whether the lab's ``postgres``, ``pgbouncer`` or ``redis`` answers (a connection and ``SELECT 1`` /
        ``PING``; through pgbouncer for it)."""
        if service == "pgbouncer":
            st = self.state
            return bool(st.get("pgbouncer")) and pgbouncer.answers(st["postgres"], st["pgbouncer"])
        if service == "ws-feed":
            try:
                return not self.exchange_control("GET", "/lab/ws", timeout=3.0)["wedged"]
            except LabError:
                return False
        try:
            if service == "postgres":
                conn = self.pg_connect(connect_timeout=2)
                conn.close()
            else:
                # no retries: redis-py's default retries with back-off make a refused connection take seconds
                self.redis_client(timeout=2.0, retry=Retry(NoBackoff(), 0)).ping()
        except (psycopg2.Error, redis.RedisError, OSError, LabError):
            return False
        return True

    def stop_service(self, service: str) -> dict[str, Any]:
        """Stop the lab's ``postgres`` (``pg_ctl stop -m immediate``: a crash, no checkpoint), ``pgbouncer`` or
        ``redis`` (its data is in memory only, as the lab configures it: the halt keys go with it). Idempotent."""
        self._check_service(service, stoppable=True)
        with self._locked():
            st = self.state
            if service == "postgres":
                postgres.stop_cluster(st["postgres"], remove_tmp=False, immediate=True)
            elif service == "pgbouncer":
                PgBouncer(self.lab_dir, st["postgres"]).stop(st.get("pgbouncer"))
            else:
                RedisServer(self.lab_dir).stop(st["redis"])
            log.info("%s stopped", service)
            return {"service": service, "running": False, "stopped_at": time.time()}

    def start_service(self, service: str) -> dict[str, Any]:
        """Start the lab's ``postgres`` or ``redis`` again on its port (its pid goes to ``state.json``); a
        running one is left alone (``"already": true``)."""
        self._check_service(service, stoppable=True)
        with self._locked():
            st = self.state
            if self.service_running(service):
                return {"service": service, "running": True, "already": True, "pid": st[service].get("pid")}
            if service == "postgres":
                info = postgres.PostgresServer(self.lab_dir).start_again(st["postgres"])
            elif service == "pgbouncer":
                info = PgBouncer(self.lab_dir, st["postgres"]).start(port=int(st["pgbouncer"]["port"]))
            else:
                info = RedisServer(self.lab_dir).start(st["redis"]["password"], port=int(st["redis"]["port"]))
            st[service] = {**st[service], "pid": info["pid"]}
            write_json_atomic(self.state_path, st)
            log.info("%s started again as pid %s", service, info["pid"])
            return {"service": service, "running": True, "already": False, "pid": info["pid"],
                    "started_at": time.time()}

    def restart_service(self, service: str) -> dict[str, Any]:
        """Stop (if running) and start the lab's ``postgres`` (``pg_ctl stop -m fast``), ``pgbouncer`` (stopped
        whether it answers or not: a stuck pooler holds its port) or ``redis``."""
        self._check_service(service)
        if service == "ws-feed":  # the exchange restarts its feed service on the same port
            res = dict(self.exchange_control("POST", "/lab/ws/restart"))
            return {"service": service, "running": True, "already": False, "pid": self.state["exchange"]["pid"],
                    "restarts": res["restarts"], "started_at": time.time()}
        if service == "pgbouncer" or self.service_running(service):
            with self._locked():
                st = self.state
                if service == "postgres":
                    postgres.stop_cluster(st["postgres"], remove_tmp=False)
                elif service == "pgbouncer":
                    PgBouncer(self.lab_dir, st["postgres"]).stop(st.get("pgbouncer"))
                else:
                    RedisServer(self.lab_dir).stop(st["redis"])
        return self.start_service(service)

    @staticmethod
    def _check_service(service: str, stoppable: bool = False) -> None:
        if service not in SERVICES:
            raise LabInputError(f"unknown service {service!r} (the lab's services: {', '.join(SERVICES)})")
        if stoppable and service == "ws-feed":
            raise LabInputError("the exchange's ws-feed is restarted (`tradeops lab restart ws-feed`), not stopped "
                                "or started; its fault is ws-down")

    def _inject_service(self, fault: str, clear: bool) -> dict[str, Any]:
        service = "postgres" if fault == FAULT_PG_DOWN else "redis"
        path = self._fault_record_path(fault)
        if fault == FAULT_REDIS_OOM:
            res = self._redis_unfill() if clear else self._redis_fill()
        elif fault == FAULT_POOLER_STUCK:
            res = self._pooler_signal(signal.SIGCONT if clear else signal.SIGSTOP)
        elif clear:
            res = self.start_service(service)
        else:
            res = self.stop_service(service)
        res["fault"] = fault
        if clear:
            path.unlink(missing_ok=True)
            res["cleared"] = True
        else:
            write_json_atomic(path, {**res, "injected_at": time.time()})
            res["record"] = str(path)
        return res

    def _pooler_signal(self, sig: signal.Signals) -> dict[str, Any]:
        """pooler-stuck: SIGSTOP the lab's pgbouncer (it keeps its port and its clients' connections, and answers
        nothing), or SIGCONT it (--clear)."""
        info = self.state.get("pgbouncer") or {}
        pid = info.get("pid")
        if not pid_alive(pid, "pgbouncer"):
            raise LabError("pooler-stuck: the lab's pgbouncer is not running (`tradeops lab restart pgbouncer`)")
        os.kill(pid, sig)
        return {"service": "pgbouncer", "pid": pid, "stopped": sig == signal.SIGSTOP}

    def _redis_fill(self) -> dict[str, Any]:
        """redis-oom: cap maxmemory just above what Redis uses (noeviction) and write cache keys until Redis
        refuses writes with OOM."""
        client = self.redis_client()
        before = client.config_get("maxmemory*")
        used = int(client.info("memory")["used_memory"])
        cap = used + REDIS_OOM_HEADROOM
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", cap)
        value = b"x" * 4096
        written = 0
        try:
            while written < 100_000:
                pipe = client.pipeline(transaction=False)
                for i in range(written, written + 100):
                    pipe.set(f"{REDIS_CACHE_PREFIX}quotes:{i}", value)
                pipe.execute()
                written += 100
        except redis.ResponseError as exc:
            if "OOM" not in str(exc) and "maxmemory" not in str(exc):
                raise LabError(f"redis-oom: unexpected error while filling Redis: {exc}") from exc
        else:
            raise LabError("redis-oom: Redis never refused a write (is maxmemory ignored?)")
        keys = sum(1 for _ in client.scan_iter(match=f"{REDIS_CACHE_PREFIX}*", count=1000))
        return {"service": "redis", "maxmemory": cap, "maxmemory_before": int(before.get("maxmemory") or 0),
                "policy_before": before.get("maxmemory-policy") or "noeviction", "cache_keys": keys,
                "pattern": f"{REDIS_CACHE_PREFIX}*"}

    def _redis_unfill(self) -> dict[str, Any]:
        record = read_json(self.faults_dir / f"{FAULT_REDIS_OOM}.json") or {}
        client = self.redis_client()
        deleted = 0
        batch: list[str] = []
        for key in client.scan_iter(match=f"{REDIS_CACHE_PREFIX}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.unlink(*batch)
                batch = []
        if batch:
            deleted += client.unlink(*batch)
        client.config_set("maxmemory", int(record.get("maxmemory_before") or 0))
        client.config_set("maxmemory-policy", record.get("policy_before") or "noeviction")
        return {"service": "redis", "deleted": deleted}

    def pg_dsn(self) -> str:
        """libpq DSN of the ``trading`` database (password included: keep it out of logs)."""
        return postgres.dsn(self.state["postgres"])

    def pg_connect(self, **kwargs: Any) -> psycopg2.extensions.connection:
        """A new psycopg2 connection to the ``trading`` database (connect and statement timeouts set)."""
        return postgres.connect(self.state["postgres"], **kwargs)

    def redis_client(self, **kwargs: Any) -> redis.Redis:
        """A redis client for the lab's server (``decode_responses=True`` unless overridden; 5 s timeouts)."""
        return redis_server.client(self.state["redis"], **kwargs)

    def orders_after(self, since: float, engines: Iterable[str] | None = None) -> dict[str, int]:
        """Orders per engine with ``created_at`` strictly later than the epoch time ``since``.

        The halt proof: after a halt was verified at ``since``, a halted engine has 0 here.
        """
        names = list(engines) if engines is not None else [e["name"] for e in self.state["engines"]]
        counts = dict.fromkeys(names, 0)
        conn = self.pg_connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT engine, count(*) FROM orders WHERE created_at > to_timestamp(%s) AND engine = ANY(%s) "
                    "GROUP BY engine",
                    (since, names),
                )
                counts.update({engine: int(n) for engine, n in cur.fetchall()})
        except psycopg2.Error as exc:
            raise LabError(f"cannot count orders: {exc}".strip()) from exc
        finally:
            conn.close()
        return counts

    def status(self) -> dict[str, Any]:
        """Everything about the running lab: components, per engine the control API's view plus
        ``orders_in_db`` / ``last_order_at`` from PostgreSQL, and ``db_faults`` (see ``db_faults``).
        Degraded parts are reported, not raised."""
        st = self.state
        now = time.time()
        pg, rd = st["postgres"], st["redis"]
        out: dict[str, Any] = {
            "lab_dir": st["lab_dir"],
            "started_at": st["started_at"],
            "uptime_s": round(now - st["started_at"], 1),
            "control": dict(st["control"]),
            "secrets_file": st.get("secrets_file") or str(self.secrets_path),
            "engines_process": {
                "pid": st["engines_pid"],
                "alive": pid_alive(st["engines_pid"], "tradeops.lab.engines"),
            },
            "postgres": {"host": pg["host"], "port": pg["port"], "pid": pg["pid"], "alive": pid_alive(pg["pid"])},
            "redis": {"host": rd["host"], "port": rd["port"], "pid": rd["pid"], "alive": pid_alive(rd["pid"])},
            "errors": [],
        }
        live: dict[str, dict[str, Any]] = {}
        try:
            live = {e["name"]: e for e in self.engines()}
            out["control"]["reachable"] = True
        except LabError as exc:
            out["control"]["reachable"] = False
            out["errors"].append(str(exc))
        counts: dict[str, tuple[int, float | None]] = {}
        try:
            conn = self.pg_connect()
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT engine, count(*), extract(epoch FROM max(created_at)) FROM orders GROUP BY engine"
                    )
                    counts = {e: (int(n), float(t) if t is not None else None) for e, n, t in cur.fetchall()}
            finally:
                conn.close()
            out["postgres"]["reachable"] = True
        except (LabError, psycopg2.Error) as exc:
            out["postgres"]["reachable"] = False
            out["errors"].append(f"postgres: {exc}".strip())
        try:
            out["redis"]["reachable"] = bool(self.redis_client(timeout=3.0).ping())
        except redis.RedisError as exc:
            out["redis"]["reachable"] = False
            out["errors"].append(f"redis: {exc}")
        engines = []
        for spec in st["engines"]:
            entry: dict[str, Any] = {
                "name": spec["name"],
                "port": spec["port"],
                "methods": spec["methods"],
                "faults": spec["faults"],
                "trading_active": None,
                "halted": None,
                "halt_source": None,
                "halted_at": None,
                "orders_written": None,
                "restarts": None,
                "started_at": None,
                "firewall": None,
                "auth": None,
            }
            entry.update(live.get(spec["name"], {}))
            n, last = counts.get(spec["name"], (0, None))
            entry["orders_in_db"] = n
            entry["last_order_at"] = last
            engines.append(entry)
        out["engines"] = engines
        if st.get("pgbouncer"):
            pb = st["pgbouncer"]
            out["pgbouncer"] = {"host": pb["host"], "port": pb["port"], "pid": pb["pid"],
                                "alive": pid_alive(pb["pid"], "pgbouncer"),
                                "reachable": pgbouncer.answers(pg, pb)}
            if not out["pgbouncer"]["reachable"]:
                out["errors"].append("pgbouncer: no answer through the pooler within 2 s")
        if st.get("exchange"):
            ex = st["exchange"]
            out["exchange"] = {"host": ex["host"], "port": ex["port"], "pid": ex["pid"],
                               "alive": venue.running(self.lab_dir, ex)}
            try:
                view = self.exchange_control("GET", "/lab/state", timeout=3.0)
                out["exchange"].update(reachable=True, faults=view["faults"],
                                       working_orders={n: a["open_orders"] for n, a in view["accounts"].items()})
            except LabError as exc:
                out["exchange"]["reachable"] = False
                out["errors"].append(f"exchange: {exc}")
        try:
            out["db_faults"] = self.db_faults(ask_engines=out["control"]["reachable"])
        except LabError as exc:
            out["db_faults"] = {}
            out["errors"].append(f"database faults: {exc}")
        out["healthy"] = (
            out["engines_process"]["alive"]
            and out["control"]["reachable"]
            and out["postgres"].get("reachable", False)
            and out["redis"]["reachable"]
            and out.get("pgbouncer", {"reachable": True})["reachable"]
            and out.get("exchange", {"reachable": True})["reachable"]
        )
        return out
