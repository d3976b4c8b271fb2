"""ProbeService against the lab's real engines, PostgreSQL and Redis (moved from the unit tier, issue 14).

- http, metric and tcp: the lab's real engines, with real faults (crash, hang, latency, error-rate);
- postgres and redis: the lab's real PostgreSQL and Redis;
- wait_for: a lab engine whose crash is cleared from a thread; the service returns as soon as the
  probe turns GO, never sleeping out its deadline.

The probes that need no lab (local servers, this machine, a fake Kubernetes API, Docker) stay in
tests/unit/plugins/module_utils/test_probes.py, whose helpers these tests share.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._probes import GO, NOGO

from tests.unit.plugins.module_utils.test_probes import closed_port, one, run, timed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.conftest import start_lab

    handle = start_lab(tmp_path_factory.mktemp("probe-lab"), engines=6, order_interval=0.1)
    yield handle
    handle.lab.down()


def engine_url(lab, name, path=""):
    e = next(e for e in lab.state["engines"] if e["name"] == name)
    return f"http://{e['host']}:{e['port']}{path}"


def engine_addr(lab, name):
    e = next(e for e in lab.state["engines"] if e["name"] == name)
    return e["host"], e["port"]


def test_http_probe_is_go_on_a_healthy_engine_and_returns_the_field(lab):
    out, r = one({"name": "e1-api", "type": "http", "component": "engine-001",
                  "url": engine_url(lab, "engine-001", "/health/detailed"), "field": "trading_status", "value": "GO"})
    assert out["status"] == GO and r["status"] == GO, r
    assert r["value"] == "GO" and r["component"] == "engine-001" and r["type"] == "http"
    assert r["severity"] == "critical" and 0 <= r["latency_ms"] < 1000
    assert "trading_status='GO'" in r["message"]
    assert out["nogo"] == [] and out["nogo_components"] == [] and out["attempts"] == 1


def test_crashed_engine_is_nogo_at_once_for_http_tcp_and_metric(lab):
    lab.lab.inject("crash", engines=["engine-002"])
    try:
        host, port = engine_addr(lab, "engine-002")
        out, elapsed = timed([
            {"name": "api", "type": "http", "url": engine_url(lab, "engine-002", "/health"), "component": "engine-002"},
            {"name": "port", "type": "tcp", "host": host, "port": port, "component": "engine-002"},
            {"name": "errors", "type": "metric", "url": engine_url(lab, "engine-002", "/metrics"),
             "metric": "errors_total", "max": 0, "component": "engine-002"},
            {"name": "other", "type": "http", "url": engine_url(lab, "engine-001", "/health"),
             "component": "engine-001"},
        ])
        assert out["status"] == NOGO
        assert out["nogo"] == ["api", "port", "errors"]
        assert out["nogo_components"] == ["engine-002"]
        assert all("refused" in r["message"].lower() for r in out["probes"][:3]), out["probes"]
        assert out["probes"][3]["status"] == GO
        assert elapsed < 1.0, elapsed
    finally:
        lab.lab.inject("crash", engines=["engine-002"], clear=True)


def test_hung_engine_is_bounded_by_its_timeout_and_delays_no_other_probe(lab):
    lab.lab.inject("hang", engines=["engine-003"])
    try:
        host, port = engine_addr(lab, "engine-003")
        healthy = [{"name": f"healthy-{i}", "type": "http", "url": engine_url(lab, "engine-001", "/health"),
                    "timeout": 5} for i in range(5)]
        out, elapsed = timed([
            {"name": "hung-api", "type": "http", "url": engine_url(lab, "engine-003", "/health"), "timeout": 1.0},
            # the hung engine still accepts connections: a tcp probe cannot see a hang
            {"name": "hung-port", "type": "tcp", "host": host, "port": port, "timeout": 1.0},
            *healthy,
        ])
        by = {r["name"]: r for r in out["probes"]}
        assert by["hung-api"]["status"] == NOGO and "no answer within 1.0s" in by["hung-api"]["message"]
        assert by["hung-port"]["status"] == GO
        assert all(by[p["name"]]["status"] == GO and by[p["name"]]["latency_ms"] < 500 for p in healthy), by
        assert 1.0 <= elapsed < 1.0 + 0.6, elapsed
    finally:
        lab.lab.inject("hang", engines=["engine-003"], clear=True)


def test_latency_fault_breaks_max_latency_ms(lab):
    lab.lab.inject("latency", engines=["engine-004"])
    try:
        url = engine_url(lab, "engine-004", "/health")
        out = run([{"name": "bounded", "type": "http", "url": url, "max_latency_ms": 500},
                   {"name": "unbounded", "type": "http", "url": url}])
        bounded, unbounded = out["probes"]
        assert bounded["status"] == NOGO and "above max_latency_ms 500" in bounded["message"], bounded
        assert bounded["latency_ms"] >= 1400
        assert unbounded["status"] == GO  # the same answer, without the bound, is healthy
        assert out["nogo"] == ["bounded"]
    finally:
        lab.lab.inject("latency", engines=["engine-004"], clear=True)


def test_error_rate_makes_the_field_mismatch_and_the_error_metric_nogo(lab):
    detailed = {"name": "e5-api", "type": "http", "url": engine_url(lab, "engine-005", "/health/detailed"),
                "field": "trading_status", "value": "GO", "component": "engine-005"}
    errors = {"name": "e5-errors", "type": "metric", "url": engine_url(lab, "engine-005", "/metrics"),
              "metric": "errors_total", "labels": {"engine": "engine-005"}, "max": 0, "component": "engine-005"}
    assert run([detailed, errors])["status"] == GO
    lab.lab.inject("error-rate", engines=["engine-005"])
    try:
        deadline = time.monotonic() + 10
        while True:
            out = run([detailed, errors])
            if out["status"] == NOGO and out["nogo"] == ["e5-api", "e5-errors"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        api, metric = out["probes"]
        assert api["status"] == NOGO and api["value"] == "NO-GO", api
        assert "trading_status='NO-GO', expected 'GO'" in api["message"]
        assert metric["status"] == NOGO and metric["value"] >= 1 and "out of bounds" in metric["message"]
        assert out["nogo_components"] == ["engine-005"]
    finally:
        lab.lab.inject("error-rate", engines=["engine-005"], clear=True)


def test_metric_probe_reads_real_engine_metrics(lab):
    url = engine_url(lab, "engine-001", "/metrics")
    lab.wait_for_orders(["engine-001"], since=time.time() - 60)
    out = run([
        {"name": "orders", "type": "metric", "url": url, "metric": "orders_total",
         "labels": {"engine": "engine-001"}, "min": 1},
        {"name": "not-halted", "type": "metric", "url": url, "metric": "trading_system_halted", "max": 0},
        {"name": "p99-bucket", "type": "metric", "url": url, "metric": "request_latency_seconds_bucket",
         "labels": {"engine": "engine-001", "le": "+Inf"}, "min": 0},
        {"name": "missing", "type": "metric", "url": url, "metric": "no_such_metric", "max": 1},
        {"name": "other-engine", "type": "metric", "url": url, "metric": "orders_total",
         "labels": {"engine": "engine-999"}, "min": 1},
        {"name": "ambiguous", "type": "metric", "url": url, "metric": "request_latency_seconds_bucket", "min": 0},
    ])
    by = {r["name"]: r for r in out["probes"]}
    assert by["orders"]["status"] == GO and by["orders"]["value"] >= 1, by["orders"]
    assert by["not-halted"]["status"] == GO and by["not-halted"]["value"] == 0
    assert by["p99-bucket"]["status"] == GO, by["p99-bucket"]
    assert by["missing"]["status"] == NOGO and by["missing"]["message"].startswith("no sample no_such_metric at")
    assert by["other-engine"]["status"] == NOGO
    assert 'other series of orders_total: orders_total{engine="engine-001"}' in by["other-engine"]["message"]
    assert by["ambiguous"]["status"] == NOGO and "add labels to pick one" in by["ambiguous"]["message"]


def pg_probe(lab, **over):
    pg = lab.state["postgres"]
    probe = {"name": "orders-db", "type": "postgres", "component": "postgres", "login_host": pg["host"],
             "login_port": pg["port"], "login_db": pg["dbname"], "login_user": pg["user"],
             "login_password": pg["password"], "sslmode": "disable", "connect_timeout": 3}
    probe.update(over)
    return probe


def test_postgres_probe_go_and_wrong_password_nogo_without_the_password(lab):
    pg = lab.state["postgres"]
    out, r = one(pg_probe(lab))
    assert r["status"] == GO, r
    assert re.match(r"^\d+\.\d+$", r["value"]) and "SELECT 1 ok" in r["message"]
    assert pg["password"] not in json.dumps(out)

    canary = "wrong-pg-password-canary-7f3a"
    out, r = one(pg_probe(lab, login_password=canary))
    assert r["status"] == NOGO and out["nogo_components"] == ["postgres"]
    assert "password authentication failed" in r["message"], r["message"]
    assert canary not in json.dumps(out) and pg["password"] not in json.dumps(out)


def test_redis_probe_go_and_wrong_password_nogo_without_the_password(lab):
    rd = lab.state["redis"]
    out, r = one({"name": "redis", "type": "redis", "host": rd["host"], "port": rd["port"],
                  "password": rd["password"]})
    assert r["status"] == GO and r["value"] == "PONG", r
    assert rd["password"] not in json.dumps(out)

    canary = "wrong-redis-password-canary-91c2"
    out, r = one({"name": "redis", "type": "redis", "host": rd["host"], "port": rd["port"], "password": canary})
    assert r["status"] == NOGO, r
    assert re.search(r"invalid|WRONGPASS|auth", r["message"], re.I), r["message"]
    assert canary not in json.dumps(out)

    out, elapsed = timed([{"name": "redis", "type": "redis", "port": closed_port()}])
    assert out["status"] == NOGO and elapsed < 1.0  # one attempt, no retry backoff


def test_wait_for_a_crashed_engine_that_comes_back(lab):
    lab.lab.inject("crash", engines=["engine-006"])
    clearer = threading.Timer(1.0, lambda: lab.lab.inject("crash", engines=["engine-006"], clear=True))
    clearer.start()
    try:
        out, elapsed = timed([{"name": "e6", "type": "http", "url": engine_url(lab, "engine-006", "/health"),
                               "component": "engine-006"}], wait_for=15, interval=0.2)
        assert out["status"] == GO, out
        assert out["attempts"] >= 3
        assert 0.9 <= elapsed < 3.0, elapsed
    finally:
        clearer.join()
        lab.lab.inject("crash", engines=["engine-006"], clear=True)
