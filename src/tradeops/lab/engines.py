"""The engine host: N simulated trading engines served by one asyncio process.

Run by the lab manager as ``python -m tradeops.lab.engines --lab-dir DIR``. It reads
``<lab_dir>/engines-config.json`` (written by the manager), binds one loopback socket per engine plus
the control API, writes ``<lab_dir>/engines-runtime.json`` with the ports, and trades until SIGTERM.

The halt proof: on every tick an engine takes ``t = time.time()`` *first*, then evaluates every halt
source it honours (internal API flag, flag file, one redis MGET), and only if none is active writes an
order with ``created_at = t``. Hence no order ever carries a timestamp later than the moment a halt
source became visible, and "no order with created_at > T" in PostgreSQL proves the engine was halted at T.

Restart (``POST /lab/engines/restart``, ``Engine.restart``) behaves like a process restart of one engine:
its trading loop, listening socket and open connections go away, the faults a restart fixes (crash, hang,
error-rate and latency: a leak-like cause inside the process; not the dependency faults)
are cleared, in-memory state is dropped (API halts, ``halted_at``/``halt_source``, the error-rate window),
then it listens again on the same port with a new trading loop. Halt sources held outside the process
(the EMERGENCY_STOP file, the redis keys) are read again on the first tick, so an engine whose flag is
set comes back halted. Counters (orders, errors, requests, latency) and the P&L persist across restarts;
``restarts`` and ``started_at`` tell restarts apart.

Each engine appends its own events (start, restart, halts, faults, errors; never secrets) to
``<engine dir>/engine.log``, besides the shared ``engines.log``.

Admin auth: every admin call (``POST /admin/orchestrate/halt|unhalt``, ``GET /pnl/status``, ``POST
/api/v1/emergency/kill_switch|resume``) needs ``X-Admin-Token`` equal to one of the tokens in
``<lab_dir>/secrets.env`` (``ADMIN_TOKEN``, and ``ADMIN_TOKEN_PREVIOUS`` and ``ADMIN_TOKEN_PENDING`` while
present: the old token during a cutover, the new one staged by a rotation before clients send it), compared with
``hmac.compare_digest``; anything else gets 401. The file is re-read on SIGHUP and when it changes (a
stat of its mtime/ctime/inode/size at most every 0.5 s); a file that turns unreadable or loses
``ADMIN_TOKEN`` keeps the last good set (logged). /health, /health/detailed, /metrics and the trading
status GET stay unauthenticated. ``auth_success_total`` / ``auth_failures_total`` count the outcomes.

The lab firewall (control API ``POST /lab/firewall``) simulates inbound filtering per engine. Every
caller is on 127.0.0.1 here, so the *source* of a request is modelled by the ``X-Lab-Source`` header
(``public`` when absent). While an engine's firewall is enabled, a request whose source is not in its
allow-list gets **403** ``{"error": "blocked by the lab firewall"}`` and the connection is closed, before
any fault (hang, latency) or route applies. ``management`` is always in the allow-list, and the control
API (its own port) is never filtered: the management path always works. The settings live in
``<lab_dir>/firewall.json`` and survive engine restarts and a restart of this process.

The ``leaked-secret`` fault (control API ``POST /lab/leaked``) is a rogue client, a task of this process:
every 0.2 s it calls ``GET /pnl/status`` on its engines (source ``public``) with the admin token that was
current when it was injected, and records the outcome (200 / 401 / 403 / other, with timestamps; never the
token, only its fingerprint) in ``<lab_dir>/faults/leaked-secret.json`` and ``GET /lab/leaked``.

The long-query and blocking-lock database faults are PostgreSQL sessions held by threads of this process
(``dbfaults.SessionFaults``, control API ``GET``/``POST /lab/db-faults``): they outlive the CLI call that
injected them and end with the process at the latest.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import errno
import hmac
import json
import logging
import os
import queue
import random
import re
import resource
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from . import metrics
from .dbfaults import SessionFaults
from .errors import LabError, LabInputError
from .exchange import PAIRS
from .pgbouncer import pooled
from .postgres import dsn as pg_dsn
from .state import (
    ALL,
    BALLAST_DIR,
    BALLAST_FILE,
    EMERGENCY_STOP_FILE,
    ENGINE_LOG,
    ENGINES_CONFIG_FILE,
    ENGINES_RUNTIME_FILE,
    ERROR_FAULTS,
    FAULT_CPU_HOG,
    FAULT_CRASH,
    FAULT_CRASH_LOOP,
    FAULT_DEPENDENCY_ERRORS,
    FAULT_DISK_PRESSURE,
    FAULT_ERROR_RATE,
    FAULT_HANG,
    FAULT_KILLSWITCH_BROKEN,
    FAULT_KILLSWITCH_LIES,
    FAULT_LEAKED_SECRET,
    FAULT_MEMORY_LEAK,
    FAULT_MODEL_DRIFT,
    FAULT_SELF_HALT_ERROR,
    FAULT_SELF_HALT_LOSS,
    FAULT_SELF_HALT_TARGET,
    FAULT_UNRECOVERABLE,
    FAULTS,
    FAULTS_DIR,
    FAULTS_FIXED_BY_RESTART,
    FILE,
    FIREWALL_FILE,
    GLOBAL_HALT_KEY,
    KILLSWITCH_API,
    LATENCY_FAULTS,
    LOOPBACK,
    ORCHESTRATE_API,
    REDIS,
    SECRET_CURRENT,
    SECRET_PENDING,
    SECRET_PREVIOUS,
    SECRETS_FILE,
    SELF_HALT_REASONS,
    SESSION_FAULTS,
    SOURCE_HEADER,
    SOURCE_MANAGEMENT,
    SOURCE_PUBLIC,
    fingerprint,
    read_json,
    read_secrets_env,
    write_json_atomic,
)
from .streams import StreamsApp
from .venue import KrakenClient, VenueError
from .web import HttpError, Request, Response, serve_connection

log = logging.getLogger("tradeops.lab.engines")

ERROR_CAUSES = {
    FAULT_ERROR_RATE: "internal error: order cache exhausted (grows until the process restarts)",
    FAULT_DEPENDENCY_ERRORS: "dependency error: pricing feed answered 503",
}
ERROR_EVERY = 5  # under the error-rate fault every 5th order attempt fails ...
ERROR_RATE = 1 / ERROR_EVERY  # ... i.e. 20%, evenly spread, so the measured rate does not flap
NO_GO_ERROR_RATE = 0.05  # /health/detailed says NO-GO above this error rate ...
ERROR_WINDOW = 5.0  # ... measured over the order attempts of the last 5 s (NO-GO ~1.3 s after the fault
ERROR_WINDOW_RESOLUTION = 0.25  # starts at 20% failures, GO again ~4 s after it is cleared)
# Seed 004's orchestrator halts itself at its daily P&L bounds (GET /pnl/status: haltReason).
DAILY_TARGET = 10_000.0
DAILY_LOSS_LIMIT = -5_000.0
SELF_HALT = "self"  # the halt source of a self-halt
# The engine's models (seed 000 / 001): the primary at its current version, its previous version, a backup model.
MODEL_PRIMARY, MODEL_BACKUP = "primary", "backup"
MODEL_VERSIONS = ("v2", "v3")  # the previous and the current release of the primary model
MODEL_ACCURACY = {(MODEL_PRIMARY, "v3"): 0.72, (MODEL_PRIMARY, "v2"): 0.68, (MODEL_BACKUP, "b1"): 0.65}
DRIFTED_ACCURACY = 0.52
LATENCY_DELAY = 1.5  # seconds added to every response under the latency fault
# Performance (seed 000 P2): the engine's resident memory and CPU, as its /metrics reports them.
BASE_RSS_BYTES = 48 * 1024 * 1024  # an engine's resident memory without the leak
MEMORY_LEAK_RATE = 8 * 1024 * 1024  # bytes per second the memory-leak fault really allocates and keeps ...
MEMORY_LEAK_CAP = 768 * 1024 * 1024  # ... up to this, so that the lab machine survives a forgotten fault
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024  # the engine's memory budget (a container's limit), for the memory alert
CAPITAL = 100_000.0  # the engine's capital: its drawdown is from the peak of capital + P&L
UPDATE_INTERVAL_MS = 100  # market-data update interval (10 updates/s); the config API changes it ...
UPDATE_INTERVAL_BOUNDS = (50, 60_000)  # ... within these bounds (ms)
UPDATE_CPU_SECONDS = 0.002  # CPU one market-data update costs (2 % of a core at 10 updates/s) ...
HOG_UPDATE_CPU_SECONDS = 0.09  # ... and under the cpu-hog fault (90 %; 45 % at half the update frequency)
# Releases (seed 004 "Single Agent Failure"): <engine dir>/releases/<version>/release.json, and the link
# <engine dir>/current to the one in use, read at every start. The crash-loop fault deploys a bad one.
RELEASE_LINK = "current"
RELEASES_DIR = "releases"
RELEASE_FILE = "release.json"
GOOD_RELEASE = "1.4.2"
BAD_RELEASE = "1.5.0"
CRASH_LOOP_UPTIME = 2.0  # a bad release dies this long after it starts (never healthy meanwhile) ...
CRASH_LOOP_BACKOFF = 1.0  # ... and its supervisor starts it again after this
REDIS_TIMEOUT = 2.0
RESTART_DRAIN_TIMEOUT = 2.0  # how long a restart waits for the old loop and connections to finish cancelling
BALLAST_BYTES = 64 * 1024 * 1024  # the disk-pressure fault's ballast file ...
BALLAST_CHUNK = 1024 * 1024  # ... written in chunks of this size
SECRETS_CHECK_INTERVAL = 0.5  # the secrets file is stat()ed at most this often (re-read when it changed)
LEAK_INTERVAL = 0.2  # the leaked-secret client's rounds
LEAK_CALL_TIMEOUT = 2.0  # one call of the leaked-secret client
LEAK_CONCURRENCY = 16
LEAK_RECENT = 200  # results kept in the record
LEAK_WRITE_INTERVAL = 0.25  # the record file is rewritten at most this often
LEAK_PATH = "/pnl/status"
FIREWALL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
VENUE_RESTING = 3  # resting orders an engine keeps at the lab exchange
VENUE_PRIMARY, VENUE_BACKUP = "primary", "backup"
VENUE_CREDENTIAL_FILE, VENUE_CREDENTIAL_VAR = "venue.env", "VENUE_API_CREDENTIAL"
VENUE_ERROR_WINDOW = 10.0  # seconds of venue calls behind the venue error rate
BACKOFF_FACTOR = 4  # back-off mode: a quarter of the venue calls
VENUE_PAIRS = tuple(PAIRS)

SYMBOLS: dict[str, float] = {
    "BTC-USD": 65000.0,
    "ETH-USD": 3400.0,
    "SOL-USD": 150.0,
    "AAPL": 190.0,
    "MSFT": 420.0,
    "EUR-USD": 1.08,
}

# engine, symbol, side, quantity, price, created_at (epoch), venue
OrderRow = tuple[str, str, str, float, float, float, str]


class MarketFeed:
    """The engines' market data: one WebSocket connection to the exchange's feed (Kraken's v2 ticker channel) for
    the whole process, reconnected a second after it drops, with a 5 s heartbeat. ``view()``: whether it is
    connected and how old the last ticker update is (None: never got one)."""

    SYMBOLS = tuple(PAIRS[p][6].replace("-", "/") for p in PAIRS)

    def __init__(self, url: str | None) -> None:
        self.url = url
        self.connected = False
        self.last_at: float | None = None
        self.updates = 0
        self.connects = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.url:
            self._task = asyncio.create_task(self._run(), name="market-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                pass

    def view(self) -> dict[str, Any]:
        age = None if self.last_at is None else round(time.time() - self.last_at, 2)
        return {"url": self.url, "connected": self.connected, "age_s": age, "updates": self.updates,
                "connects": self.connects}

    async def _run(self) -> None:
        try:
            import aiohttp
        except ImportError:
            log.warning("market feed: aiohttp is not installed; no market data")
            return
        assert self.url is not None
        timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_connect=3)
        while True:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session, \
                        session.ws_connect(self.url, heartbeat=5.0, receive_timeout=10.0) as ws:
                    self.connected = True
                    self.connects += 1
                    await ws.send_str(json.dumps({"method": "subscribe",
                                                  "params": {"channel": "ticker", "symbol": list(self.SYMBOLS)}}))
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(msg.data)
                        if data.get("channel") == "ticker" and data.get("type") == "update":
                            self.last_at = time.time()
                            self.updates += 1
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, OSError, ValueError, TimeoutError) as exc:
                log.debug("market feed: %s", exc)
            self.connected = False
            await asyncio.sleep(1.0)


def _query(request: Request) -> dict[str, str]:
    """The query string of ``request`` (the last value of each name)."""
    return {k: v[-1] for k, v in urllib.parse.parse_qs(request.target.partition("?")[2]).items()}


class OrderWriter:
    """The one writer for every engine: a thread batching orders into PostgreSQL every ``flush_interval``."""

    INSERT = "INSERT INTO orders (engine, symbol, side, quantity, price, created_at, venue) VALUES %s"
    TEMPLATE = "(%s, %s, %s, %s, %s, to_timestamp(%s), %s)"

    def __init__(self, pg: Mapping[str, Any], flush_interval: float = 0.1, max_pending: int = 200_000) -> None:
        self._dsn = pg_dsn(dict(pg))
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._queue: queue.SimpleQueue[OrderRow] = queue.SimpleQueue()
        self._pending: list[OrderRow] = []
        self._conn: psycopg2.extensions.connection | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._written: collections.Counter[str] = collections.Counter()
        self._last_ok = 0.0
        self.last_ok_at: float | None = None  # wall clock of the last successful commit or ping
        self.healthy = False
        self.last_error: str | None = None
        self.dropped = 0

    def _connect(self) -> psycopg2.extensions.connection:
        return psycopg2.connect(
            self._dsn,
            options="-c statement_timeout=10000",
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            tcp_user_timeout=10000,
        )

    def check(self) -> None:
        """Connect once, synchronously; raises LabError if the database is not usable."""
        try:
            conn = self._connect()
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM orders WHERE false")
            conn.commit()
        except psycopg2.Error as exc:
            raise LabError(f"order writer cannot use the database: {exc}".strip()) from exc
        self._conn = conn
        self.healthy = True
        self._last_ok = time.monotonic()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="order-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, row: OrderRow) -> None:
        self._queue.put(row)

    def written(self, engine: str) -> int:
        """Orders of ``engine`` committed so far."""
        with self._lock:
            return self._written.get(engine, 0)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self._flush()
        self._flush()
        if self._conn is not None:
            self._conn.close()

    def _flush(self) -> None:
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if len(self._pending) > self.max_pending:
            excess = len(self._pending) - self.max_pending
            del self._pending[:excess]
            self.dropped += excess
        if not self._pending:
            if time.monotonic() - self._last_ok > 5.0:
                self._ping()
            return
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                psycopg2.extras.execute_values(cur, self.INSERT, self._pending, template=self.TEMPLATE, page_size=2000)
            self._conn.commit()
        except (psycopg2.Error, OSError) as exc:
            self._failed(exc)
            return
        counts = collections.Counter(row[0] for row in self._pending)
        with self._lock:
            self._written.update(counts)
        self._pending.clear()
        self._ok()

    def _ping(self) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn.cursor() as cur:
                cur.execute("SELECT 1")
            self._conn.rollback()
        except (psycopg2.Error, OSError) as exc:
            self._failed(exc)
            return
        self._ok()

    def _ok(self) -> None:
        if not self.healthy:
            log.info("order writer: database reachable again")
        self.healthy = True
        self.last_error = None
        self._last_ok = time.monotonic()
        self.last_ok_at = time.time()

    def _failed(self, exc: BaseException) -> None:
        if self.healthy:
            log.error("order writer: database error (%d orders pending): %s", len(self._pending), str(exc).strip())
        self.healthy = False
        self.last_error = str(exc).strip()
        self._last_ok = time.monotonic()  # retry pings at most every 5 s
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None


def ballast_path(lab_dir: Path) -> Path:
    return Path(lab_dir) / BALLAST_DIR / BALLAST_FILE


def write_ballast(lab_dir: Path, size: int = BALLAST_BYTES, chunk: int = BALLAST_CHUNK) -> Path:
    """Fill ``<lab_dir>/ballast/disk-pressure.bin`` with ``size`` bytes, ``chunk`` at a time.

    Never writes outside the lab dir: a symlinked ballast dir or file is refused. If the disk fills up
    first (ENOSPC) the partial file stays: the pressure is real then.
    """
    lab_dir = Path(lab_dir)
    directory = lab_dir / BALLAST_DIR
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise LabError(f"{directory} is not a plain directory; refusing to write the disk-pressure ballast there")
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / BALLAST_FILE
    if directory.resolve().parent != lab_dir.resolve():
        raise LabError(f"{directory} is not inside the lab dir {lab_dir}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LabError(f"cannot create the disk-pressure ballast {path}: {exc}") from exc
    block = memoryview(bytes(chunk))
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(chunk, left)])
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise LabError(f"cannot write the disk-pressure ballast {path}: {exc}") from exc
        log.warning("disk-pressure ballast %s: the disk is full after %d bytes", path, size - left)
    finally:
        os.close(fd)
    return path


def remove_ballast(lab_dir: Path) -> None:
    """Remove the disk-pressure ballast (and its dir, if empty); fine if it is not there."""
    path = ballast_path(lab_dir)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


class EngineLog:
    """An engine's own log file, ``<engine dir>/engine.log``: opened, appended to and closed per line.

    Lines are rare (start, restart, halts, faults, errors), so this stays cheap and survives the file
    being moved or deleted. A write error is reported once to the shared log and otherwise ignored.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._broken = False

    def write(self, level: int, message: str) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        line = f"{stamp} {logging.getLevelName(level)} {message}\n".encode("utf-8", "replace")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._broken:
                log.error("cannot write %s: %s", self.path, exc)
            self._broken = True
        else:
            self._broken = False


@dataclass(frozen=True)
class HaltState:
    """The effective halt state of an engine at one instant."""

    halted: bool
    source: str | None  # the first active halt method, in the engine's preference order
    reason: str | None
    redis_ok: bool | None  # None: the engine does not honour redis


class AdminTokens:
    """The admin tokens the engines accept, from the secrets file; re-read on SIGHUP and on change."""

    def __init__(self, path: Path, fallback: str) -> None:
        self.path = path
        self._tokens: tuple[bytes, ...] = (fallback.encode("utf-8"),)  # until the file is read
        self._names: dict[str, str] = {SECRET_CURRENT: fingerprint(fallback)}
        self._sig: tuple[int, ...] | None = None
        self._checked = 0.0
        self.loaded_at: float | None = None
        self.reloads = 0  # successful reads of the file
        self.error: str | None = None

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def reload(self, why: str = "reload") -> bool:
        """Read the file now; keeps the last good set (and logs) if it is missing, unreadable or lacks
        ADMIN_TOKEN. Returns whether the set was (re)loaded."""
        self._checked = time.monotonic()
        self._sig = self._stat()
        try:
            values = read_secrets_env(self.path)
        except LabError as exc:
            return self._failed(str(exc))
        if values is None:
            return self._failed(f"{self.path} is missing")
        current = values.get(SECRET_CURRENT)
        if not current:
            return self._failed(f"{self.path} has no {SECRET_CURRENT}")
        names = {SECRET_CURRENT: current}
        for name in (SECRET_PREVIOUS, SECRET_PENDING):
            if values.get(name):
                names[name] = values[name]
        before = dict(self._names)
        self._tokens = tuple(v.encode("utf-8") for v in names.values())
        self._names = {k: fingerprint(v) for k, v in names.items()}
        self.loaded_at = time.time()
        self.reloads += 1
        self.error = None
        if self._names != before:
            log.warning(
                "admin tokens (%s): %s",
                why,
                ", ".join(f"{k} {v}" for k, v in self._names.items()),
            )
        return True

    def _failed(self, message: str) -> bool:
        if self.error != message:
            log.error("admin tokens: %s; keeping the %d token(s) loaded before", message, len(self._tokens))
        self.error = message
        return False

    def maybe_reload(self) -> None:
        """Re-read the file if it changed; the stat() happens at most every SECRETS_CHECK_INTERVAL."""
        now = time.monotonic()
        if now - self._checked < SECRETS_CHECK_INTERVAL:
            return
        self._checked = now
        sig = self._stat()
        if sig != self._sig:
            self.reload("file changed")

    def accepts(self, token: str) -> bool:
        self.maybe_reload()
        given = token.encode("utf-8")
        ok = False
        for accepted in self._tokens:  # no early exit: the time does not tell which one matched
            ok |= hmac.compare_digest(given, accepted)
        return ok

    def describe(self) -> dict[str, Any]:
        """Fingerprints only, never values."""
        return {
            "file": str(self.path),
            "accepted": dict(self._names),
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "error": self.error,
        }


@dataclass
class Firewall:
    """An engine's simulated inbound filter (see the module docstring)."""

    enabled: bool = False
    allow: tuple[str, ...] = (SOURCE_MANAGEMENT,)
    blocked: int = 0

    def admits(self, request: Request) -> bool:
        if not self.enabled:
            return True
        source = (request.header(SOURCE_HEADER) or "").strip().lower() or SOURCE_PUBLIC
        return source in self.allow

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "allow": list(self.allow), "blocked": self.blocked}


