"""playbooks/exchange_failure.yml against a real lab with two exchanges (seed 003 P1, seed 000 P1).

Proof from outside: the exchanges themselves (the backup holds the engines' new resting orders, the primary none of
the orders left behind once it answers again), the orders table by venue (seed 003's query), the engines' config
API, and Kraken's own rate-limit refusals counted by the engines."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.helpers.records import read_record
from tests.integration.lab.helpers import engine_config, wait_until

pytestmark = pytest.mark.integration

INCIDENT = "exchange-failure"


def by_venue(lab, since):
    rows = lab.query("SELECT venue, engine, count(*) FROM orders WHERE created_at > to_timestamp(%s) "
                     "GROUP BY venue, engine", (since,))
    return {(v, e): n for v, e, n in rows}


def run(lab, tmp_path, *extra):
    return lab.run_playbook("exchange_failure.yml", "-e", f"incident_report_dir={tmp_path}", *extra)


def test_primary_down_fails_over_to_the_backup_and_fails_back_only_with_approval(lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    names = lab.engines()
    wait_until(lambda: all(lab.lab.working_orders().values()), timeout=15.0, what="orders resting at the primary")
    left = lab.lab.working_orders()
    lab.lab.inject("exchange-down")

    proc = run(lab, tmp_path / "1")
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "primary exchange: NO-GO" in proc.stdout and "HTTP 503" in proc.stdout
    switched = time.time()
    assert all(engine_config(lab.lab, n)["venue"] == "backup" for n in names)
    # trading continues on the backup: new orders recorded there, and resting at the backup exchange itself
    wait_until(lambda: all(by_venue(lab, switched).get(("backup", n)) for n in names), timeout=15.0,
               what="orders on the backup from every engine")
    assert not any(v == "primary" for v, _e in by_venue(lab, switched + 1.0))
    wait_until(lambda: all(lab.lab.working_orders(backup=True).values()), timeout=15.0,
               what="resting orders at the backup exchange")

    # the primary answers again; without approval the engines stay on the backup, but what they left resting at
    # the primary (live again) is cancelled
    lab.lab.inject("exchange-down", clear=True)
    proc = run(lab, tmp_path / "2")
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert sum(left.values()) > 0 and sum(lab.lab.working_orders(exclude_stops=True).values()) == 0
    assert all(engine_config(lab.lab, n)["venue"] == "backup" for n in names)

    # with approval: back on the primary, and nothing left working at the backup
    proc = run(lab, tmp_path / "3", "-e", "exchange_failure_failback_approved=true")
    assert proc.returncode == 0, proc.stdout[-8000:]
    back = time.time()
    assert all(engine_config(lab.lab, n)["venue"] == "primary" for n in names)
    wait_until(lambda: sum(lab.lab.working_orders(backup=True, exclude_stops=True).values()) == 0, timeout=10.0,
               what="the backup's resting orders cancelled")
    wait_until(lambda: all(by_venue(lab, back).get(("primary", n)) for n in names), timeout=15.0,
               what="orders on the primary again")
    record = read_record(tmp_path / "3", INCIDENT)
    [repair] = [a for a in record["actions"] if a["phase"] == "repair" and a["name"] == "venues"]
    assert "failed back engine-001, engine-002, engine-003" in repair["detail"], repair


def test_rate_limited_engines_back_off_until_the_limit_lifts_and_a_restore_into_the_limit_is_undone(
        lab_factory, tmp_path):
    lab = lab_factory(engines=3)
    names = lab.engines()
    lab.lab.inject("exchange-rate-limit")  # Kraken's EAPI:Rate limit exceeded for every engine's account
    wait_until(lambda: all((engine_config(lab.lab, n)["venue_calls"]["rate_limited"] or 0) > 0.2 for n in names),
               timeout=15.0, what="the engines' calls rate limited")

    checked = run(lab, tmp_path / "check", "--check")
    assert checked.returncode == 0, checked.stdout[-6000:]
    assert not any(engine_config(lab.lab, n)["backoff"] for n in names)

    proc = run(lab, tmp_path / "1")
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "rate limited: back-off and cached market data: engine-001, engine-002, engine-003" in proc.stdout
    # the playbook watched fresh calls: none rate limited in back-off, though the limit is still on
    views = {n: engine_config(lab.lab, n) for n in names}
    assert all(v["backoff"] and v["venue_calls"]["rate_limited"] == 0 for v in views.values()), views

    # a restore while the exchange still limits: back-off goes back on and the run fails for a person
    proc = run(lab, tmp_path / "2", "-e", "exchange_failure_restore=true", "-e", "exchange_failure_watch_seconds=8")
    assert proc.returncode != 0 and "still rate limited without back-off" in proc.stdout
    assert all(engine_config(lab.lab, n)["backoff"] for n in names)

    # the limit lifts: the restore holds
    lab.lab.inject("exchange-rate-limit", clear=True)
    proc = run(lab, tmp_path / "3", "-e", "exchange_failure_restore=true")
    assert proc.returncode == 0, proc.stdout[-8000:]
    views = {n: engine_config(lab.lab, n) for n in names}
    assert all(not v["backoff"] and v["venue_calls"]["rate_limited"] == 0 for v in views.values()), views


def test_a_wedged_market_data_feed_is_restarted_and_market_data_flows_again(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    names = lab.engines()
    wait_until(lambda: all((engine_config(lab.lab, n)["market_data"]["age_s"] or 99) < 2 for n in names), timeout=10.0,
               what="market data flowing")
    lab.lab.inject("ws-down")
    wait_until(lambda: all((engine_config(lab.lab, n)["market_data"]["age_s"] or 0) > 6 for n in names), timeout=20.0,
               what="the engines' market data going stale")
    before = {n: engine_config(lab.lab, n)["market_data"]["updates"] for n in names}

    proc = run(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "market data stale: restart the WebSocket feed: engine-001, engine-002" in proc.stdout
    # the feed service was restarted (its fault went with it), and every engine gets fresh ticker updates again
    assert lab.lab.exchange_control("GET", "/lab/ws")["restarts"] == 1 and lab.lab.service_running("ws-feed")
    wait_until(lambda: all(engine_config(lab.lab, n)["market_data"]["updates"] > before[n] + 2 for n in names),
               timeout=10.0, what="new ticker updates")
    assert all(engine_config(lab.lab, n)["market_data"]["age_s"] < 2 for n in names)


def kraken(lab, key, secret):
    import ccxt

    ex = ccxt.kraken({"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout": 5000})
    url = lab.state["exchange"]["url"]
    ex.urls["api"] = {"public": url, "private": url}
    return ex


def test_an_expired_key_is_rotated_with_rotate_secret_proven_by_a_signed_call_and_the_old_key_revoked(
        lab_factory, tmp_path):
    import ccxt

    lab = lab_factory(engines=2)
    names = lab.engines()
    old = {n: a["engine_key"] for n, a in lab.state["exchange"]["accounts"].items()}
    lab.lab.inject("exchange-key-expired")  # seed 002: the engines' own keys expire
    wait_until(lambda: all((engine_config(lab.lab, n)["venue_calls"]["auth_failed"] or 0) > 0.2 for n in names),
               timeout=15.0, what="the engines' calls refused as invalid keys")

    proc = run(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert "the exchange refuses their key: rotate it: engine-001, engine-002" in proc.stdout
    record = read_record(tmp_path, INCIDENT)
    [repair] = [a for a in record["actions"] if a["phase"] == "repair" and a["name"] == "venues"]
    assert "keys rotated and the old ones revoked for engine-001, engine-002" in repair["detail"], repair
    for name in names:
        view = engine_config(lab.lab, name)
        assert view["venue_key"] != old[name]["key"][:6] + "..."
        # the engine trades with the new key: its venue calls succeed again
        wait_until(lambda name=name: engine_config(lab.lab, name)["venue_calls"]["auth_failed"] == 0
                   and engine_config(lab.lab, name)["venue_calls"]["calls"] >= 1, timeout=10.0,
                   what=f"{name}'s calls succeed")
        # the old key is revoked at the exchange: a signed read-only call with it is refused
        with pytest.raises(ccxt.AuthenticationError):
            kraken(lab, old[name]["key"], old[name]["secret"]).fetch_balance()
        # the store holds the new key only, privately; no secret reached the output or the record
        store = lab.lab.engine(name)["dir"] + "/venue.env"
        text = open(store).read()
        assert old[name]["secret"] not in text and "VENUE_API_CREDENTIAL=" in text
        assert oct(os.stat(store).st_mode & 0o777) == "0o600"
        new_secret = text.strip().split("VENUE_API_CREDENTIAL=")[1].split(":", 1)[1].splitlines()[0]
        assert new_secret not in proc.stdout and new_secret not in json.dumps(record)
