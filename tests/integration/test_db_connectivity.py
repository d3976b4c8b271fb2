"""playbooks/db_connectivity.yml against real labs whose PostgreSQL or Redis fails (seed 004 P1, seed 003 P1).

Proof from outside: the datastores answer a write again, the orders table (no order after the halt, orders again
after the resume), PostgreSQL's own pg_stat_activity (only the root blocker and the long query ended), Redis's own
keys (the cache evicted, the halt keys and the other keys kept), the record and the evidence files."""

from __future__ import annotations

import json
import stat
import time
from datetime import datetime

import pytest

from tests.helpers.records import read_record
from tests.integration.lab.helpers import wait_until

pytestmark = pytest.mark.integration

INCIDENT = "db-connectivity"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def args(tmp_path, *extra):
    return ["-e", f"incident_report_dir={tmp_path}", "-e", "db_connectivity_stable_for=2",
            "-e", "halt_trading_quiesce_seconds=1", "-e", "halt_trading_timeout=4",
            "-e", "db_connectivity_rto_seconds=30", *extra]


def trading(lab):
    return sorted(n for n, e in lab.engines_view().items() if e["trading_active"])


def no_secret_in(lab, directory):
    secrets = [lab.state["admin_token"], lab.state["postgres"]["password"], lab.state["redis"]["password"]]
    for path in directory.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert not any(s in text for s in secrets), path


def assert_halt_proven(lab, record, names):
    """Every engine halted and verified at containment; the orders, recorded once they could be, prove no engine
    traded from its verified halt to the resume. Returns (halted_at, resumed_at, resume halt entry)."""
    [contain] = [h for h in record["halts"] if h["phase"] == "contain"]
    assert sorted(contain["done"]) == names and not contain["failed"] and not contain["unverified"]
    [reverify] = [h for h in record["halts"] if h["phase"] == "re-verify"]
    assert reverify["orders_after"] == 0
    [resume] = [h for h in record["halts"] if h["phase"] == "resume"]
    [resume_phase] = [p for p in record["phases"] if p["name"] == "resume"]
    halted_at, resumed_at = epoch(contain["at"]), epoch(resume_phase["start"])  # before the resume's call
    for name in names:
        assert lab.orders_between(name, halted_at, resumed_at) == 0, name
    return halted_at, resumed_at, resume


