"""datastore_plan: each datastore's state from its probe, sessions and memory; what is restarted, terminated or
evicted; which engines are halted meanwhile (every engine for PostgreSQL, the Redis-held ones for Redis)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.datastores import datastore_lines, datastore_plan

HOSTVARS = {
    "pg": {"tradeops_datastore": {"kind": "postgres"}},
    "rd": {"tradeops_datastore": {"kind": "redis"}},
    "pb": {"tradeops_datastore": {"kind": "pgbouncer"}},
    "e1": {"halt_trading_target": {"methods": [{"type": "http"}, {"type": "file"}]}},
    "e2": {"halt_trading_target": {"methods": [{"type": "redis"}, {"type": "file"}]}},
    "e3": {"halt_trading_target": {"methods": [{"type": "file"}, {"type": "redis"}]}},
}
ENGINES = ["e1", "e2", "e3"]


def probe(pg="GO", rd="GO", pg_msg="ok", rd_msg="ok"):
    return {"probes": [{"component": "pg", "status": pg, "message": pg_msg},
                       {"component": "rd", "status": rd, "message": rd_msg}]}


def plan(**kwargs):
    return datastore_plan(["pg", "rd"], HOSTVARS, kwargs.pop("probe", probe()), engines=ENGINES, **kwargs)


def test_healthy_datastores_are_left_alone_and_nothing_is_halted():
    p = plan(sessions={"status": "GO"}, redis={"status": "GO"})
    assert p["healthy"] and p["restart"] == [] and p["contain"] == [] and not p["postgres_down"]
    assert datastore_lines(p)[-1] == "engines halted meanwhile: none"


def test_postgres_down_halts_every_engine_and_restarts_it():
    p = plan(probe=probe(pg="NO-GO", pg_msg='postgres 127.0.0.1:5/t: connection to server at "x" failed: '
                                           "Connection refused"))
    assert p["restart"] == ["pg"] and p["contain"] == ENGINES and p["postgres_down"]
    assert datastore_lines(p)[0].startswith("pg (postgres): DOWN - ")


def test_a_stuck_pooler_halts_every_engine_and_restarts_only_the_pooler():
    stuck = 'postgres 127.0.0.1:7/t: connection to server at "127.0.0.1", port 7 failed: timeout expired'
    p = datastore_plan(["pg", "pb", "rd"], HOSTVARS, {"probes": [
        {"component": "pg", "status": "GO", "message": "ok"}, {"component": "pb", "status": "NO-GO", "message": stuck},
        {"component": "rd", "status": "GO", "message": "ok"}]}, engines=ENGINES)
    # the engines cannot record their orders through it, but PostgreSQL itself records: the orders proof reads it
    assert p["restart"] == ["pb"] and p["contain"] == ENGINES and not p["postgres_down"]
    assert datastore_lines(p)[1].startswith("pb (pgbouncer): DOWN - ")


def test_redis_down_halts_only_the_engines_whose_halt_redis_holds():
    refused = "redis 127.0.0.1:6: Error 111 connecting to 127.0.0.1:6. Connection refused."
    p = plan(probe=probe(rd="NO-GO", rd_msg=refused))
    assert p["restart"] == ["rd"] and p["contain"] == ["e2", "e3"] and not p["postgres_down"]


def test_sessions_and_memory_problems_are_repaired_without_a_halt():
    oom = "redis 127.0.0.1:6: OOM command not allowed when used memory > 'maxmemory'."
    p = plan(probe=probe(rd="NO-GO", rd_msg=oom), sessions={"status": "NO-GO", "problems": ["pid 7 active for 400 s"]})
    assert p["terminate_sessions"] == ["pg"] and p["evict"] == ["rd"] and p["contain"] == [] and p["restart"] == []
    assert "pid 7 active for 400 s" in datastore_lines(p)[0]
    # Redis answering but past its memory ratio, its probe still GO
    p = plan(redis={"status": "NO-GO", "problems": ["used memory is 95% of maxmemory"]})
    assert p["evict"] == ["rd"]


def test_any_other_failure_is_left_to_a_person_and_an_unprobed_one_is_not_ok():
    p = datastore_plan(["pg", "rd"], HOSTVARS, {"probes": [
        {"component": "pg", "status": "NO-GO", "message": "postgres: SELECT 1 failed: permission denied"}]},
        engines=ENGINES)
    assert p["degraded"] == ["pg", "rd"] and not p["healthy"] and p["restart"] == [] and p["contain"] == []
    assert "NOT repaired automatically" in datastore_lines(p)[0]


def test_a_datastore_without_a_kind_is_an_error_naming_it():
    with pytest.raises(AnsibleFilterError, match="host e1 has no tradeops_datastore.kind"):
        datastore_plan(["e1"], HOSTVARS, probe())


def test_a_pooler_behind_a_postgres_that_is_down_follows_its_restart_and_is_not_left_to_a_person():
    refused = 'postgres 127.0.0.1:5/t: connection to server at "x" failed: Connection refused'
    closed = "postgres 127.0.0.1:7/t: SELECT 1 failed: server closed the connection unexpectedly"
    p = datastore_plan(["pg", "pb"], HOSTVARS, {"probes": [
        {"component": "pg", "status": "NO-GO", "message": refused},
        {"component": "pb", "status": "NO-GO", "message": closed}]}, engines=ENGINES)
    assert p["restart"] == ["pg"] and p["behind"] == ["pb"] and p["degraded"] == [] and p["contain"] == ENGINES
    assert datastore_lines(p)[1].startswith("pb (pgbouncer): BEHIND - ")
    # the same pooler failure with PostgreSQL up is for a person
    p = datastore_plan(["pg", "pb"], HOSTVARS, {"probes": [
        {"component": "pg", "status": "GO", "message": "ok"},
        {"component": "pb", "status": "NO-GO", "message": closed}]}, engines=ENGINES)
    assert p["degraded"] == ["pb"] and p["behind"] == []
