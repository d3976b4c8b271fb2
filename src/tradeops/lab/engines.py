"""The engine host: N simulated trading engines served by one asyncio process.

Run by the lab manager as ``python -m tradeops.lab.engines --lab-dir DIR``. It reads
``<lab_dir>/engines-config.json`` (written by the manager), binds one loopback socket per engine plus
the control API, writes ``<lab_dir>/engines-runtime.json`` with the ports, and trades until SIGTERM.

The halt proof: on every tick an engine takes ``t = time.time()`` *first*, then evaluates every halt
source it honours (internal API flag, flag file, one redis MGET), and only if none is active writes an
order with ``created_at = t``. Hence no order ever carries a timestamp later than the moment a halt
source became visible, and "no order with created_at > T" in PostgreSQL proves the engine was halted at T.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import logging
import os
import queue
import random
import resource
import signal
import socket
import sys
import threading
import time
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
from .errors import LabError
from .postgres import dsn as pg_dsn
from .state import (
    ALL,
    EMERGENCY_STOP_FILE,
    ENGINES_CONFIG_FILE,
    ENGINES_RUNTIME_FILE,
    FAULT_CRASH,
    FAULT_ERROR_RATE,
    FAULT_HANG,
    FAULT_KILLSWITCH_BROKEN,
    FAULT_KILLSWITCH_LIES,
    FAULT_LATENCY,
    FAULTS,
    FILE,
    GLOBAL_HALT_KEY,
    KILLSWITCH_API,
    LOOPBACK,
    ORCHESTRATE_API,
    REDIS,
    read_json,
    write_json_atomic,
)
from .web import HttpError, Request, Response, serve_connection

log = logging.getLogger("tradeops.lab.engines")

ERROR_RATE = 0.20  # share of order attempts failing under the error-rate fault
NO_GO_ERROR_RATE = 0.05  # /health/detailed says NO-GO above this error rate (last 60 s)
LATENCY_DELAY = 1.5  # seconds added to every response under the latency fault
REDIS_TIMEOUT = 2.0
SYMBOLS: dict[str, float] = {
    "BTC-USD": 65000.0,
    "ETH-USD": 3400.0,
    "SOL-USD": 150.0,
    "AAPL": 190.0,
    "MSFT": 420.0,
    "EUR-USD": 1.08,
}

OrderRow = tuple[str, str, str, float, float, float]  # engine, symbol, side, quantity, price, created_at (epoch)


class OrderWriter:
    """The one writer for every engine: a thread batching orders into PostgreSQL every ``flush_interval``."""

    INSERT = "INSERT INTO orders (engine, symbol, side, quantity, price, created_at) VALUES %s"
    TEMPLATE = "(%s, %s, %s, %s, %s, to_timestamp(%s))"

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


@dataclass(frozen=True)
class HaltState:
    """The effective halt state of an engine at one instant."""

    halted: bool
    source: str | None  # the first active halt method, in the engine's preference order
    reason: str | None
    redis_ok: bool | None  # None: the engine does not honour redis


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
        self.port = 0
        self.internal_halts: dict[str, str] = {}  # method -> reason, set by the halt APIs
        self.halted_at: float | None = None  # first tick that saw the engine halted
        self.halt_source: str | None = None
        self.orders_total = 0
        self.errors_total = 0
        self.requests: collections.Counter[int] = collections.Counter()
        self.latency = metrics.Histogram()
        self.window = metrics.RateWindow(60)
        self.pnl = 0.0
        self.prices = dict(SYMBOLS)
        self._rng = random.Random()
        self._server: asyncio.Server | None = None
        self._reserve: socket.socket | None = None  # bound, not listening: the port stays ours while crashed
        self._task: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._unhung = asyncio.Event()
        if FAULT_HANG not in self.faults:
            self._unhung.set()
        routes: dict[str, dict[str, Callable[[Request], Awaitable[Response]]]] = {
            "/health": {"GET": self._health},
            "/health/detailed": {"GET": self._health_detailed},
            "/metrics": {"GET": self._metrics},
            "/api/v1/trading/status": {"GET": self._trading_status},
            "/pnl/status": {"GET": self._pnl_status},
        }
        if KILLSWITCH_API in self.methods:
            routes["/api/v1/emergency/kill_switch"] = {"POST": self._kill_switch}
            routes["/api/v1/emergency/resume"] = {"POST": self._resume}
        if ORCHESTRATE_API in self.methods:
            routes["/admin/orchestrate/halt"] = {"POST": self._orchestrate_halt}
            routes["/admin/orchestrate/unhalt"] = {"POST": self._orchestrate_unhalt}
        self._routes = routes

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
            except Exception:  # a bug in one tick must not kill the engine
                log.exception("%s: tick failed", self.name)
                self.errors_total += 1
            next_tick += interval
            delay = next_tick - loop.time()
            if delay < 0:  # fell behind: do not burst to catch up
                next_tick = loop.time()
                delay = 0
            await asyncio.sleep(delay)

    async def _tick(self) -> None:
        t = time.time()  # FIRST: the order's timestamp precedes every halt check below
        state = await self.effective_state()
        if state.redis_ok is False:
            # The halt state cannot be known: fail closed, count an error.
            self.errors_total += 1
            self.window.record(t, True)
            return
        if state.halted:
            if self.halted_at is None:
                self.halted_at = t
                log.warning("%s: halted (%s: %s)", self.name, state.source, state.reason)
            self.halt_source = state.source
            return
        if self.halted_at is not None:
            log.warning("%s: trading again after %.1fs halted", self.name, t - self.halted_at)
            self.halted_at = None
            self.halt_source = None
        if FAULT_ERROR_RATE in self.faults and self._rng.random() < ERROR_RATE:
            self.errors_total += 1
            self.window.record(t, True)
            return
        self.host.writer.submit(self._make_order(t))
        self.orders_total += 1
        self.window.record(t, False)

    def _make_order(self, t: float) -> OrderRow:
        symbol = self._rng.choice(list(SYMBOLS))
        price = self.prices[symbol] = round(self.prices[symbol] * (1 + self._rng.gauss(0, 0.0005)), 6)
        base = SYMBOLS[symbol]
        quantity = round(self._rng.uniform(0.01, 2.0) * (1 if base > 100 else 1000), 4)
        side = self._rng.choice(("buy", "sell"))
        self.pnl += self._rng.gauss(0, 10)
        return (self.name, symbol, side, quantity, price, t)

    # -- sockets and faults --------------------------------------------------------------------------------

    def _new_socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK, port))
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
        sock = self._new_socket(0)
        self.port = int(sock.getsockname()[1])
        if self.crashed:
            self._reserve = sock
        else:
            await self._listen(sock)

    def _crash(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conn_tasks):
            task.cancel()
        self._reserve = self._new_socket(self.port)
        log.warning("%s: crashed (port %d refuses connections)", self.name, self.port)

    async def _restart(self) -> None:
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None
        # A restart loses in-memory state, like a real process: an API halt does not survive it.
        self.internal_halts.clear()
        self.halted_at = None
        self.halt_source = None
        await self._listen(self._new_socket(self.port))
        self.start_trading()
        log.warning("%s: restarted on port %d", self.name, self.port)

    async def set_fault(self, fault: str, active: bool) -> None:
        if active == (fault in self.faults):
            return
        if active:
            self.faults.add(fault)
            if fault == FAULT_CRASH:
                self._crash()
            elif fault == FAULT_HANG:
                self._unhung.clear()
        else:
            self.faults.discard(fault)
            if fault == FAULT_CRASH:
                try:
                    await self._restart()
                except OSError as exc:
                    self.faults.add(FAULT_CRASH)
                    raise LabError(f"{self.name}: cannot restart on port {self.port}: {exc}") from exc
            elif fault == FAULT_HANG:
                self._unhung.set()
        log.warning("%s: fault %s %s", self.name, fault, "injected" if active else "cleared")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conn_tasks):
            task.cancel()
        if self._reserve is not None:
            self._reserve.close()
            self._reserve = None

    def snapshot(self, redis_values: Mapping[str, Any] | None) -> dict[str, Any]:
        state = self.evaluate(redis_values)
        return {
            "name": self.name,
            "port": self.port,
            "methods": list(self.methods),
            "faults": [f for f in FAULTS if f in self.faults],
            "listening": self._server is not None,
            "trading_active": not self.crashed and not state.halted and state.redis_ok is not False,
            "halted": state.halted,
            "halt_source": state.source,
            "halt_reason": state.reason,
            "halted_at": self.halted_at,
            "orders_total": self.orders_total,
            "orders_written": self.host.writer.written(self.name),
            "errors_total": self.errors_total,
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
        except Exception:
            log.exception("%s: error serving %s %s", self.name, request.method, request.path)
            response = Response.error(500, "internal error")
        if FAULT_LATENCY in self.faults:
            await asyncio.sleep(LATENCY_DELAY)
        self.latency.observe(time.perf_counter() - started)
        self.requests[response.status] += 1
        return response

    def _require_admin(self, request: Request) -> None:
        token = request.header("x-admin-token") or ""
        if not hmac.compare_digest(token.encode("utf-8"), self.host.admin_token.encode("utf-8")):
            raise HttpError(401, "unauthorized")

    def _halt_via_api(self, method: str, reason: str) -> None:
        if FAULT_KILLSWITCH_BROKEN in self.faults:
            log.warning("%s: %s halt failed (fault killswitch-broken)", self.name, method)
            raise HttpError(500, "internal error: halt failed")
        if FAULT_KILLSWITCH_LIES in self.faults:
            log.warning("%s: %s halt acknowledged but ignored (fault killswitch-lies)", self.name, method)
            return
        self.internal_halts[method] = reason
        log.warning("%s: halt requested via %s: %s", self.name, method, reason)

    async def _known_state(self) -> HaltState:
        state = await self.effective_state()
        if state.redis_ok is False and not state.halted:
            raise HttpError(503, "halt state unknown: redis unreachable")
        return state

    async def _health(self, request: Request) -> Response:
        return Response.json({"status": "ok", "engine": self.name})

    async def _health_detailed(self, request: Request) -> Response:
        state = await self.effective_state()
        error_rate = self.window.rate(time.time())
        db_ok = self.host.writer.healthy
        go = db_ok and state.redis_ok is not False and error_rate <= NO_GO_ERROR_RATE
        redis_component = "n/a" if state.redis_ok is None else ("ok" if state.redis_ok else "error")
        return Response.json(
            {
                "engine": self.name,
                "trading_status": "GO" if go else "NO-GO",
                "trading_active": not state.halted and state.redis_ok is not False,
                "halted": state.halted,
                "halt_source": state.source,
                "components": {"database": "ok" if db_ok else "error", "redis": redis_component},
                "error_rate": round(error_rate, 4),
                "orders_total": self.orders_total,
            }
        )

    async def _metrics(self, request: Request) -> Response:
        state = await self.effective_state()
        eng = {"engine": self.name}
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
        return Response.json({"halted": state.halted, "haltReason": state.reason, "pnl": round(self.pnl, 2)})

    async def _kill_switch(self, request: Request) -> Response:
        body = request.json_object()
        reason, user_id = body.get("reason"), body.get("user_id")
        if not _present(reason) or not _present(user_id):
            raise HttpError(400, "'reason' and 'user_id' are required")
        self._halt_via_api(KILLSWITCH_API, f"{reason} (user {user_id})")
        return Response.json({"status": "ok", "trading_active": False, "mode": "emergency_stopped"})

    async def _resume(self, request: Request) -> Response:
        if self.internal_halts.pop(KILLSWITCH_API, None) is not None:
            log.warning("%s: kill switch released", self.name)
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
            log.warning("%s: orchestrate halt released", self.name)
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
        self.admin_token: str = config["admin_token"]
        self.order_interval = float(config.get("order_interval", 0.2))
        self.writer = OrderWriter(config["postgres"])
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
        self.engines = [Engine(spec, self) for spec in config["engines"]]
        self.by_name = {e.name: e for e in self.engines}
        self.control_port = 0
        self._control: asyncio.Server | None = None
        self._redis_healthy = True

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
        await asyncio.to_thread(self.writer.check)
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            raise LabError(f"redis unreachable: {exc}") from exc
        self.writer.start()
        try:
            for engine in self.engines:
                await engine.bind()
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
                    engine.start_trading()
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
        for engine in self.engines:
            await engine.close()
        if self._control is not None:
            self._control.close()
        await asyncio.to_thread(self.writer.stop, 10.0)
        try:
            await self.redis.aclose()
        except (RedisError, OSError):
            pass
        (self.lab_dir / ENGINES_RUNTIME_FILE).unlink(missing_ok=True)

    async def snapshot(self) -> list[dict[str, Any]]:
        """Every engine's state, with one redis MGET for all of them."""
        keys = sorted({k for e in self.engines for k in e.redis_keys})
        values: dict[str, Any] | None = {}
        if keys:
            try:
                values = dict(zip(keys, await self.redis.mget(keys), strict=True))
            except (RedisError, OSError) as exc:
                self.redis_failed(exc)
                values = None
        return [e.snapshot(values) for e in self.engines]

    # -- control API ---------------------------------------------------------------------------------------

    async def _on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_connection(reader, writer, self._control_handle)

    async def _control_handle(self, request: Request) -> Response:
        try:
            token = request.header("x-lab-token") or ""
            if not hmac.compare_digest(token.encode("utf-8"), self.admin_token.encode("utf-8")):
                raise HttpError(401, "unauthorized")
            route = (request.method, request.path)
            if route == ("GET", "/lab/engines"):
                return Response.json({"engines": await self.snapshot()})
            if route == ("POST", "/lab/faults"):
                return Response.json(await self._faults(request.json_object(required=True)))
            if route == ("GET", "/lab/health"):
                return Response.json({"status": "ok", "engines": len(self.engines), "database": self.writer.healthy})
            raise HttpError(404, "not found")
        except HttpError as exc:
            return Response.error(exc.status, exc.message, exc.headers)
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
        if isinstance(names, str):
            names = [names]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise HttpError(400, "'engines' must be a non-empty list of engine names or ['*']")
        unknown = [n for n in names if n != ALL and n not in self.by_name]
        if unknown:
            raise HttpError(400, f"unknown engine(s): {', '.join(unknown)}")
        targets = self.engines if ALL in names else [self.by_name[n] for n in dict.fromkeys(names)]
        for engine in targets:
            for f in list(engine.faults) if fault == ALL else [fault]:
                await engine.set_fault(f, not clear)
        return {
            "fault": fault,
            "clear": clear,
            "engines": [{"name": e.name, "faults": [f for f in FAULTS if f in e.faults]} for e in targets],
        }


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