def test_postgres_down_halts_every_engine_restarts_it_and_resumes_only_after_a_clean_scan(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    names = lab.engines()
    old_pid, pooler_pid = lab.state["postgres"]["pid"], lab.state["pgbouncer"]["pid"]
    lab.lab.inject("pg-down")
    # the engines' order writer sees it (their health reports the database component in error)
    wait_until(lambda: not lab.lab.control("GET", "/lab/health")["database"], timeout=15.0,
               what="the engines to see it")
    proc = lab.run_playbook("db_connectivity.yml", *args(tmp_path, "-e", "resume_trading_approved=true"))
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "lab-postgres (postgres): DOWN" in proc.stdout and "lab-redis (redis): OK" in proc.stdout
    # the engines' pooler cannot serve without PostgreSQL: not restarted, it follows PostgreSQL back
    assert "lab-pgbouncer (pgbouncer): BEHIND" in proc.stdout

    # PostgreSQL is back, a new process, and takes writes, through the same pooler too
    assert lab.lab.service_running("postgres") and lab.state["postgres"]["pid"] != old_pid
    assert lab.lab.service_running("pgbouncer") and lab.state["pgbouncer"]["pid"] == pooler_pid
    record = read_record(tmp_path, INCIDENT)
    # the orders, recorded once PostgreSQL was back (the engines buffered them), prove the halt held
    halted_at, resumed_at, resume = assert_halt_proven(lab, record, names)
    assert resumed_at - halted_at > 5  # the restart, the scan and the stable gate came in between
    [scan] = [a for a in record["actions"] if a["name"] == "integrity_scan"]
    assert scan["outcome"] in ("ok", "warn"), scan
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified", record["verdict"]
    # trading again, every engine, recorded in PostgreSQL
    assert all(lab.wait_for_orders(names, since=epoch(resume["at"])).values())
    no_secret_in(lab, tmp_path)


def test_saturation_long_query_and_lock_chain_terminated_evidence_first_and_redis_oom_evicts_only_the_cache(
        lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    names = lab.engines()
    lab.lab.inject("blocking-lock")
    lab.lab.inject("long-query", seconds=120)
    # a runaway job of an ordinary role takes every ordinary connection slot (seed 003's saturation)
    saturation = lab.lab.inject("pg-saturation")
    assert saturation["connections"] > 80
    client = lab.lab.redis_client()
    client.set("emergency_halt:engine-999", "held by someone")  # a halt key: never evicted
    client.set("session:desk-a", "kept")  # not cache: never evicted
    lab.lab.inject("redis-oom")
    cache_keys = len(list(client.scan_iter(match="cache:*")))
    assert cache_keys > 100
    faults = lab.lab.db_faults()
    blocker, waiter = faults["blocking-lock"]["blocker_pid"], faults["blocking-lock"]["waiter_pid"]
    sleeper = faults["long-query"]["backend_pid"]
    wait_until(lambda: lab.query("SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity WHERE pid = %s",
                                 (waiter,))[0][0] >= 1.5, timeout=15.0, what="the waiter to wait 1.5 s")
    thresholds = ["-e", "db_connectivity_long_query_seconds=1", "-e", "db_connectivity_lock_wait_seconds=1"]

    # check mode: read everything, end nothing, evict nothing
    checked = lab.run_playbook("db_connectivity.yml", "--check", *args(tmp_path / "check", *thresholds))
    assert checked.returncode == 0, checked.stdout[-6000:]
    alive = {r[0] for r in lab.query("SELECT pid FROM pg_stat_activity")}
    assert {blocker, waiter, sleeper} <= alive
    assert lab.lab.db_faults()["pg-saturation"]["alive"] == saturation["connections"]
    assert len(list(client.scan_iter(match="cache:*"))) == cache_keys

    started = time.time()
    proc = lab.run_playbook("db_connectivity.yml", *args(tmp_path, *thresholds))
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "lab-postgres (postgres): SESSIONS" in proc.stdout and "lab-redis (redis): OOM" in proc.stdout
    # only the root blocker and the long query ended; the waiter got its lock and finished its query
    alive = {r[0] for r in lab.query("SELECT pid FROM pg_stat_activity")}
    assert blocker not in alive and sleeper not in alive
    assert lab.lab.db_faults()["blocking-lock"]["waiter_outcome"] == "finished"
    assert lab.lab.db_faults()["pg-saturation"]["alive"] == 0
    assert not lab.query("SELECT pid FROM pg_stat_activity WHERE usename = 'tradeops_lab_reporting'")
    assert not lab.query("SELECT pid FROM pg_locks WHERE NOT granted")
    # the evidence was written before the terminations: the query text and the chain, private
    evidence = tmp_path / f"{INCIDENT}-lab-postgres-sessions.json"
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    body = json.loads(evidence.read_text())
    assert body["captured_at"] < time.time()
    [chain] = body["snapshot"]["blocking"]
    assert chain["root"]["pid"] == blocker and chain["root"]["query"].startswith("LOCK TABLE trades")
    assert [w["pid"] for w in chain["waiting"]] == [waiter]
    # the saturated server as it was: 97 of 100 connections; the runaway job's queries terminated with the others
    assert body["snapshot"]["connections"]["ratio"] > 0.9
    terminated = {t["pid"] for t in body["to_terminate"]}
    assert {blocker, sleeper} <= terminated and waiter not in terminated
    assert len(terminated) == 2 + saturation["connections"]
    # Redis: the cache is gone, the halt key and the other keys are not, and it takes writes again
    assert not list(client.scan_iter(match="cache:*"))
    assert client.get("emergency_halt:engine-999") == "held by someone" and client.get("session:desk-a") == "kept"
    client.set("probe:after", "1")
    # nothing was halted: PostgreSQL and Redis answered throughout; the engines traded throughout
    record = read_record(tmp_path, INCIDENT)
    assert not [h for h in record["halts"] if h["phase"] == "contain"]
    assert trading(lab) == names and all(lab.wait_for_orders(names, since=started).values())
    no_secret_in(lab, tmp_path)


def test_redis_down_keeps_the_engines_that_hold_their_halt_in_redis_halted_until_the_gated_resume(
        lab_factory, tmp_path):
    lab = lab_factory(engines=6)
    uses_redis = sorted(e["name"] for e in lab.state["engines"] if "redis" in e["methods"])
    assert uses_redis and len(uses_redis) < 6
    lab.lab.inject("redis-down")
    # without the approval: Redis comes back empty, yet the engines that depend on it stay halted
    proc = lab.run_playbook("db_connectivity.yml", *args(tmp_path))
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "lab-redis (redis): DOWN" in proc.stdout
    assert lab.lab.service_running("redis")
    record = read_record(tmp_path, INCIDENT)
    [contain] = [h for h in record["halts"] if h["phase"] == "contain"]
    assert sorted(contain["done"] + contain["already"]) == uses_redis and not contain["failed"]
    halted_at = epoch(contain["at"])
    lab.assert_stays_halted(uses_redis, halted_at, window=1.0)
    others = sorted(set(lab.engines()) - set(uses_redis))
    assert all(lab.wait_for_orders(others, since=halted_at).values())
    verdict = record["verdict"]["text"]
    assert verdict.startswith("RECOVERED: health gate GO, trading HALTED awaiting approval"), verdict


def test_a_stuck_pooler_halts_every_engine_is_restarted_and_the_buffered_orders_prove_the_halt(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    names = lab.engines()
    old_pid = lab.state["pgbouncer"]["pid"]
    lab.lab.inject("pooler-stuck")  # SIGSTOP: it keeps its port and its clients, and answers nothing
    assert not lab.lab.service_running("pgbouncer") and lab.lab.service_running("postgres")
    proc = lab.run_playbook("db_connectivity.yml", *args(tmp_path, "-e", "resume_trading_approved=true"))
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "lab-pgbouncer (pgbouncer): DOWN" in proc.stdout and "lab-postgres (postgres): OK" in proc.stdout

    # the pooler is a new process and serves queries again; PostgreSQL itself was never touched
    assert lab.lab.service_running("pgbouncer") and lab.state["pgbouncer"]["pid"] != old_pid
    record = read_record(tmp_path, INCIDENT)
    _halted_at, _resumed_at, resume = assert_halt_proven(lab, record, names)
    # no integrity scan: PostgreSQL was never down
    assert not [a for a in record["actions"] if a["name"] == "integrity_scan"]
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified", record["verdict"]
    # trading again through the new pooler, every engine, and every order an engine made is in PostgreSQL
    assert all(lab.wait_for_orders(names, since=epoch(resume["at"])).values())
    no_secret_in(lab, tmp_path)
