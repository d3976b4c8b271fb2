"""pg_sessions' decisions on snapshots: chains resolved to their root, only roots past the wait threshold and
unprotected ones are terminated, a waiting session is a victim (never a long query), bad options name the option.
The terminations themselves run against the lab's PostgreSQL in tests/integration/test_db_connectivity.py."""

from __future__ import annotations

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_sessions import SessionsService


def session(pid, app="app", state="active", seconds=1.0, blocked_by=(), backend="client backend", user="trader"):
    return {"pid": pid, "user": user, "application_name": app, "backend_type": backend, "state": state,
            "database": "trading", "query_seconds": seconds, "xact_seconds": seconds, "state_seconds": seconds,
            "wait_event_type": "Lock" if blocked_by else None, "query": f"q{pid}", "blocked_by": list(blocked_by)}


def service(**params):
    base = {"long_query_seconds": 300, "lock_wait_seconds": 30, "terminate": ["long_queries", "root_blockers"],
            "evidence_path": "/tmp/x.json", "login_host": "127.0.0.1"}
    base.update(params)
    return SessionsService(base, check_mode=True)


def snapshot(svc, *sessions):
    return svc._shape({s["pid"]: s for s in sessions}, {}, 100, 3)


def test_a_chain_is_resolved_to_its_root_and_only_the_root_is_terminated_past_the_threshold():
    svc = service()
    snap = snapshot(svc, session(1, state="idle in transaction", seconds=90), session(2, seconds=45, blocked_by=[1]),
                    session(3, seconds=40, blocked_by=[2]), session(4, seconds=2))
    [chain] = snap["blocking"]
    assert chain["root"]["pid"] == 1 and [w["pid"] for w in chain["waiting"]] == [2, 3]
    assert chain["max_wait_seconds"] == 45
    assert snap["long_queries"] == []  # the waiters are victims, not long queries
    kill, spared = svc.plan(snap)
    assert [k["pid"] for k in kill] == [1] and spared == []
    assert "root blocker of 2 waiting session(s)" in kill[0]["reason"]
    # below the threshold: spared, with the reason
    kill, spared = service(lock_wait_seconds=60).plan(snap)
    assert kill == [] and "below lock_wait_seconds 60" in spared[0]["spared_because"]


def test_long_queries_past_the_limit_are_terminated_unless_protected():
    svc = service(long_query_seconds=60, protect_applications=["pg_dump"], protect_users=["replicator"])
    snap = snapshot(svc, session(10, seconds=400), session(11, app="tradeops.pg_integrity", seconds=500),
                    session(12, app="pg_dump --table x", seconds=600), session(13, user="replicator", seconds=700),
                    session(14, backend="walsender", seconds=800), session(15, seconds=30))
    kill, spared = svc.plan(snap)
    assert [k["pid"] for k in kill] == [10]
    reasons = {s["pid"]: s["spared_because"] for s in spared}
    assert "the collection's own session" in reasons[11] and "protect_applications" in reasons[12]
    assert "protect_users" in reasons[13]
    assert 14 not in reasons and 15 not in reasons  # a walsender is not a client session; 30 s is not long
    # a protected query is still a problem to report, only not one to terminate
    assert [line.split()[1] for line in svc.problems(snap)] == ["13", "12", "11", "10"]


def test_only_what_terminate_names_is_terminated():
    snap_svc = service(terminate=["root_blockers"], long_query_seconds=1, lock_wait_seconds=1)
    snap = snapshot(snap_svc, session(1, state="idle in transaction"), session(2, seconds=5, blocked_by=[1]),
                    session(3, seconds=50))
    assert [k["pid"] for k in snap_svc.plan(snap)[0]] == [1]
    read_only = service(terminate=[], evidence_path=None, long_query_seconds=1, lock_wait_seconds=1)
    assert read_only.plan(snap) == ([], [])
    assert len(read_only.problems(snap)) == 2


def test_too_many_connections_is_a_problem():
    svc = service(max_connection_ratio=0.5)
    snap = svc._shape({p: session(p, state="idle") for p in range(1, 60)}, {}, 100, 3)
    assert snap["connections"]["by_state"] == {"idle": 59} and snap["connections"]["total"] == 60
    assert svc.problems(snap) == ["60 of max_connections 100 in use, above max_connection_ratio 0.5"]


@pytest.mark.parametrize("params, message", [
    ({"terminate": ["long_queries"], "evidence_path": None}, "evidence_path is required with terminate"),
    ({"terminate": ["everything"]}, "terminate: unknown everything"),
    ({"max_connection_ratio": 1.5}, "max_connection_ratio must be above 0"),
    ({"lock_wait_seconds": -1}, "lock_wait_seconds"),
    ({"login_port": 70000}, "login_port must be between 1 and 65535"),
])
def test_bad_options_name_the_option(params, message):
    with pytest.raises(ValidationError, match=message):
        service(**params)
