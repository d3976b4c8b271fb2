"""The ``Lab``: brings the simulated trading stack up and down and gives access to its parts."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import redis

from . import postgres, redis_server
from .errors import LabError, LabInputError
from .postgres import PostgresServer, stop_cluster
from .procs import http_request, pid_alive, tail, terminate
from .redis_server import RedisServer
from .state import (
    ALL,
    BALLAST_DIR,
    ENGINES_CONFIG_FILE,
    ENGINES_LOG,
    ENGINES_RUNTIME_FILE,
    LOCK_FILE,
    MARKER_FILE,
    STARTING_FILE,
    STATE_FILE,
    STATE_VERSION,
    build_engine_specs,
    default_lab_dir,
    new_secret,
    read_json,
    restart_argv,
    validate_fault,
    write_json_atomic,
)

log = logging.getLogger("tradeops.lab")

UP_TIMEOUT = 60.0
CONTROL_TIMEOUT = 10.0
RESTART_TIMEOUT = 30.0  # restarting many engines at once
ENGINES_STOP_TIMEOUT = 15.0
_OWN_FILES = (STATE_FILE, STARTING_FILE, ENGINES_CONFIG_FILE, ENGINES_RUNTIME_FILE)


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
    ) -> dict[str, Any]:
        """Start PostgreSQL, Redis and ``engines`` engines; return the state (also written to state.json).

        ``mix`` overrides the cycle of primary halt methods (``"redis,file"``); ``faults`` maps engine
        names (or ``"*"``) to faults active from the start. With ``wait`` (the default) returns once every
        engine listens and every engine not crashed has had an order committed; without it, once every
        engine's port is bound. Anything started is torn down again if ``up`` fails.
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
            return self._up(specs, float(order_interval), wait, timeout)

    def _up(self, specs: list[dict[str, Any]], order_interval: float, wait: bool, timeout: float) -> dict[str, Any]:
        t0 = time.monotonic()
        deadline = t0 + timeout
        st: dict[str, Any] = {
            "version": STATE_VERSION,
            "lab_dir": str(self.lab_dir),
            "started_at": time.time(),
            "admin_token": new_secret(),
            "control": None,
            "engines_pid": None,
            "postgres": None,
            "redis": None,
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
            st["redis"] = RedisServer(self.lab_dir).start(new_secret())
            save()
            log.info("redis up on port %s (%.1fs)", st["redis"]["port"], time.monotonic() - t0)
            for spec in specs:
                Path(spec["dir"]).mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                self.lab_dir / ENGINES_CONFIG_FILE,
                {
                    "admin_token": st["admin_token"],
                    "order_interval": order_interval,
                    "postgres": st["postgres"],
                    "redis": st["redis"],
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
                snap = _control_call(st["control"], st["admin_token"], "GET", "/lab/engines", timeout=5.0)["engines"]
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
        if st.get("redis"):
            RedisServer(self.lab_dir).stop(st["redis"])
        if st.get("postgres"):
            stop_cluster(st["postgres"])
        for name in _OWN_FILES:
            (self.lab_dir / name).unlink(missing_ok=True)
        ballast = self.lab_dir / BALLAST_DIR  # the disk-pressure fault's filler: never worth keeping
        if ballast.is_dir() and not ballast.is_symlink():
            shutil.rmtree(ballast, ignore_errors=True)
        (self.lab_dir / "redis" / "redis.conf").unlink(missing_ok=True)  # holds the password

    # -- runtime -------------------------------------------------------------------------------------------

    def control(self, method: str, path: str, body: Any = None, timeout: float = CONTROL_TIMEOUT) -> Any:
        """Call the engines process' control API (``X-Lab-Token`` added); returns the decoded JSON."""
        st = self.state
        return _control_call(st["control"], st["admin_token"], method, path, body, timeout)

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

    def inject(self, fault: str, engines: str | Sequence[str], clear: bool = False) -> list[dict[str, Any]]:
        """Inject (or with ``clear``, clear) ``fault`` on ``engines`` (names, or ``"*"`` for all).

        ``fault="*"`` with ``clear=True`` clears every fault. Returns ``[{"name", "faults"}]`` afterwards.

        ``disk-pressure`` writes a 64 MiB ballast file to ``<lab_dir>/ballast/`` (removed once no engine has
        the fault any more) and makes the affected engines NO-GO (``components.disk: "error"``);
        ``unrecoverable`` makes them NO-GO (``components.engine: "error"``). Neither is fixed by a restart.
        Clearing ``crash`` restarts the engine (see ``restart``).
        """
        validate_fault(fault, allow_all=clear)
        names = self._engine_names(engines)
        res = self.control("POST", "/lab/faults", {"engines": names, "fault": fault, "clear": bool(clear)})
        return list(res["engines"])

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
        """Everything about the running lab: components, and per engine the control API's view plus
        ``orders_in_db`` / ``last_order_at`` from PostgreSQL. Degraded parts are reported, not raised."""
        st = self.state
        now = time.time()
        pg, rd = st["postgres"], st["redis"]
        out: dict[str, Any] = {
            "lab_dir": st["lab_dir"],
            "started_at": st["started_at"],
            "uptime_s": round(now - st["started_at"], 1),
            "control": dict(st["control"]),
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
            }
            entry.update(live.get(spec["name"], {}))
            n, last = counts.get(spec["name"], (0, None))
            entry["orders_in_db"] = n
            entry["last_order_at"] = last
            engines.append(entry)
        out["engines"] = engines
        out["healthy"] = (
            out["engines_process"]["alive"]
            and out["control"]["reachable"]
            and out["postgres"].get("reachable", False)
            and out["redis"]["reachable"]
        )
        return out