class LeakedClient:
    """The leaked-secret fault: a rogue client calling an admin endpoint with a leaked token every 0.2 s."""

    def __init__(self, host: EngineHost, engines: list[Engine], token: str) -> None:
        self.host = host
        self.engines = engines
        self._token = token
        self.record: dict[str, Any] = {
            "fault": FAULT_LEAKED_SECRET,
            "active": True,
            "injected_at": time.time(),
            "cleared_at": None,
            "endpoint": f"GET {LEAK_PATH}",
            "source": SOURCE_PUBLIC,
            "interval": LEAK_INTERVAL,
            "token_fingerprint": fingerprint(token),
            "engines": [e.name for e in engines],
            "calls": 0,
            "successes": 0,
            "unauthorized": 0,
            "blocked": 0,
            "errors": 0,
            "first_success_at": None,
            "last_success_at": None,
            "first_unauthorized_at": None,
            "last_unauthorized_at": None,
            "per_engine": {e.name: {"ok": 0, "unauthorized": 0, "blocked": 0, "errors": 0} for e in engines},
            "recent": [],
        }
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=LEAK_RECENT)
        self._sem = asyncio.Semaphore(LEAK_CONCURRENCY)
        self._dirty = False
        self._written = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self.host.lab_dir / FAULTS_DIR / f"{FAULT_LEAKED_SECRET}.json"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leaked-secret")
        log.warning(
            "leaked-secret: rogue client started against %d engine(s) with token %s",
            len(self.engines),
            self.record["token_fingerprint"],
        )

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=LEAK_CALL_TIMEOUT + 1)
            self._task = None
        self.record["active"] = False
        self.record["cleared_at"] = time.time()
        self._save(self.view())
        log.warning("leaked-secret: rogue client stopped after %d calls", self.record["calls"])
        return self.view()

    def view(self) -> dict[str, Any]:
        self.record["recent"] = list(self._recent)
        return dict(self.record)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            await asyncio.gather(*(self._call(e) for e in self.engines))
            if self._dirty and loop.time() - self._written >= LEAK_WRITE_INTERVAL:
                self._written = loop.time()
                self._dirty = False
                data = json.loads(json.dumps(self.view()))  # a copy: the calls go on meanwhile
                await asyncio.to_thread(self._save, data)
            next_round += LEAK_INTERVAL
            delay = next_round - loop.time()
            if delay < 0:
                next_round = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _call(self, engine: Engine) -> None:
        async with self._sem:
            at = time.time()
            try:
                status: int | str = await asyncio.wait_for(self._get(engine.port), LEAK_CALL_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                status = f"error: {type(exc).__name__}"
        self._note(engine.name, at, status)

    async def _get(self, port: int) -> int:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            writer.write(
                (
                    f"GET {LEAK_PATH} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nX-Admin-Token: {self._token}\r\n"
                    "User-Agent: leaked-secret\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
            )
            await writer.drain()
            line = await reader.readline()
            parts = line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                raise ValueError("no HTTP status line")
            return int(parts[1])
        finally:
            writer.close()

    def _note(self, engine: str, at: float, status: int | str) -> None:
        r, per = self.record, self.record["per_engine"][engine]
        r["calls"] += 1
        if status == 200:
            kind, per_key = "successes", "ok"
            r["first_success_at"] = r["first_success_at"] or at
            r["last_success_at"] = at
        elif status == 401:
            kind, per_key = "unauthorized", "unauthorized"
            r["first_unauthorized_at"] = r["first_unauthorized_at"] or at
            r["last_unauthorized_at"] = at
        elif status == 403:
            kind, per_key = "blocked", "blocked"
        else:
            kind, per_key = "errors", "errors"
        r[kind] += 1
        per[per_key] += 1
        per["last_status"] = status
        per["last_at"] = at
        self._recent.append({"at": at, "engine": engine, "status": status})
        self._dirty = True

    def _save(self, data: dict[str, Any]) -> None:
        directory = self.path.parent
        try:
            if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
                raise OSError(f"{directory} is not a plain directory")
            directory.mkdir(mode=0o700, exist_ok=True)
            write_json_atomic(self.path, data)
        except OSError as exc:
            log.error("leaked-secret: cannot write %s: %s", self.path, exc)


class Engine:
    """One simulated trading engine: a trading loop and an HTTP API on its own loopback port."""

    def __init__(self, spec: Mapping[str, Any], host: EngineHost) -> None:
        self.host = host
        self.name: str = spec["name"]
        self.dir = Path(spec["dir"])
        self.methods: list[str] = list(spec["methods"])
        self.redis_key: str = spec["redis_key"]
        self.faults: set[str] = set(spec.get("faults") or [])
        self.flag_path = self.dir / EMERGENCY_STOP_FILE
        self.elog = EngineLog(self.dir / ENGINE_LOG)
        # The release in use: <dir>/current (a link the lab manages), or a directory the spec names (a
        # container image's release); with crash_loop_exit the process exits on a crash-loop crash, so that
        # its supervisor (Docker's restart policy) restarts it.
        self.release_link = Path(spec["release_link"]) if spec.get("release_link") else self.dir / RELEASE_LINK
        self.crash_loop_exit = bool(spec.get("crash_loop_exit"))
        self.release: dict[str, Any] = {}
        self._crash_task: asyncio.Task[None] | None = None
        # Performance: the market-data update interval (config API), the CPU it costs, the leak's allocations.
        self.update_interval_ms = UPDATE_INTERVAL_MS
        self.cpu_seconds = 0.0
        self._cpu_at: float | None = None
        self._leak: list[bytes] = []
        self.leaked_bytes = 0
        # Where it listens: the loopback and a port the OS picks, unless the spec says otherwise (a lab node
        # in a container listens on its network address and a fixed port: ``bind``, ``port``).
        self.bind_host: str = spec.get("bind") or LOOPBACK
        self._want_port = int(spec.get("port") or 0)
        self.port = 0
        self.restarts = 0
        self.started_at: float | None = None  # when it last started serving (None: crashed since launch)
        self.internal_halts: dict[str, str] = {}  # method -> reason, set by the halt APIs
        # The engine's own halt (seed 004's haltReason): latched while its cause (a self-halt fault) is active,
        # kept across restarts (the orchestrator persists it), lifted only by POST /admin/orchestrate/unhalt;
        # an unhalt while the cause is still active is followed by a new self-halt on the next tick.
        self.self_halt: str | None = None
        self.risk_rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=20)
        # The model in use (seed 000: switch to the backup model, roll back the version, or paper trading). Kept
        # across restarts, as a deployed configuration is. In paper mode the engine places no order at the venue.
        self.model: str = MODEL_PRIMARY
        self.model_version: str = MODEL_VERSIONS[-1]
        self.paper = False
        self.halted_at: float | None = None  # first tick that saw the engine halted
        self.halt_source: str | None = None
        self.orders_total = 0
        self.errors_total = 0
        self.requests: collections.Counter[int] = collections.Counter()
        self.latency = metrics.Histogram()
        self.window = metrics.RateWindow(ERROR_WINDOW, ERROR_WINDOW_RESOLUTION)
        self._fault_attempts = 0  # order attempts under the error-rate fault
        self._blind = False  # the last tick could not read redis
        self.auth_success = 0
        self.auth_failures = 0
        self.firewall = Firewall()  # the host loads the persisted settings; a restart keeps them
        self.pnl = 0.0
        self.peak_equity = CAPITAL
        self.signals_total = 0
        self.prices = dict(SYMBOLS)
        # the primary exchange and the backup (seed 003's failover), each with this engine's own account; which one
        # it trades on is its configuration (POST /admin/config {"venue"}), kept across restarts
        self.venues: dict[str, KrakenClient] = {}
        for label, exchange in ((VENUE_PRIMARY, host.exchange), (VENUE_BACKUP, host.exchange_backup)):
            account = (exchange.get("accounts") or {}).get(self.name) if exchange else None
            if account:
                self.venues[label] = KrakenClient(exchange["host"], exchange["port"], account["engine_key"]["key"],
                                                  account["engine_key"]["secret"])
        self.venue_name = VENUE_PRIMARY
        # the primary's key, as the engine's deployment holds it: VENUE_API_CREDENTIAL=<key>:<secret> in
        # <engine dir>/venue.env, re-read when the file changes (what rotate_secret writes; seed 002's key rotation)
        self.credential_path = Path(spec["dir"]) / VENUE_CREDENTIAL_FILE
        self._credential_stamp: tuple[int, int] | None = None
        # seed 000's rate-limit answer: back-off (a quarter of the venue calls) and cached market data
        self.backoff = False
        # (when, outcome): ok, refused (an order error), rate_limited (EAPI:Rate limit exceeded), unavailable
        self.venue_calls: collections.deque[tuple[float, str]] = collections.deque(maxlen=200)
        self.venue_orders: collections.deque[str] = collections.deque()
        self.venue_placed = 0
        self.venue_errors = 0
        self._venue_ticks = 0
        self._venue_busy = False
        self._rng = random.Random()
        self._server: asyncio.Server | None = None
        self._reserve: socket.socket | None = None  # bound, not listening: the port stays ours while crashed
        self._task: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._lifecycle = asyncio.Lock()  # one restart / fault change of this engine at a time
        self._unhung = asyncio.Event()
        if FAULT_HANG not in self.faults:
            self._unhung.set()
        routes: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/health": {"GET": self._health},
            "/health/detailed": {"GET": self._health_detailed},
            "/metrics": {"GET": self._metrics},
            "/api/v1/trading/status": {"GET": self._trading_status},
            "/pnl/status": {"GET": self._pnl_status},
            "/model/status": {"GET": self._model_status},
            "/model/switch": {"POST": self._model_switch},
            "/model/rollback": {"POST": self._model_rollback},
            "/model/paper": {"POST": self._model_paper},
            "/admin/config": {"GET": self._config_get, "POST": self._config_set},
            # seed 004's stream administration (the lab's streams are shared: every engine serves them)
            "/admin/streams/pending": {"GET": self._streams_pending},
            "/admin/streams/dlq": {"GET": self._streams_dlq},
            "/admin/streams/dlq/requeue": {"POST": self._streams_requeue},
            "/admin/venue/credential": {"GET": self._venue_credential_check},
        }
        if KILLSWITCH_API in self.methods:
            routes["/api/v1/emergency/kill_switch"] = {"POST": self._kill_switch}
            routes["/api/v1/emergency/resume"] = {"POST": self._resume}
        if ORCHESTRATE_API in self.methods:
            routes["/admin/orchestrate/halt"] = {"POST": self._orchestrate_halt}
            routes["/admin/orchestrate/unhalt"] = {"POST": self._orchestrate_unhalt}
        self._routes = routes

    def event(self, level: int, msg: str, *args: Any) -> None:
        """Log an engine event to the shared log and to the engine's own ``engine.log``."""
        message = msg % args if args else msg
        log.log(level, "%s: %s", self.name, message)
        self.elog.write(level, message)

    # -- halt state ----------------------------------------------------------------------------------------

    @property
    def crashed(self) -> bool:
        return FAULT_CRASH in self.faults

    @property
    def redis_keys(self) -> list[str]:
        return [GLOBAL_HALT_KEY, self.redis_key] if REDIS in self.methods else []

    def evaluate(self, redis_values: Mapping[str, Any] | None) -> HaltState:
        """Combine the halt sources; ``redis_values`` are the redis keys' values (None: redis unreadable)."""
        active: dict[str, str] = {m: r for m, r in self.internal_halts.items() if m in self.methods}
        if self.self_halt is not None:  # the engine's own reason comes first: it is what /pnl/status reports
            redis_ok_self = (redis_values is not None) if REDIS in self.methods else None
            return HaltState(True, SELF_HALT, self.self_halt, redis_ok_self)
        if FILE in self.methods and self.flag_path.exists():
            active[FILE] = f"emergency stop file {self.flag_path} exists"
        redis_ok: bool | None = None
        if REDIS in self.methods:
            redis_ok = redis_values is not None
            for key in self.redis_keys:
                if redis_values is not None and redis_values.get(key) is not None:
                    active[REDIS] = f"redis key {key} is set"
                    break
        for method in self.methods:
            if method in active:
                return HaltState(True, method, active[method], redis_ok)
        return HaltState(False, None, None, redis_ok)

    async def effective_state(self) -> HaltState:
        """The halt state right now: one redis MGET (if the engine honours redis), then the local sources."""
        values: dict[str, Any] | None = None
        keys = self.redis_keys
        if keys:
            try:
                values = dict(zip(keys, await self.host.redis.mget(keys), strict=True))
            except (RedisError, OSError) as exc:
                self.host.redis_failed(exc)
                values = None
            else:
                self.host.redis_recovered()
        return self.evaluate(values)

    def _self_halt_maybe(self) -> None:
        """Latch the engine's own halt while a self-halt fault (its cause) is active."""
        if self.self_halt is not None:
            return
        cause = next((f for f in SELF_HALT_REASONS if f in self.faults), None)
        if cause is None:
            return
        self.self_halt = SELF_HALT_REASONS[cause]
        if cause == FAULT_SELF_HALT_LOSS:
            self.pnl = min(self.pnl, DAILY_LOSS_LIMIT - 250.0)
            for i in range(3):  # what the risk manager refused on the way down
                rejected = {"at": time.time(), "symbol": "XBTUSD", "side": "buy", "qty": 0.25 * (i + 1),
                            "reason": f"daily loss limit {DAILY_LOSS_LIMIT:.0f} reached (pnl {self.pnl:.2f})"}
                self.risk_rejections.append(rejected)
                self.event(logging.WARNING, "risk manager rejected trade: %s %s %s: %s", rejected["side"],
                           rejected["qty"], rejected["symbol"], rejected["reason"])
        elif cause == FAULT_SELF_HALT_TARGET:
            self.pnl = max(self.pnl, DAILY_TARGET + 250.0)
        else:
            self.event(logging.ERROR, "orchestrator: system error: stream consumer crashed")
        self.event(logging.WARNING, "halted itself: %s (pnl %.2f)", self.self_halt, self.pnl)

    # -- trading -------------------------------------------------------------------------------------------

    def start_trading(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._trade_loop(), name=f"trade-{self.name}")

    async def _trade_loop(self) -> None:
        interval = self.host.order_interval
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._rng.uniform(0, interval))  # jitter: engines do not tick in lockstep
        next_tick = loop.time()
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one tick must not kill the engine
                log.exception("%s: tick failed", self.name)
                self.elog.write(logging.ERROR, f"tick failed: {exc!r}")
                self.errors_total += 1
            next_tick += interval
            delay = next_tick - loop.time()
            if delay < 0:  # fell behind: do not burst to catch up
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _tick(self) -> None:
        t = time.time()  # FIRST: the order's timestamp precedes every halt check below
        self._account(t)
        self._self_halt_maybe()
        state = await self.effective_state()
        if state.redis_ok is False:
            # The halt state cannot be known: fail closed, count an error.
            if not self._blind:
                self._blind = True
                self.event(logging.ERROR, "halt state unknown (redis unreachable): not trading")
            self.errors_total += 1
            self.window.record(t, True)
            return
        if self._blind:
            self._blind = False
            self.event(logging.INFO, "redis readable again")
        if state.halted:
            if self.halted_at is None:
                self.halted_at = t
                self.event(logging.WARNING, "halted (%s: %s)", state.source, state.reason)
            self.halt_source = state.source
            return
        if self.halted_at is not None:
            self.event(logging.WARNING, "trading again after %.1fs halted", t - self.halted_at)
            self.halted_at = None
            self.halt_source = None
        cause = next((f for f in ERROR_FAULTS if f in self.faults), None)
        if cause is not None:
            self._fault_attempts += 1
            if self._fault_attempts % ERROR_EVERY == 0:
                self.errors_total += 1
                self.window.record(t, True)
                # what an operator greps the log for (seed 000: tail logs/app.log | grep ERROR)
                self.event(logging.ERROR, "order rejected: %s", ERROR_CAUSES[cause])
                return
        self.host.writer.submit(self._make_order(t))
        self.orders_total += 1
        self.window.record(t, False)
        self._venue_maybe()

    # -- performance: CPU and memory -------------------------------------------------------------------------

    @property
    def cpu_ratio(self) -> float:
        """The share of a core the market-data updates take at the current update frequency."""
        cost = HOG_UPDATE_CPU_SECONDS if FAULT_CPU_HOG in self.faults else UPDATE_CPU_SECONDS
        return cost * 1000.0 / self.update_interval_ms

    @property
    def rss_bytes(self) -> int:
        return BASE_RSS_BYTES + self.leaked_bytes

    def _account(self, t: float) -> None:
        """Add the CPU of the updates since the last tick; grow the leak (real memory) under its fault."""
        dt = 0.0 if self._cpu_at is None else max(0.0, t - self._cpu_at)
        self._cpu_at = t
        self.cpu_seconds += dt * self.cpu_ratio
        if FAULT_MEMORY_LEAK in self.faults and self.leaked_bytes < MEMORY_LEAK_CAP:
            grow = min(int(dt * MEMORY_LEAK_RATE), MEMORY_LEAK_CAP - self.leaked_bytes)
            if grow > 0:
                self._leak.append(b"\x5a" * grow)  # written, so really resident
                self.leaked_bytes += grow

    def _free_leak(self) -> None:
        self._leak.clear()
        self.leaked_bytes = 0

    async def _config_get(self, request: Request) -> Response:
        self._require_admin(request)
        return Response.json(self.config_view())

    async def _config_set(self, request: Request) -> Response:
        """Seed 000's "reduce update frequency" ``{"update_interval_ms": N}``, seed 003's failover ``{"venue":
        "primary"|"backup"}`` and seed 000's rate-limit back-off ``{"backoff": true|false}``; each optional, kept
        across restarts."""
        self._require_admin(request)
        body = request.json_object(required=True)
        known = {"update_interval_ms", "venue", "backoff"}
        if not body or set(body) - known:
            raise HttpError(400, f"set one or more of {', '.join(sorted(known))}")
        if "venue" in body:
            if body["venue"] not in self.venues:
                raise HttpError(400, f"'venue' must be one of {', '.join(self.venues) or 'none (no exchange)'}")
            if body["venue"] != self.venue_name:
                self.event(logging.WARNING, "venue %s -> %s (its resting orders at %s stay there)", self.venue_name,
                           body["venue"], self.venue_name)
                self.venue_name = body["venue"]
                self.venue_orders.clear()
                self.venue_calls.clear()
        if "backoff" in body:
            if not isinstance(body["backoff"], bool):
                raise HttpError(400, "'backoff' must be true or false")
            if body["backoff"] != self.backoff:
                self.event(logging.WARNING, "venue back-off and cached market data %s",
                           "on" if body["backoff"] else "off")
                self.backoff = body["backoff"]
                self.venue_calls.clear()
        if "update_interval_ms" not in body:
            return Response.json(self.config_view())
        value = body.get("update_interval_ms")
        low, high = UPDATE_INTERVAL_BOUNDS
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise HttpError(400, f"'update_interval_ms' must be an integer from {low} to {high}")
        if value != self.update_interval_ms:
            self.event(logging.WARNING, "update interval %d ms -> %d ms", self.update_interval_ms, value)
            self._account(time.time())  # the CPU so far at the old frequency
            self.update_interval_ms = value
        return Response.json(self.config_view())

    async def _streams_pending(self, request: Request) -> Response:
        """``GET /admin/streams/pending?stream=notify.events&group=notify`` (seed 004)."""
        self._require_admin(request)
        query = _query(request)
        call = self.host.streams.pending(query.get("stream"), query.get("group"))
        return Response.json(await self._streams_call(call))

    async def _streams_dlq(self, request: Request) -> Response:
        """``GET /admin/streams/dlq?stream=notify.events.dlq`` (seed 004)."""
        self._require_admin(request)
        return Response.json(await self._streams_call(self.host.streams.dlq(_query(request).get("stream"))))

    async def _streams_requeue(self, request: Request) -> Response:
        """``POST /admin/streams/dlq/requeue {"dlqStream": "notify.events.dlq", "id": "..."}`` (seed 004)."""
        self._require_admin(request)
        body = request.json_object(required=True)
        self.event(logging.WARNING, "stream admin: requeue %s from %s", body.get("id"), body.get("dlqStream"))
        return Response.json(await self._streams_call(self.host.streams.requeue(body)))

    @staticmethod
    async def _streams_call(call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await call
        except LabInputError as exc:
            raise HttpError(400, str(exc)) from exc
        except (RedisError, OSError) as exc:
            raise HttpError(503, f"redis: {exc}") from exc

    def config_view(self) -> dict[str, Any]:
        return {"update_interval_ms": self.update_interval_ms,
                "update_interval_bounds_ms": list(UPDATE_INTERVAL_BOUNDS), "cpu_ratio": round(self.cpu_ratio, 4),
                "venue": self.venue_name, "venues": list(self.venues), "backoff": self.backoff,
                "venue_calls": self.venue_stats(), "market_data": self.host.feed.view(),
                "venue_key": (self.venues[VENUE_PRIMARY].credential[0][:6] + "...")
                if VENUE_PRIMARY in self.venues else None}

    # -- releases and the crash loop ----------------------------------------------------------------------------

    @property
    def _managed_release(self) -> bool:
        return self.release_link == self.dir / RELEASE_LINK

    def _load_release(self) -> None:
        """Read the release in use (at every start); the first start of a lab engine installs the good one."""
        if self._managed_release and not os.path.lexists(self.release_link):
            self._deploy(GOOD_RELEASE, None)
        try:
            self.release = json.loads((self.release_link / RELEASE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.release = {"version": "unknown"}
        if self.release.get("defect") == FAULT_CRASH_LOOP:
            self.faults.add(FAULT_CRASH_LOOP)
        else:
            self.faults.discard(FAULT_CRASH_LOOP)

    def _deploy(self, version: str, defect: str | None) -> None:
        """Install a release under <dir>/releases and point <dir>/current at it (atomically)."""
        target = self.dir / RELEASES_DIR / version
        target.mkdir(parents=True, exist_ok=True)
        release = {"version": version, "deployed_at": time.time()}
        if defect:
            release["defect"] = defect
        (target / RELEASE_FILE).write_text(json.dumps(release), encoding="utf-8")
        tmp = self.dir / f".{RELEASE_LINK}.tmp"
        if os.path.lexists(tmp):
            tmp.unlink()
        tmp.symlink_to(Path(RELEASES_DIR) / version)
        os.replace(tmp, self.release_link)

    def _previous_good_release(self) -> str:
        releases = []
        for path in (self.dir / RELEASES_DIR).glob(f"*/{RELEASE_FILE}"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not data.get("defect"):
                releases.append((float(data.get("deployed_at") or 0), str(data.get("version"))))
        return max(releases)[1] if releases else GOOD_RELEASE

    async def _crash_loop(self) -> None:
        """The bad release: dies during start-up, and its supervisor starts it again, until it is replaced."""
        await asyncio.sleep(CRASH_LOOP_UPTIME)
        async with self._lifecycle:
            self._crash_task = None
            self._stop()
            self._reserve = self._new_socket(self.port)
            self.event(logging.ERROR, "crashed during start-up (release %s: crash loop)", self.release.get("version"))
            if self.crash_loop_exit:
                os._exit(3)  # a container: its restart policy starts it again
        await asyncio.sleep(CRASH_LOOP_BACKOFF)
        async with self._lifecycle:
            if self._crash_task is None and self._server is None and FAULT_CRASH not in self.faults:
                await self._restart("started again by its supervisor after a crash")

    def started(self) -> None:
        """After (re)start: trade, or with a bad release, crash again soon (never trading meanwhile)."""
        if FAULT_CRASH_LOOP in self.faults:
            self._crash_task = asyncio.create_task(self._crash_loop(), name=f"crash-loop-{self.name}")
        else:
            self.start_trading()

    # -- the venue: a few resting orders at the lab exchange, replaced as the engine trades --------------------

    @property
    def venue(self) -> KrakenClient | None:
        return self.venues.get(self.venue_name)

    def reload_credential(self) -> None:
        """Take a new primary key from ``venue.env`` when the file changed (mtime or size)."""
        client = self.venues.get(VENUE_PRIMARY)
        try:
            st = os.stat(self.credential_path)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if client is None or stamp == self._credential_stamp:
            return
        self._credential_stamp = stamp
        try:
            values = read_secrets_env(self.credential_path) or {}
        except (OSError, LabError) as exc:
            self.event(logging.ERROR, "venue credential not re-read: %s", exc)
            return
        key, sep, secret = (values.get(VENUE_CREDENTIAL_VAR) or "").partition(":")
        if not (key and sep and secret):
            self.event(logging.ERROR, "venue credential: %s holds no %s=<key>:<secret>", self.credential_path,
                       VENUE_CREDENTIAL_VAR)
            return
        if (key, secret) != client.credential:
            client.credential = (key, secret)
            self.venue_calls.clear()  # the calls made with the old key say nothing about the new one
            self.event(logging.WARNING, "venue credential: now key %s...", key[:6])

    async def _venue_credential_check(self, request: Request) -> Response:
        """``GET /admin/venue/credential`` with ``X-Venue-Credential: <key>:<secret>``: 200 when it is the primary
        key this engine uses AND the exchange takes a signed read-only call with it (Balance); 409 when the
        engine uses another key; 401 when the exchange refuses it. rotate_secret's test of a rotated key.

        The credential offered is the authentication: only who holds the engine's own secret learns anything, so
        the test carries no other secret (an admin token in the test's headers would not be no_log)."""
        client = self.venues.get(VENUE_PRIMARY)
        if client is None:
            raise HttpError(404, "this engine trades on no exchange")
        self.reload_credential()
        offered = request.header("x-venue-credential") or ""
        if offered.partition(":")[::2] != client.credential:
            raise HttpError(409, "not the key this engine uses")
        try:
            balance = await asyncio.get_running_loop().run_in_executor(
                self.host.venue_pool, lambda: client.call("Balance"))
        except VenueError as exc:
            raise HttpError(401, f"the exchange refused a signed read-only call: {exc}") from exc
        return Response.json({"key": client.credential[0][:6] + "...", "balances": len(balance or {})})

    def venue_stats(self, window: float = VENUE_ERROR_WINDOW) -> dict[str, Any]:
        """The venue calls of the last ``window`` seconds: how many, and the share that failed, was rate limited
        (Kraken's EAPI:Rate limit exceeded) or found the exchange unavailable (HTTP 5xx, no answer)."""
        since = time.monotonic() - window
        recent = [outcome for at, outcome in self.venue_calls if at >= since]

        def share(*outcomes: str) -> float | None:
            return round(sum(1 for o in recent if o in outcomes) / len(recent), 4) if recent else None

        return {"calls": len(recent), "error_rate": share("refused", "rate_limited", "unavailable", "auth_failed"),
                "rate_limited": share("rate_limited"), "unavailable": share("unavailable"),
                "auth_failed": share("auth_failed")}

    @staticmethod
    def _outcome(exc: VenueError | None) -> str:
        text = str(exc or "")
        if exc is None or "Unknown order" in text:  # a cancel of an order filled meanwhile is an answer
            return "ok"
        if "Rate limit" in text:
            return "rate_limited"
        if "Invalid key" in text:
            return "auth_failed"
        if text.startswith(("HTTP 5", "network")):
            return "unavailable"
        return "refused"

    def _venue_maybe(self) -> None:
        if self.venue is None or self._venue_busy or self.paper:  # paper trading: nothing reaches the venue
            return
        self._venue_ticks += 1
        if self._venue_ticks % (self.host.venue_every * (BACKOFF_FACTOR if self.backoff else 1)):
            return
        self._venue_busy = True
        fut = asyncio.get_running_loop().run_in_executor(self.host.venue_pool, self._venue_step)
        fut.add_done_callback(self._venue_done)

    def _venue_done(self, fut: asyncio.Future[None]) -> None:
        self._venue_busy = False
        if not fut.cancelled() and fut.exception() is not None:
            self.venue_errors += 1

    def _venue_step(self) -> None:
        """Runs in the host's venue thread pool: cancel the oldest resting order when there are enough,
        then rest a new limit order 1-2.5 % away from the venue's price. While the engine trades, an order lives
        a few seconds and the price does not get there; an order left behind by a halt lives on, and fills
        within minutes (the price moves about 1.5 % a minute)."""
        self.reload_credential()
        venue = self.venue
        assert venue is not None
        if len(self.venue_orders) >= VENUE_RESTING:
            txid = self.venue_orders.popleft()
            try:
                venue.call("CancelOrder", {"txid": txid})
                self.venue_calls.append((time.monotonic(), "ok"))
            except VenueError as exc:
                self.venue_calls.append((time.monotonic(), self._outcome(exc)))
            if self.backoff:  # back-off: one call per step, the requests spread out (seed 000)
                return
        pair = self._rng.choice(VENUE_PAIRS)
        side = self._rng.choice(("buy", "sell"))
        pct = self._rng.uniform(1.0, 2.5)
        volume = self._rng.uniform(50, 500) / SYMBOLS[PAIRS[pair][6]]
        try:
            res = venue.call("AddOrder", {
                "pair": pair, "type": side, "ordertype": "limit", "volume": f"{volume:.8f}",
                "price": f"{'-' if side == 'buy' else '+'}{pct:.2f}%",
            })
        except VenueError as exc:
            self.venue_errors += 1
            self.venue_calls.append((time.monotonic(), self._outcome(exc)))
            if self.venue_errors in (1, 10, 100) or self.venue_errors % 1000 == 0:
                self.event(logging.WARNING, "venue: AddOrder refused (%s), %d refusals so far", exc, self.venue_errors)
            return
        self.venue_calls.append((time.monotonic(), "ok"))
        if venue is not self.venue:  # switched meanwhile: it rests at the venue it was placed on
            return
        self.venue_orders.append(res["txid"][0])
        self.venue_placed += 1

    def _make_order(self, t: float) -> OrderRow:
        symbol = self._rng.choice(list(SYMBOLS))
        price = self.prices[symbol] = round(self.prices[symbol] * (1 + self._rng.gauss(0, 0.0005)), 6)
        base = SYMBOLS[symbol]
        quantity = round(self._rng.uniform(0.01, 2.0) * (1 if base > 100 else 1000), 4)
        side = self._rng.choice(("buy", "sell"))
        self.pnl += self._rng.gauss(0, 10)
        self.signals_total += 1
        self.peak_equity = max(self.peak_equity, CAPITAL + self.pnl)
        return (self.name, symbol, side, quantity, price, t, self.venue_name)

    # -- sockets and faults --------------------------------------------------------------------------------

    def _new_socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.bind_host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def _listen(self, sock: socket.socket) -> None:
        self._server = await asyncio.start_server(self._on_connection, sock=sock, backlog=256)

    async def bind(self) -> None:
        """Take a port from the OS; serve on it unless the engine starts crashed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._load_release()
        sock = self._new_socket(self._want_port)
        self.port = int(sock.getsockname()[1])
        faults = ",".join(f for f in FAULTS if f in self.faults) or "none"
        if self.crashed:
            self._reserve = sock
            self.event(logging.WARNING, "starting crashed: port %d refuses connections (faults %s)", self.port, faults)
        else:
            await self._listen(sock)
            self.started_at = time.time()
            # Only in the engine's own log: 200 of these would drown the shared one.
            self.elog.write(
                logging.INFO,
                f"started on {self.bind_host}:{self.port} (halt methods {','.join(self.methods)}; faults {faults})",
            )

    def _stop(self) -> list[asyncio.Task[Any]]:
        """Stop like a dying process: trading loop, listening socket, open connections.

        Returns the tasks being cancelled (the caller may wait for them)."""
        tasks: list[asyncio.Task[Any]] = []
        if self._crash_task is not None and self._crash_task is not asyncio.current_task():
            self._crash_task.cancel()
        self._crash_task = None
        if self._task is not None:
            self._task.cancel()
            tasks.append(self._task)
            self._task = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conn_tasks):
            task.cancel()
            tasks.append(task)
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None
        return tasks

    def _crash(self) -> None:
        self._stop()
        self._reserve = self._new_socket(self.port)
        self.event(logging.WARNING, "crashed (port %d refuses connections)", self.port)

    async def restart(self, why: str = "restart requested") -> None:
        """Restart the engine like a process restart (see the module docstring); raises LabError if it
        cannot listen on its port again (it is then left crashed)."""
        async with self._lifecycle:
            await self._restart(why)

    async def _restart(self, why: str) -> None:
        tasks = self._stop()
        fixed = [f for f in FAULTS_FIXED_BY_RESTART if f in self.faults]
        self.faults.difference_update(FAULTS_FIXED_BY_RESTART)
        self._unhung.set()
        # In-memory state dies with the process: an API halt does not survive a restart.
        self.internal_halts.clear()
        self.halted_at = None
        self.halt_source = None
        self.window.clear()
        self._blind = False
        self._free_leak()  # the leak dies with the process
        self._cpu_at = None
        self._load_release()
        try:
            try:
                sock = self._new_socket(self.port)  # at once: nobody else gets the port meanwhile
            except OSError:
                sock = None
            if tasks:
                await asyncio.wait(tasks, timeout=RESTART_DRAIN_TIMEOUT)
            if sock is None:  # an old connection still held the port: try again now that they are gone
                sock = self._new_socket(self.port)
            try:
                await self._listen(sock)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            self.faults.add(FAULT_CRASH)
            self.event(logging.ERROR, "restart failed: cannot listen on port %d: %s", self.port, exc)
            raise LabError(f"{self.name}: cannot restart on port {self.port}: {exc}") from exc
        self.restarts += 1
        self.started_at = time.time()
        self.started()
        remaining = ",".join(f for f in FAULTS if f in self.faults) or "none"
        self.event(
            logging.WARNING,
            "restarted on port %d (%s; restart #%d; fixed faults: %s; faults still active: %s)",
            self.port,
            why,
            self.restarts,
            ",".join(fixed) or "none",
            remaining,
        )

    async def set_fault(self, fault: str, active: bool) -> None:
        async with self._lifecycle:
            if active == (fault in self.faults):
                return
            if fault == FAULT_CRASH_LOOP:
                if not self._managed_release:
                    raise LabError(f"{self.name}: its release is {self.release_link}, not a link the lab manages")
                version = BAD_RELEASE if active else self._previous_good_release()
                self._deploy(version, FAULT_CRASH_LOOP if active else None)
                self.event(logging.WARNING, "release %s deployed", version)
                await self._restart(f"release {version} deployed")
            elif active:
                self.faults.add(fault)
                if fault == FAULT_CRASH:
                    self._crash()
                elif fault == FAULT_HANG:
                    self._unhung.clear()
            elif fault == FAULT_CRASH:
                await self._restart("crash fault cleared")  # clearing a crash restarts the engine
            else:
                self.faults.discard(fault)
                if fault == FAULT_HANG:
                    self._unhung.set()
                elif fault == FAULT_MEMORY_LEAK:
                    self._free_leak()
            self.event(logging.WARNING, "fault %s %s", fault, "injected" if active else "cleared")

    async def close(self) -> None:
        self._stop()

    def snapshot(self, redis_values: Mapping[str, Any] | None) -> dict[str, Any]:
        state = self.evaluate(redis_values)
        return {
            "name": self.name,
            "port": self.port,
            "methods": list(self.methods),
            "faults": [f for f in FAULTS if f in self.faults],
            "listening": self._server is not None,
            "trading_active": not self.crashed and FAULT_CRASH_LOOP not in self.faults and not state.halted
            and state.redis_ok is not False,
            "halted": state.halted,
            "halt_source": state.source,
            "halt_reason": state.reason,
            "halted_at": self.halted_at,
            "orders_total": self.orders_total,
            "orders_written": self.host.writer.written(self.name),
            "errors_total": self.errors_total,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "auth": {"success": self.auth_success, "failures": self.auth_failures},
            "firewall": self.firewall.describe(),
            "venue": {"placed": self.venue_placed, "refused": self.venue_errors, "name": self.venue_name,
                      "backoff": self.backoff, **self.venue_stats()} if self.venue else None,
            "model": self.model_view(),
            "release": self.release.get("version"),
            "memory_bytes": self.rss_bytes,
            "config": self.config_view(),
        }

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            await serve_connection(reader, writer, self.handle)
        finally:
            self._conn_tasks.discard(task)

    async def handle(self, request: Request) -> Response:
        """Apply the hang/latency faults, route, and record latency and request counters."""
        started = time.perf_counter()
        if not self.firewall.admits(request):  # in front of the engine: before faults and routes
            self.firewall.blocked += 1
            self.requests[403] += 1
            response = Response.json({"error": "blocked by the lab firewall"}, 403, close=True)
            self.latency.observe(time.perf_counter() - started)
            return response
        while FAULT_HANG in self.faults:
            await self._unhung.wait()
        try:
            handlers = self._routes.get(request.path)
            if handlers is None:
                raise HttpError(404, "not found")
            handler = handlers.get(request.method)
            if handler is None:
                raise HttpError(405, "method not allowed", {"Allow": ", ".join(handlers)})
            response = await handler(request)
        except HttpError as exc:
            response = Response.error(exc.status, exc.message, exc.headers)
        except Exception as exc:
            log.exception("%s: error serving %s %s", self.name, request.method, request.path)
            self.elog.write(logging.ERROR, f"error serving {request.method} {request.path}: {exc!r}")
            response = Response.error(500, "internal error")
        if self.faults.intersection(LATENCY_FAULTS):
            await asyncio.sleep(LATENCY_DELAY)
        self.latency.observe(time.perf_counter() - started)
        self.requests[response.status] += 1
        return response

    def _require_admin(self, request: Request) -> None:
        """401 unless X-Admin-Token is one of the tokens currently in the secrets file."""
        if not self.host.tokens.accepts(request.header("x-admin-token") or ""):
            self.auth_failures += 1
            raise HttpError(401, "unauthorized")
        self.auth_success += 1

    def _halt_via_api(self, method: str, reason: str) -> None:
        if FAULT_KILLSWITCH_BROKEN in self.faults:
            self.event(logging.WARNING, "%s halt failed (fault killswitch-broken)", method)
            raise HttpError(500, "internal error: halt failed")
        if FAULT_KILLSWITCH_LIES in self.faults:
            self.event(logging.WARNING, "%s halt acknowledged but ignored (fault killswitch-lies)", method)
            return
        self.internal_halts[method] = reason
        self.event(logging.WARNING, "halt requested via %s: %s", method, reason)

    async def _known_state(self) -> HaltState:
        state = await self.effective_state()
        if state.redis_ok is False and not state.halted:
            raise HttpError(503, "halt state unknown: redis unreachable")
        return state

    async def _health(self, request: Request) -> Response:
        return Response.json({"status": "ok", "engine": self.name})

    @property
    def drawdown(self) -> float:
        return max(0.0, (self.peak_equity - (CAPITAL + self.pnl)) / self.peak_equity)

    def disk_free_bytes(self) -> int:
        try:
            st = os.statvfs(self.dir)
        except OSError:
            return 0
        return int(st.f_bavail * st.f_frsize)

    @property
    def disk_pressure(self) -> bool:
        return FAULT_DISK_PRESSURE in self.faults

    async def _health_detailed(self, request: Request) -> Response:
        state = await self.effective_state()
        error_rate = self.window.rate(time.time())
        db_ok = self.host.writer.healthy
        # a system error is a broken engine until its cause is fixed (the fault cleared)
        engine_ok = not self.faults.intersection((FAULT_UNRECOVERABLE, FAULT_SELF_HALT_ERROR, FAULT_CRASH_LOOP))
        # a failing dependency shows in the health check whether or not the engine trades (a halted engine
        # attempts no order, so its error rate cannot show it)
        feed_ok = FAULT_DEPENDENCY_ERRORS not in self.faults
        go = (
            db_ok
            and state.redis_ok is not False
            and error_rate <= NO_GO_ERROR_RATE
            and not self.disk_pressure
            and engine_ok
            and feed_ok
        )
        redis_component = "n/a" if state.redis_ok is None else ("ok" if state.redis_ok else "error")
        return Response.json(
            {
                "engine": self.name,
                "trading_status": "GO" if go else "NO-GO",
                "trading_active": not state.halted and state.redis_ok is not False,
                "halted": state.halted,
                "halt_source": state.source,
                "components": {
                    "database": "ok" if db_ok else "error",
                    "redis": redis_component,
                    "disk": "error" if self.disk_pressure else "ok",
                    "engine": "ok" if engine_ok else "error",
                    "pricing_feed": "ok" if feed_ok else "error",
                },
                "error_rate": round(error_rate, 4),
                "orders_total": self.orders_total,
                "restarts": self.restarts,
                "started_at": self.started_at,
                "release": self.release.get("version"),
                "memory_bytes": self.rss_bytes,
                "update_interval_ms": self.update_interval_ms,
            }
        )

    async def _metrics(self, request: Request) -> Response:
        state = await self.effective_state()
        eng = {"engine": self.name}
        model = self.model_view()
        lines = [
            "# HELP orders_total Orders created by the trading engine.",
            "# TYPE orders_total counter",
            f"orders_total{metrics.labels(**eng)} {self.orders_total}",
            "# HELP errors_total Failed order attempts.",
            "# TYPE errors_total counter",
            f"errors_total{metrics.labels(**eng)} {self.errors_total}",
            "# HELP http_requests_total HTTP requests served, by status code.",
            "# TYPE http_requests_total counter",
        ]
        lines += [
            f"http_requests_total{metrics.labels(**eng, code=str(code))} {n}"
            for code, n in sorted(self.requests.items())
        ]
        lines += [
            "# HELP request_latency_seconds HTTP request latency.",
            "# TYPE request_latency_seconds histogram",
            *self.latency.render("request_latency_seconds", **eng),
            "# HELP trading_system_halted 1 if a halt source the engine honours is active.",
            "# TYPE trading_system_halted gauge",
            f"trading_system_halted{metrics.labels(**eng)} {int(state.halted)}",
            f"# HELP error_rate_ratio Failed share of the order attempts of the last {ERROR_WINDOW:g} s.",
            "# TYPE error_rate_ratio gauge",
            f"error_rate_ratio{metrics.labels(**eng)} {metrics.fmt(round(self.window.rate(time.time()), 4))}",
            "# HELP disk_pressure 1 if the engine's disk is full (the disk-pressure fault).",
            "# TYPE disk_pressure gauge",
            f"disk_pressure{metrics.labels(**eng)} {int(self.disk_pressure)}",
            "# HELP engine_restarts_total Restarts of the engine since the lab started.",
            "# TYPE engine_restarts_total counter",
            f"engine_restarts_total{metrics.labels(**eng)} {self.restarts}",
            "# HELP auth_success_total Admin calls with an accepted X-Admin-Token.",
            "# TYPE auth_success_total counter",
            f"auth_success_total{metrics.labels(**eng)} {self.auth_success}",
            "# HELP auth_failures_total Admin calls refused with 401 (no, wrong or revoked X-Admin-Token).",
            "# TYPE auth_failures_total counter",
            f"auth_failures_total{metrics.labels(**eng)} {self.auth_failures}",
            "# HELP model_accuracy Accuracy of the model in use over its recent predictions.",
            "# TYPE model_accuracy gauge",
            f"model_accuracy{metrics.labels(**eng)} {model['accuracy']}",
            "# HELP model_drift 1 if the drift detector flags the model in use.",
            "# TYPE model_drift gauge",
            f"model_drift{metrics.labels(**eng)} {int(model['drift'])}",
            "# HELP paper_trading 1 if the engine trades on paper (no order reaches the venue).",
            "# TYPE paper_trading gauge",
            f"paper_trading{metrics.labels(**eng)} {int(model['paper'])}",
            "# HELP firewall_enabled 1 if the engine's lab firewall is enabled.",
            "# TYPE firewall_enabled gauge",
            f"firewall_enabled{metrics.labels(**eng)} {int(self.firewall.enabled)}",
            "# HELP firewall_blocked_total Requests refused (403) by the engine's lab firewall.",
            "# TYPE firewall_blocked_total counter",
            f"firewall_blocked_total{metrics.labels(**eng)} {self.firewall.blocked}",
            "# HELP process_resident_memory_bytes Resident memory of the engine.",
            "# TYPE process_resident_memory_bytes gauge",
            f"process_resident_memory_bytes{metrics.labels(**eng)} {self.rss_bytes}",
            "# HELP process_cpu_seconds_total CPU time the engine used.",
            "# TYPE process_cpu_seconds_total counter",
            f"process_cpu_seconds_total{metrics.labels(**eng)} {metrics.fmt(round(self.cpu_seconds, 4))}",
            "# HELP engine_update_interval_seconds Market-data update interval (the config API sets it).",
            "# TYPE engine_update_interval_seconds gauge",
            f"engine_update_interval_seconds{metrics.labels(**eng)} {metrics.fmt(self.update_interval_ms / 1000.0)}",
            "# HELP engine_release_info The release the engine runs.",
            "# TYPE engine_release_info gauge",
            f"engine_release_info{metrics.labels(**eng, version=str(self.release.get('version')))} 1",
            "# HELP process_memory_limit_bytes The engine's memory budget (its container's limit).",
            "# TYPE process_memory_limit_bytes gauge",
            f"process_memory_limit_bytes{metrics.labels(**eng)} {MEMORY_LIMIT_BYTES}",
            "# HELP trading_signals_total Trading signals the strategy produced (each one an order attempt).",
            "# TYPE trading_signals_total counter",
            f"trading_signals_total{metrics.labels(**eng)} {self.signals_total}",
            "# HELP trading_drawdown_ratio Drop of capital + P&L from its peak, as a share of the peak.",
            "# TYPE trading_drawdown_ratio gauge",
            f"trading_drawdown_ratio{metrics.labels(**eng)} {metrics.fmt(round(self.drawdown, 6))}",
            "# HELP trading_halted_self 1 if the engine halted itself (daily P&L bounds, seed 004).",
            "# TYPE trading_halted_self gauge",
            f"trading_halted_self{metrics.labels(**eng)} {int(self.self_halt is not None)}",
            "# HELP engine_disk_free_bytes Free bytes on the engine's filesystem.",
            "# TYPE engine_disk_free_bytes gauge",
            f"engine_disk_free_bytes{metrics.labels(**eng)} {self.disk_free_bytes()}",
        ]
        return Response.text("\n".join(lines) + "\n", content_type=metrics.CONTENT_TYPE)

    async def _trading_status(self, request: Request) -> Response:
        state = await self._known_state()
        return Response.json(
            {"trading_active": not state.halted, "mode": "emergency_stopped" if state.halted else "trading"}
        )

    async def _pnl_status(self, request: Request) -> Response:
        self._require_admin(request)
        state = await self._known_state()
        return Response.json({"halted": state.halted, "haltReason": state.reason, "pnl": round(self.pnl, 2),
                              "dailyTarget": DAILY_TARGET, "dailyLossLimit": DAILY_LOSS_LIMIT,
                              "riskRejections": list(self.risk_rejections)})

    # -- the model (seed 000 "ML Model Performance Degradation", seed 001 model rollback) ----------------------

    def model_view(self) -> dict[str, Any]:
        drifted = FAULT_MODEL_DRIFT in self.faults and (self.model, self.model_version) == (MODEL_PRIMARY, "v3")
        accuracy = DRIFTED_ACCURACY if drifted else MODEL_ACCURACY[(self.model, self.model_version)]
        return {"model": self.model, "version": self.model_version, "accuracy": accuracy, "drift": drifted,
                "paper": self.paper, "backup": MODEL_BACKUP,
                "previous_version": MODEL_VERSIONS[0] if self.model_version == MODEL_VERSIONS[-1] else None}

    async def _model_status(self, request: Request) -> Response:
        self._require_admin(request)
        return Response.json(self.model_view())

    async def _model_switch(self, request: Request) -> Response:
        self._require_admin(request)
        target = request.json_object().get("model")
        if target not in (MODEL_PRIMARY, MODEL_BACKUP):
            raise HttpError(400, f"'model' must be {MODEL_PRIMARY!r} or {MODEL_BACKUP!r}")
        if target != self.model:
            self.model = target
            self.model_version = "b1" if target == MODEL_BACKUP else MODEL_VERSIONS[-1]
            self.event(logging.WARNING, "model switched to %s %s", self.model, self.model_version)
        return Response.json(self.model_view())

    async def _model_rollback(self, request: Request) -> Response:
        self._require_admin(request)
        if self.model != MODEL_PRIMARY:
            raise HttpError(409, "rollback applies to the primary model; switch back to it first")
        if self.model_version != MODEL_VERSIONS[0]:
            self.model_version = MODEL_VERSIONS[0]
            self.event(logging.WARNING, "model rolled back to %s %s", self.model, self.model_version)
        return Response.json(self.model_view())

    async def _model_paper(self, request: Request) -> Response:
        self._require_admin(request)
        enabled = request.json_object().get("enabled")
        if not isinstance(enabled, bool):
            raise HttpError(400, "'enabled' must be true or false")
        if enabled != self.paper:
            self.paper = enabled
            self.event(logging.WARNING, "paper trading %s", "on: no order reaches the venue" if enabled else "off")
        return Response.json(self.model_view())

    async def _kill_switch(self, request: Request) -> Response:
        self._require_admin(request)
        body = request.json_object()
        reason, user_id = body.get("reason"), body.get("user_id")
        if not _present(reason) or not _present(user_id):
            raise HttpError(400, "'reason' and 'user_id' are required")
        self._halt_via_api(KILLSWITCH_API, f"{reason} (user {user_id})")
        return Response.json({"status": "ok", "trading_active": False, "mode": "emergency_stopped"})

    async def _resume(self, request: Request) -> Response:
        self._require_admin(request)
        if self.internal_halts.pop(KILLSWITCH_API, None) is not None:
            self.event(logging.WARNING, "kill switch released")
        state = await self.effective_state()
        return Response.json(
            {
                "status": "ok",
                "trading_active": not state.halted,
                "mode": "emergency_stopped" if state.halted else "trading",
            }
        )

    async def _orchestrate_halt(self, request: Request) -> Response:
        self._require_admin(request)
        body = request.json_object()
        reason = str(body.get("reason") or "orchestrate halt")
        self._halt_via_api(ORCHESTRATE_API, reason)
        return Response.json({"status": "ok", "halted": True, "haltReason": reason})

    async def _orchestrate_unhalt(self, request: Request) -> Response:
        self._require_admin(request)
        if self.internal_halts.pop(ORCHESTRATE_API, None) is not None:
            self.event(logging.WARNING, "orchestrate halt released")
        if self.self_halt is not None:
            self.event(logging.WARNING, "self-halt released (%s)", self.self_halt)
            self.self_halt = None
        state = await self.effective_state()
        return Response.json({"status": "ok", "halted": state.halted, "haltReason": state.reason})


def _present(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, int) and not isinstance(value, bool)


class EngineHost:
    """The process: the engines, the order writer, the redis client and the control API."""

    def __init__(self, lab_dir: Path, config: Mapping[str, Any]) -> None:
        self.lab_dir = lab_dir
        self.admin_token: str = config["admin_token"]  # as at start; the secrets file rules afterwards
        self.control_token: str = config.get("control_token") or self.admin_token
        self.tokens = AdminTokens(Path(config.get("secrets_file") or lab_dir / SECRETS_FILE), self.admin_token)
        self.leaked: LeakedClient | None = None
        self.order_interval = float(config.get("order_interval", 0.2))
        self.exchange: Mapping[str, Any] | None = config.get("exchange")
        self.exchange_backup: Mapping[str, Any] | None = config.get("exchange_backup")
        # about 20 venue steps a second over the whole fleet, at most one a second per engine
        self.venue_every = max(int(round(1.0 / self.order_interval)), -(-len(config["engines"]) // 4), 1)
        self.venue_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="venue")
        # the orders go through the lab's pooler (pgbouncer) when it has one, as an application's would
        self.writer = OrderWriter(pooled(config["postgres"], config.get("pgbouncer")))
        self.db_faults = SessionFaults(config["postgres"])  # the long-query and blocking-lock sessions
        rc = config["redis"]
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool(
                host=rc["host"],
                port=int(rc["port"]),
                db=int(rc.get("db", 0)),
                password=rc["password"],
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                max_connections=32,
                timeout=REDIS_TIMEOUT,
            )
        )
        self.streams = StreamsApp(rc)  # seed 004's notification manager and orchestrator commands
        self.feed = MarketFeed((self.exchange or {}).get("ws_url"))  # the primary exchange's market data
        self.engines = [Engine(spec, self) for spec in config["engines"]]
        self.by_name = {e.name: e for e in self.engines}
        self.control_port = 0
        self._control: asyncio.Server | None = None
        self._redis_healthy = True
        self.ballast_bytes = int(config.get("ballast_bytes", BALLAST_BYTES))
        self._ballast = False  # whether the disk-pressure ballast is (believed to be) on disk
        self._ballast_lock = asyncio.Lock()
        self._load_firewall()

    @property
    def firewall_path(self) -> Path:
        return self.lab_dir / FIREWALL_FILE

    def _load_firewall(self) -> None:
        try:
            saved = read_json(self.firewall_path) or {}
        except LabError as exc:
            log.error("firewall settings not loaded: %s", exc)
            return
        for name, fw in saved.items():
            engine = self.by_name.get(name)
            if engine is not None and isinstance(fw, dict):
                allow = [a for a in fw.get("allow") or [] if isinstance(a, str)]
                engine.firewall.enabled = bool(fw.get("enabled"))
                engine.firewall.allow = tuple(dict.fromkeys([SOURCE_MANAGEMENT, *allow]))

    def _save_firewall(self) -> None:
        data = {
            e.name: {"enabled": e.firewall.enabled, "allow": list(e.firewall.allow)}
            for e in self.engines
            if e.firewall.enabled or e.firewall.allow != (SOURCE_MANAGEMENT,)
        }
        write_json_atomic(self.firewall_path, data)

    def redis_failed(self, exc: BaseException) -> None:
        if self._redis_healthy:
            log.error("redis unreachable: %s", exc)
        self._redis_healthy = False

    def redis_recovered(self) -> None:
        if not self._redis_healthy:
            log.info("redis reachable again")
        self._redis_healthy = True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.tokens.reload, "SIGHUP")
        if not self.tokens.reload("start"):
            log.warning("admin tokens: using the start token from the engines config")
        await asyncio.to_thread(self.writer.check)
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise LabError(f"redis unreachable: {exc}") from exc
        self.writer.start()
        try:
            await self.streams.start()
            self.feed.start()
            for engine in self.engines:
                await engine.bind()
            await self.sync_ballast()
            self._control = await asyncio.start_server(self._on_control, host=LOOPBACK, port=0)
            self.control_port = int(self._control.sockets[0].getsockname()[1])
            write_json_atomic(
                self.lab_dir / ENGINES_RUNTIME_FILE,
                {
                    "pid": os.getpid(),
                    "control": {"host": LOOPBACK, "port": self.control_port},
                    "engines": {e.name: e.port for e in self.engines},
                },
            )
            for engine in self.engines:
                if not engine.crashed:
                    engine.started()
            log.info(
                "serving %d engines (order interval %.3fs), control API on %s:%d",
                len(self.engines),
                self.order_interval,
                LOOPBACK,
                self.control_port,
            )
            await stop.wait()
            log.info("stopping")
        finally:
            await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        if self.leaked is not None:
            await self.leaked.stop()
            self.leaked = None
        for engine in self.engines:
            await engine.close()
        if self._control is not None:
            self._control.close()
        await self.streams.close()
        await self.feed.close()
        await asyncio.to_thread(self.db_faults.close)
        try:
            remove_ballast(self.lab_dir)
        except OSError as exc:
            log.error("cannot remove the disk-pressure ballast: %s", exc)
        await asyncio.to_thread(self.writer.stop, 10.0)
        self.venue_pool.shutdown(wait=False, cancel_futures=True)
        try:
            # redis-py >= 5 has aclose(); the 4.x of Debian bookworm (the drill images) only close()
            await getattr(self.redis, "aclose", self.redis.close)()
        except (RedisError, OSError):
            pass
        (self.lab_dir / ENGINES_RUNTIME_FILE).unlink(missing_ok=True)

    async def snapshot(self, engines: list[Engine] | None = None) -> list[dict[str, Any]]:
        """The state of ``engines`` (default: all), with one redis MGET for all of them."""
        engines = self.engines if engines is None else engines
        keys = sorted({k for e in engines for k in e.redis_keys})
        values: dict[str, Any] | None = {}
        if keys:
            try:
                values = dict(zip(keys, await self.redis.mget(keys), strict=True))
            except (RedisError, OSError) as exc:
                self.redis_failed(exc)
                values = None
        return [e.snapshot(values) for e in engines]

    async def sync_ballast(self) -> None:
        """Put the disk-pressure ballast on disk while any engine has the fault, remove it once none has."""
        async with self._ballast_lock:
            want = any(e.disk_pressure for e in self.engines)
            if want and not self._ballast:
                started = time.monotonic()
                path = await asyncio.to_thread(write_ballast, self.lab_dir, self.ballast_bytes)
                self._ballast = True
                log.warning(
                    "disk pressure: wrote %d MiB of ballast to %s in %.2fs",
                    self.ballast_bytes // (1024 * 1024),
                    path,
                    time.monotonic() - started,
                )
            elif not want and self._ballast:
                await asyncio.to_thread(remove_ballast, self.lab_dir)
                self._ballast = False
                log.warning("disk pressure cleared: ballast removed")

    # -- control API ---------------------------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, self._control_handle)

    async def _control_handle(self, request: Request) -> Response:
        try:
            token = request.header("x-lab-token") or ""
            if not hmac.compare_digest(token.encode("utf-8"), self.control_token.encode("utf-8")):
                raise HttpError(401, "unauthorized")
            route = (request.method, request.path)
            if route == ("GET", "/lab/engines"):
                return Response.json({"engines": await self.snapshot()})
            if route == ("POST", "/lab/faults"):
                return Response.json(await self._faults(request.json_object(required=True)))
            if route == ("POST", "/lab/engines/restart"):
                return Response.json(await self._restart(request.json_object(required=True)))
            if route == ("GET", "/lab/health"):
                return Response.json(
                    {
                        "status": "ok",
                        "engines": len(self.engines),
                        "database": self.writer.healthy,
                        "database_ok_at": self.writer.last_ok_at,
                    }
                )
            if route == ("GET", "/lab/db-faults"):
                return Response.json({"faults": await asyncio.to_thread(self.db_faults.status)})
            if route == ("POST", "/lab/db-faults"):
                return Response.json(await self._db_fault(request.json_object(required=True)))
            if route == ("GET", "/lab/secrets"):
                return Response.json(self.tokens.describe())
            if route == ("POST", "/lab/secrets/reload"):
                loaded = self.tokens.reload("control API")
                return Response.json({"reloaded": loaded, **self.tokens.describe()})
            if route == ("GET", "/lab/firewall"):
                return Response.json(self._firewall_view(self.engines))
            if route == ("POST", "/lab/firewall"):
                return Response.json(await self._firewall(request.json_object(required=True)))
            if route == ("GET", "/lab/leaked"):
                return Response.json({"leaked": self.leaked.view() if self.leaked is not None else None})
            if route == ("GET", "/lab/streams"):
                return Response.json(self.streams.ledger())
            if route == ("POST", "/lab/streams"):
                return Response.json(await self.streams.fault(request.json_object(required=True)))
            if route == ("POST", "/lab/streams/producers"):
                return Response.json(self.streams.pause(request.json_object(required=True).get("paused")))
            if route == ("POST", "/lab/streams/scale"):
                body = request.json_object(required=True)
                return Response.json(await self.streams.scale(body.get("stream"), body.get("count"),
                                                              body.get("replace") or []))
            if route == ("POST", "/lab/leaked"):
                return Response.json(await self._leak(request.json_object(required=True)))
            raise HttpError(404, "not found")
        except HttpError as exc:
            return Response.error(exc.status, exc.message, exc.headers)
        except LabInputError as exc:
            return Response.error(400, str(exc))
        except LabError as exc:
            return Response.error(500, str(exc))
        except Exception:
            log.exception("control API: error serving %s %s", request.method, request.path)
            return Response.error(500, "internal error")

    async def _faults(self, body: Mapping[str, Any]) -> dict[str, Any]:
        fault, clear, names = body.get("fault"), body.get("clear", False), body.get("engines")
        if not isinstance(clear, bool):
            raise HttpError(400, "'clear' must be a boolean")
        if not (fault in FAULTS or (fault == ALL and clear)):
            raise HttpError(400, f"unknown fault {fault!r}; known: {', '.join(FAULTS)} ('*' to clear all)")
        targets = self._targets(names)
        try:
            for engine in targets:
                for f in list(engine.faults) if fault == ALL else [fault]:
                    await engine.set_fault(f, not clear)
        finally:
            await self.sync_ballast()
        return {
            "fault": fault,
            "clear": clear,
            "engines": [{"name": e.name, "faults": [f for f in FAULTS if f in e.faults]} for e in targets],
        }

    async def _db_fault(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Inject or clear a session fault (long-query, blocking-lock): ``{"fault", "clear", "seconds"}``."""
        fault, clear, seconds = body.get("fault"), body.get("clear", False), body.get("seconds")
        if not isinstance(clear, bool):
            raise HttpError(400, "'clear' must be a boolean")
        if fault not in SESSION_FAULTS:
            raise HttpError(400, f"unknown session fault {fault!r}; known: {', '.join(SESSION_FAULTS)}")
        if clear:
            return await asyncio.to_thread(self.db_faults.clear, fault)
        return await asyncio.to_thread(self.db_faults.inject, fault, seconds)

    def _targets(self, names: Any) -> list[Engine]:
        """The engines named by a control request's ``engines`` (names, or ``["*"]``); 400 otherwise."""
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise HttpError(400, "'engines' must be a non-empty list of engine names or ['*']")
        unknown = [n for n in names if n != ALL and n not in self.by_name]
        if unknown:
            raise HttpError(400, f"unknown engine(s): {', '.join(unknown)}")
        return self.engines if ALL in names else [self.by_name[n] for n in dict.fromkeys(names)]

    async def _firewall(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``{"engines": [...]|["*"], "enabled": bool, "allow": [names]}`` (allow optional: kept as is)."""
        targets = self._targets(body.get("engines"))
        enabled, allow = body.get("enabled"), body.get("allow")
        if not isinstance(enabled, bool):
            raise HttpError(400, "'enabled' must be a boolean")
        if allow is not None:
            if isinstance(allow, str):
                allow = [allow]
            if not isinstance(allow, list) or not all(isinstance(a, str) and FIREWALL_NAME.match(a) for a in allow):
                raise HttpError(400, "'allow' must be a list of source names ([A-Za-z0-9_.-], up to 64 characters)")
        for engine in targets:
            fw = engine.firewall
            if allow is not None:
                fw.allow = tuple(dict.fromkeys([SOURCE_MANAGEMENT, *(a.lower() for a in allow)]))
            if fw.enabled != enabled:
                fw.enabled = enabled
                engine.event(
                    logging.WARNING,
                    "firewall %s (allow: %s)",
                    "enabled" if enabled else "disabled",
                    ",".join(fw.allow),
                )
        await asyncio.to_thread(self._save_firewall)
        return self._firewall_view(targets)

    @staticmethod
    def _firewall_view(engines: list[Engine]) -> dict[str, Any]:
        return {"engines": [{"name": e.name, "firewall": e.firewall.describe()} for e in engines]}

    async def _leak(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start (``{"engines": [...]}``, default all) or stop (``{"clear": true}``) the leaked-secret client."""
        clear = body.get("clear", False)
        if not isinstance(clear, bool):
            raise HttpError(400, "'clear' must be a boolean")
        if clear:
            if self.leaked is None:
                return {"leaked": None, "cleared": False}
            view = await self.leaked.stop()
            self.leaked = None
            return {"leaked": view, "cleared": True}
        if self.leaked is not None:
            return {"leaked": self.leaked.view(), "already": True}
        targets = self._targets(body.get("engines", [ALL]))
        self.tokens.maybe_reload()
        values = read_secrets_env(self.tokens.path) or {}
        token = values.get(SECRET_CURRENT) or self.admin_token
        self.leaked = LeakedClient(self, targets, token)
        self.leaked.start()
        return {"leaked": self.leaked.view(), "already": False}

    async def _restart(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Restart the named engines, concurrently; answers their state afterwards."""
        targets = self._targets(body.get("engines"))
        results = await asyncio.gather(*(e.restart() for e in targets), return_exceptions=True)
        failed = [str(r) for r in results if isinstance(r, BaseException)]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, LabError):
                raise r
        if failed:
            raise LabError("; ".join(failed))
        return {"engines": await self.snapshot(targets)}


def _raise_fd_limit() -> None:
    """One socket per engine plus connections: lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tradeops.lab.engines", description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", required=True, help="the lab dir holding engines-config.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    lab_dir = Path(args.lab_dir).resolve()
    _raise_fd_limit()
    try:
        config = read_json(lab_dir / ENGINES_CONFIG_FILE)
        if config is None:
            raise LabError(f"{lab_dir / ENGINES_CONFIG_FILE} not found")
        return asyncio.run(EngineHost(lab_dir, config).run())
    except LabError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
