"""Helpers for the lab tests: HTTP calls to engines and the halt proof from PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tradeops.lab import Lab
from tradeops.lab.procs import HttpResult, http_request

ORDER_INTERVAL = 0.05  # 20 orders/s per engine: a halt that does not hold shows up fast
# Longer than the writer's flush interval (0.1 s) plus several order intervals: an engine still
# trading would have committed ~10 orders by then.
SETTLE = 0.6
ENGINES = 8  # two full cycles of the default mix

T = TypeVar("T")


def call(
    lab: Lab,
    engine: str,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> HttpResult:
    """One HTTP request to an engine; ``token`` goes into X-Admin-Token."""
    spec = lab.engine(engine)
    headers = {"X-Admin-Token": token} if token is not None else {}
    return http_request(spec["host"], spec["port"], method, path, body=body, headers=headers, timeout=timeout)


def engine_config(lab: Lab, engine: str) -> dict[str, Any]:
    """The engine's configuration as its config API reports it (``GET /admin/config``, the current admin token)."""
    res = call(lab, engine, "GET", "/admin/config", token=lab.admin_token())
    assert res.status == 200, f"{engine}: GET /admin/config answered {res.status}: {res.text[:200]}"
    return res.json()


def wait_until(predicate: Callable[[], T], timeout: float = 5.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def assert_trading(lab: Lab, engine: str, since: float, timeout: float = 10.0, orders: int = 1) -> None:
    """The engine commits (at least ``orders``) orders created after ``since``."""
    wait_until(
        lambda: lab.orders_after(since, [engine])[engine] >= orders, timeout, f"{engine} to write orders after {since}"
    )


def assert_halted_since(lab: Lab, engine: str, verified_at: float, witness: str) -> None:
    """The halt proof: no order of ``engine`` carries a created_at later than ``verified_at``.

    ``witness`` is an engine known to be trading: once an order of it created SETTLE seconds after
    ``verified_at`` is committed, the shared writer has demonstrably flushed past that moment (and several
    order intervals went by), so any order the halted engine had created after it would be visible too.
    Polled against a deadline, not slept.
    """
    assert_trading(lab, witness, verified_at + SETTLE)
    after = lab.orders_after(verified_at, [engine])[engine]
    assert after == 0, f"{engine} wrote {after} order(s) created after its halt was verified"


def engine_view(lab: Lab, engine: str) -> dict[str, Any]:
    """The control API's view of one engine."""
    return next(e for e in lab.engines() if e["name"] == engine)


def health(lab: Lab, engine: str) -> dict[str, Any]:
    """An engine's /health/detailed."""
    res = call(lab, engine, "GET", "/health/detailed")
    assert res.status == 200
    return res.json()


def restarts(lab: Lab) -> dict[str, int]:
    """Every engine's restart count, from the control API."""
    return {e["name"]: e["restarts"] for e in lab.engines()}


METRIC_LINE = re.compile(r'^([a-z_]+)\{engine="(engine-\d{3})"(?:,(code|le|version)="([^"]+)")?\} (\S+)$')
METRIC_TYPES = {
    "orders_total": "counter",
    "errors_total": "counter",
    "http_requests_total": "counter",
    "request_latency_seconds": "histogram",
    "trading_system_halted": "gauge",
    "error_rate_ratio": "gauge",
    "disk_pressure": "gauge",
    "model_accuracy": "gauge",
    "model_drift": "gauge",
    "paper_trading": "gauge",
    "engine_restarts_total": "counter",
    "auth_success_total": "counter",
    "auth_failures_total": "counter",
    "firewall_enabled": "gauge",
    "firewall_blocked_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds_total": "counter",
    "engine_update_interval_seconds": "gauge",
    "engine_release_info": "gauge",
    # for the alert rules (monitoring/prometheus/trading_rules.yml)
    "process_memory_limit_bytes": "gauge",
    "trading_signals_total": "counter",
    "trading_drawdown_ratio": "gauge",
    "trading_halted_self": "gauge",
    "engine_disk_free_bytes": "gauge",
}


def scrape(lab: Lab, engine: str) -> dict[str, float]:
    """An engine's /metrics as ``{name or name{label=value}: value}``; checks the format and the types."""
    res = call(lab, engine, "GET", "/metrics")
    assert res.status == 200
    assert res.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    types = {}
    for line in res.text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = METRIC_LINE.match(line)
        assert m, f"unparsable metrics line {line!r}"
        name, eng, label, lvalue, value = m.groups()
        assert eng == engine
        key = f"{name}{{{label}={lvalue}}}" if label else name
        samples[key] = float(value)
    assert types == METRIC_TYPES
    return samples
