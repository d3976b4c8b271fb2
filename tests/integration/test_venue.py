"""The kill switch at the venue, through ccxt against the lab exchange (Kraken's REST API on the loopback).

One lab for the module (3 engines resting orders at the exchange). Most tests use accounts of their own
(``add_venue_account``), so that the engines' trading cannot blur what a test proves; the engines' own
accounts are used where the point is an engine (a crashed engine's orders are still cancelled).
Every assertion reads the exchange back: through ccxt as a user would, or through the lab's control API.
"""

from __future__ import annotations

import time

import ccxt
import pytest
from ansible_collections.tradeops.remediation.plugins.modules import venue_guard

from tests.conftest import start_lab
from tests.helpers.modules import run_module
from tradeops.lab.venue import KrakenClient, VenueError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    handle = start_lab(tmp_path_factory.mktemp("venue-lab"), engines=3)
    yield handle.lab
    handle.lab.down()


_COUNTER = iter(range(1, 10_000))


@pytest.fixture
def account(lab):
    """A fresh account at the lab exchange (1,000,000 USD, 10 BTC) with nothing working."""
    return lab.add_venue_account(f"test-{next(_COUNTER)}")


def client(acct, **extra):
    ex = ccxt.kraken({"apiKey": acct["api_key"], "secret": acct["secret"], "enableRateLimit": False,
                      "timeout": 5000, **extra})
    ex.urls["api"] = {"public": acct["url"], "private": acct["url"]}
    return ex


def guard(capsys, action, accounts, **options):
    args = {"action": action, "accounts": accounts, "strict": False, **options}
    return run_module(venue_guard, capsys, args)


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- the lab exchange is a faithful Kraken -----------------------------------------------------------------

def test_ccxt_kraken_trades_on_the_lab_exchange_unmodified(lab, account):
    ex = client(account)
    markets = ex.load_markets()
    assert {"BTC/USD", "ETH/USD", "SOL/USD", "EUR/USD"} <= set(markets)
    assert ex.fetch_balance()["total"]["BTC"] == 10
    price = ex.fetch_ticker("BTC/USD")["last"]
    buy = ex.create_order("BTC/USD", "limit", "buy", 0.01, round(price * 0.9, 1))
    stop = ex.create_order("BTC/USD", "market", "sell", 0.5, None, {"stopLossPrice": round(price * 0.8, 1)})
    working = {o["id"]: o for o in ex.fetch_open_orders()}
    assert set(working) == {buy["id"], stop["id"]}
    assert working[stop["id"]]["stopLossPrice"] == round(price * 0.8, 1)
    ex.cancel_order(buy["id"])
    assert [o["id"] for o in ex.fetch_open_orders()] == [stop["id"]]


def test_a_wrong_signature_a_replayed_nonce_and_a_revoked_key_are_refused(lab, account):
    forged = client(dict(account, secret="A" * 4 + account["secret"][4:]))
    with pytest.raises(ccxt.ExchangeError, match="EAPI:Invalid signature"):
        forged.fetch_balance()
    st = lab.state["exchange"]
    replay = KrakenClient(st["host"], st["port"], account["api_key"], account["secret"])
    replay.nonce = lambda: "1700000000000"  # the same signed nonce twice: Kraken refuses the second
    assert replay.call("Balance")["ZUSD"].startswith("1000000")
    with pytest.raises(VenueError, match="EAPI:Invalid nonce"):
        replay.call("Balance")
    lab.inject("exchange-auth", [account["name"]])
    try:
        with pytest.raises(ccxt.AuthenticationError, match="EAPI:Invalid key"):
            client(account).fetch_balance()
    finally:
        lab.inject("exchange-auth", [account["name"]], clear=True)
    assert client(account).fetch_balance()["total"]["USD"] == 1_000_000


def test_a_resting_order_fills_when_the_price_crosses_it(lab, account):
    txids = lab.rest_orders(account, 2, distance_pct=2.0)  # a buy 2 % below, a sell 2 % above
    since = time.time()
    lab.move_price("BTC/USD", -3.0)
    fills = lab.venue_fills(since=since, account=account["name"])
    assert [f["ordertxid"] for f in fills] == [txids[0]]
    balance = client(account).fetch_balance()["total"]
    assert balance["BTC"] == pytest.approx(10.01)
    lab.move_price("BTC/USD", 3.2)


# -- venue_guard ---------------------------------------------------------------------------------------------

def test_cancel_all_leaves_zero_working_orders_read_back_and_nothing_fills_after(lab, capsys):
    accounts = [lab.add_venue_account(f"fleet-{next(_COUNTER)}") for _ in range(4)]
    for acct in accounts:
        lab.rest_orders(acct, 10)
    out = guard(capsys, "cancel_all", accounts)
    assert out["_rc"] == 0, out["_raw"]
    assert out["changed"] and sorted(out["verified"]) == sorted(a["name"] for a in accounts)
    assert out["working_orders_before"] == 40 and out["working_orders_after"] == 0
    for acct in accounts:
        assert client(acct).fetch_open_orders() == []
    cancelled_at = time.time()
    lab.move_price("BTC/USD", -8.0)  # every buy of those books would have filled
    lab.move_price("BTC/USD", 17.0)  # and every sell
    lab.move_price("BTC/USD", -7.5)
    assert [f for f in lab.venue_fills(since=cancelled_at) if f["account"] in {a["name"] for a in accounts}] == []
    again = guard(capsys, "cancel_all", accounts)
    assert again["_rc"] == 0 and not again["changed"]  # idempotent
    for secret in [a["secret"] for a in accounts] + [a["api_key"] for a in accounts]:
        assert secret not in out["_raw"] and secret not in again["_raw"]


def test_check_mode_cancels_nothing(lab, account, capsys):
    lab.rest_orders(account, 3)
    out = run_module(venue_guard, capsys, {"action": "cancel_all", "accounts": [account], "strict": False,
                                           "_ansible_check_mode": True})
    assert out["changed"] and out["accounts"][0]["would_cancel"] == 3
    assert len(client(account).fetch_open_orders()) == 3


def test_one_worker_lends_its_client_to_each_account_with_that_accounts_key_only(lab, capsys, monkeypatch):
    """One worker thread, one ccxt client, three accounts in turn: the middle one's key is refused by the
    exchange. Had the client kept the first account's key, the middle account would come out verified (its
    calls reaching the first account's empty book); had it kept the refused key, the last would fail."""
    from ansible_collections.tradeops.remediation.plugins.module_utils import _venue

    built = []
    real = _venue.new_exchange
    monkeypatch.setattr(_venue, "new_exchange", lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    first, refused, last = (lab.add_venue_account(f"{role}-{next(_COUNTER)}") for role in ("first", "refused", "last"))
    for acct in (first, refused, last):
        lab.rest_orders(acct, 3)
    lab.inject("exchange-auth", [refused["name"]])
    try:
        out = guard(capsys, "cancel_all", [first, refused, last], concurrency=1, timeout=3)
    finally:
        lab.inject("exchange-auth", [refused["name"]], clear=True)
    assert out["verified"] == [first["name"], last["name"]], out["_raw"]
    assert out["unverified"] == [refused["name"]] and "API key" in out["accounts"][1]["error"]
    working = lab.working_orders()
    assert (working[first["name"]], working[refused["name"]], working[last["name"]]) == (0, 3, 0)
    assert len(built) == 1, "one worker builds one client and lends it to each account"
    assert (built[0].apiKey, built[0].secret, built[0].password) == (None, None, None), "given back without a key"
    for secret in (first["secret"], refused["secret"], last["secret"]):
        assert secret not in out["_raw"]


def test_an_order_landing_during_the_quiesce_is_found_and_cancelled_at_the_read_back_after_it(lab, capsys,
                                                                                          monkeypatch):
    """settle_until (the P0 contain phase): the cancel runs at once, not after the engines' quiesce. An order an
    engine had in flight lands after the first read-back (placed here between the two passes); the read-back when
    the quiesce ends finds it and cancels it. Without that second read-back it would stay working."""
    from ansible_collections.tradeops.remediation.plugins.module_utils import _venue_guard

    late, quiet = (lab.add_venue_account(f"{role}-{next(_COUNTER)}") for role in ("late", "quiet"))
    for acct in (late, quiet):
        lab.rest_orders(acct, 3)
    real = _venue_guard.VenueGuard._settle
    first_pass = []

    def landing(self, results, timeout):
        first_pass.append(lab.working_orders()[late["name"]])
        lab.rest_orders(late, 2)  # in flight at the halt, landing now
        return real(self, results, timeout)

    monkeypatch.setattr(_venue_guard.VenueGuard, "_settle", landing)
    settle_until = time.time() + 1.0
    out = guard(capsys, "cancel_all", [late, quiet], settle_until=settle_until, keep_stops=True)
    returned = time.time()
    assert out["_rc"] == 0, out["_raw"]
    assert first_pass == [0], "the first pass cancelled at once, before the quiesce ended"
    assert out["verified"] == [late["name"], quiet["name"]] and out["working_orders_after"] == 0
    assert out["late_orders"] == 2 and [a["late_orders"] for a in out["accounts"]] == [2, 0]
    assert lab.working_orders()[late["name"]] == 0 and client(late).fetch_open_orders() == []
    assert returned >= settle_until and 0 < out["settled_s"] <= 1.0 and out["read_again"] == 2
    # a settle time already past when the call starts: one read-back, no second pass
    out = guard(capsys, "cancel_all", [late], settle_until=time.time() - 5)
    assert out["_rc"] == 0 and "settled_s" not in out and first_pass == [0]


def test_an_account_last_read_after_the_settle_time_is_not_read_again(lab, capsys, monkeypatch):
    """One worker: the first account is read before the settle time, the second (slow) only after it. Only the first
    is read again; an order landing on it meanwhile is cancelled."""
    from ansible_collections.tradeops.remediation.plugins.module_utils import _venue_guard

    early, slow = (lab.add_venue_account(f"{role}-{next(_COUNTER)}") for role in ("early", "slow"))
    settle_until = time.time() + 1.0
    real_cancel, real_settle = _venue_guard.VenueGuard._cancel_all, _venue_guard.VenueGuard._settle

    def cancel(self, client, deadline, result):
        if client.account.name == slow["name"]:  # slow: it reaches the exchange only once the settle time has passed
            assert wait_until(lambda: time.time() > settle_until, timeout=5, interval=0.02)
        return real_cancel(self, client, deadline, result)

    def settle(self, results, timeout):
        lab.rest_orders(early, 1)
        return real_settle(self, results, timeout)

    monkeypatch.setattr(_venue_guard.VenueGuard, "_cancel_all", cancel)
    monkeypatch.setattr(_venue_guard.VenueGuard, "_settle", settle)
    out = guard(capsys, "cancel_all", [early, slow], settle_until=settle_until, concurrency=1)
    assert out["_rc"] == 0 and out["verified"] == [early["name"], slow["name"]], out["_raw"]
    assert out["read_again"] == 1 and [a.get("late_orders") for a in out["accounts"]] == [1, None]
    assert lab.working_orders()[early["name"]] == 0


def test_settle_until_is_refused_for_other_actions_and_beyond_ten_minutes(capsys):
    acct = {"name": "x", "api_key": "key-1", "secret": "c2VjcmV0"}
    out = run_module(venue_guard, capsys, {"action": "dead_man_switch", "accounts": [acct],
                                           "settle_until": time.time() + 1})
    assert out["_rc"] == 1 and "settle_until applies to action=cancel_all only" in out["msg"], out
    out = run_module(venue_guard, capsys, {"action": "cancel_all", "accounts": [acct],
                                           "settle_until": time.time() + 3600})
    assert out["_rc"] == 1 and "settle_until must be an epoch time at most 600 seconds" in out["msg"], out
    assert "Nothing was sent" in out["msg"]


def test_a_crashed_engines_orders_are_still_cancelled(lab, capsys):
    name = "engine-002"
    wait_until(lambda: lab.working_orders()[name] >= 2, 15)
    lab.inject("crash", [name])
    assert lab.working_orders()[name] >= 2  # the crash cancelled nothing: they rest at the venue
    ops = lab.venue_accounts()[name]  # the operations key: the engine's own is not needed
    acct = {"name": name, "url": lab.state["exchange"]["url"], "api_key": ops["key"], "secret": ops["secret"]}
    out = guard(capsys, "cancel_all", [acct])
    assert out["verified"] == [name], out["_raw"]
    assert lab.working_orders()[name] == 0
    lab.inject("crash", [name], clear=True)


def test_cancel_lies_comes_out_unverified_and_named_with_its_orders(lab, capsys):
    honest, liar = lab.add_venue_account(f"honest-{next(_COUNTER)}"), lab.add_venue_account(f"liar-{next(_COUNTER)}")
    lab.rest_orders(honest, 5)
    lab.rest_orders(liar, 5)
    lab.inject("cancel-lies", [liar["name"]])
    try:
        started = time.monotonic()
        out = guard(capsys, "cancel_all", [honest, liar], timeout=2)
        took = time.monotonic() - started
        strict = run_module(venue_guard, capsys, {"action": "cancel_all", "accounts": [liar], "timeout": 1})
    finally:
        lab.inject("cancel-lies", [liar["name"]], clear=True)
    assert out["verified"] == [honest["name"]] and out["unverified"] == [liar["name"]]
    result = {a["name"]: a for a in out["accounts"]}[liar["name"]]
    assert result["status"] == "unverified" and result["working_after"] == 5 and len(result["remaining"]) == 5
    assert "still working" in result["error"]
    assert took < 5, "the deadline bounds an account that lies"
    assert strict["_rc"] == 1 and liar["name"] in strict["msg"]  # strict (the default) fails the task


def test_rate_limited_accounts_are_all_verified_within_ten_seconds(lab, capsys):
    accounts = [lab.add_venue_account(f"limited-{next(_COUNTER)}") for _ in range(5)]
    for acct in accounts:
        lab.rest_orders(acct, 20)
    lab.inject("exchange-rate-limit", [a["name"] for a in accounts])
    try:
        out = guard(capsys, "cancel_all", accounts, timeout=10)
    finally:
        lab.inject("exchange-rate-limit", [a["name"] for a in accounts], clear=True)
    assert out["unverified"] == [], out["_raw"]
    assert sum(a["retries"] for a in out["accounts"]) > 0  # the exchange did say "rate limit exceeded"
    assert lab.exchange_control("GET", "/lab/state")["accounts"][accounts[0]["name"]]["refused"].get("rate_limit")
    assert all(lab.working_orders()[a["name"]] == 0 for a in accounts)


@pytest.mark.parametrize("fault,words", [("exchange-down", "ExchangeNotAvailable"), ("exchange-auth", "API key")])
def test_an_exchange_that_is_down_or_refuses_the_key_is_named_unverified(lab, capsys, fault, words):
    acct = lab.add_venue_account(f"{fault}-{next(_COUNTER)}")
    lab.rest_orders(acct, 2)
    lab.inject(fault, [acct["name"]] if fault == "exchange-auth" else None)
    try:
        started = time.monotonic()
        out = guard(capsys, "cancel_all", [acct], timeout=2)
        took = time.monotonic() - started
    finally:
        lab.inject(fault, [acct["name"]] if fault == "exchange-auth" else None, clear=True)
    assert out["unverified"] == [acct["name"]]
    assert words in out["accounts"][0]["error"]
    assert acct["secret"] not in out["_raw"]
    assert took < 4
    assert lab.working_orders()[acct["name"]] == 2  # nothing was assumed: the orders are still there


def test_a_slow_exchange_is_waited_for_within_the_deadline(lab, account, capsys):
    lab.rest_orders(account, 3)
    lab.inject("exchange-slow", seconds=0.5)
    try:
        out = guard(capsys, "cancel_all", [account], timeout=10)
    finally:
        lab.inject("exchange-slow", clear=True)
    assert out["verified"] == [account["name"]] and out["accounts"][0]["elapsed_ms"] >= 1000


def test_the_dead_man_switch_fires_and_disarming_it_stops_it(lab, capsys):
    fire, keep = lab.add_venue_account(f"dms-{next(_COUNTER)}"), lab.add_venue_account(f"dms-{next(_COUNTER)}")
    lab.rest_orders(fire, 4)
    lab.rest_orders(keep, 4)
    armed = guard(capsys, "dead_man_switch", [fire, keep], dead_man_switch={"state": "armed", "timeout": 2})
    assert armed["_rc"] == 0 and all(a["dead_man_switch"]["armed"] for a in armed["accounts"])
    disarmed = guard(capsys, "dead_man_switch", [keep], dead_man_switch={"state": "disarmed"})
    assert disarmed["accounts"][0]["dead_man_switch"]["trigger_time"] == "0"
    assert wait_until(lambda: lab.working_orders()[fire["name"]] == 0, 10), "the switch did not fire"
    view = lab.exchange_control("GET", "/lab/state")["accounts"]
    assert view[fire["name"]]["dead_man_switch_fired"] and not view[keep["name"]]["dead_man_switch_fired"]
    assert lab.working_orders()[keep["name"]] == 4


def test_positions_report_and_reconcile_rewrites_the_table_keeping_the_old_rows(lab, capsys):
    st = lab.state["postgres"]
    db = {"login_host": st["host"], "login_port": st["port"], "login_db": st["dbname"], "login_user": st["user"],
          "login_password": st["password"]}
    conn = lab.pg_connect()
    with conn, conn.cursor() as cur:
        cur.execute("SELECT symbol, sum(quantity) FROM positions WHERE account_id = 7 AND status = 'open' "
                    "GROUP BY symbol")
        table = {s: float(q) for s, q in cur.fetchall()}
    conn.close()
    btc = table.get("BTC-USD", 0.0)
    # the venue holds what the table says, plus 1.5 BTC the table does not know about
    acct = lab.add_venue_account(f"pos-{next(_COUNTER)}", account_id=7, balances={
        "ZUSD": 1_000_000, "XXBT": btc + 1.5, "XETH": table.get("ETH-USD", 0.0), "SOL": table.get("SOL-USD", 0.0),
        "ZEUR": table.get("EUR-USD", 0.0)})
    report = guard(capsys, "positions", [acct], **db)
    assert report["_rc"] == 0, report["_raw"]
    result = report["accounts"][0]
    assert report["mismatched"] == [acct["name"]] and not report["changed"]
    assert [(m["db_symbol"], m["difference"]) for m in result["mismatches"]] == [("BTC-USD", 1.5)]
    assert set(result["not_at_venue"]) <= {"AAPL", "MSFT"}
    applied = guard(capsys, "positions", [acct], reconcile="apply", **db)
    assert applied["changed"] and applied["accounts"][0]["reconciled"] == 1
    rows = lab.pg_connect()
    with rows, rows.cursor() as cur:
        cur.execute("SELECT sum(quantity) FROM positions WHERE account_id = 7 AND symbol = 'BTC-USD' "
                    "AND status = 'open'")
        assert float(cur.fetchone()[0]) == pytest.approx(btc + 1.5)
        cur.execute("SELECT sum(quantity) FROM positions_venue_backup WHERE account_id = 7 AND symbol = 'BTC-USD'")
        assert float(cur.fetchone()[0]) == pytest.approx(btc)  # the old row, kept
    rows.close()
    again = guard(capsys, "positions", [acct], reconcile="apply", **db)
    assert again["mismatched"] == [] and not again["changed"]


def test_protect_places_a_stop_loss_for_every_uncovered_position_once(lab, capsys):
    acct = lab.add_venue_account(f"protect-{next(_COUNTER)}", balances={"ZUSD": 100_000, "XXBT": 2, "XETH": 30})
    other = lab.add_venue_account(f"protect-{next(_COUNTER)}", balances={"ZUSD": 100_000, "XXBT": 1, "ZEUR": 500})
    # two accounts: the second reads its orders with the markets the first loaded (shared, pairs included)
    out = guard(capsys, "protect", [acct, other], stop_distance=0.05)
    assert out["_rc"] == 0, out["_raw"]
    assert sorted(out["accounts"][0]["protected"]) == ["BTC/USD", "ETH/USD"]
    assert sorted(out["accounts"][1]["protected"]) == ["BTC/USD", "EUR/USD"]
    assert {o["symbol"] for o in client(other).fetch_open_orders()} == {"BTC/USD", "EUR/USD"}
    stops = {o["symbol"]: o for o in client(acct).fetch_open_orders()}
    assert stops["BTC/USD"]["amount"] == 2 and stops["ETH/USD"]["amount"] == 30
    price = client(acct).fetch_ticker("BTC/USD")["last"]
    assert stops["BTC/USD"]["stopLossPrice"] == pytest.approx(price * 0.95, rel=0.01)
    again = guard(capsys, "protect", [acct, other])
    assert not again["changed"] and len(client(acct).fetch_open_orders()) == 2


def test_keep_stops_cancels_everything_but_the_protective_stop_losses_and_is_idempotent(lab, capsys):
    acct = lab.add_venue_account(f"keep-{next(_COUNTER)}", balances={"ZUSD": 100_000, "XXBT": 2})
    assert guard(capsys, "protect", [acct])["_rc"] == 0
    lab.rest_orders(acct, 1)  # a resting buy (the stop holds all the BTC: a sell would be refused)
    working = client(acct).fetch_open_orders()
    resting = [o for o in working if not o["stopLossPrice"]]
    assert resting and len(working) == len(resting) + 1
    out = guard(capsys, "cancel_all", [acct], keep_stops=True)
    assert out["accounts"][0]["status"] == "verified" and out["accounts"][0]["stops_kept"] == 1
    assert out["accounts"][0]["working_before"] == len(resting)
    left = client(acct).fetch_open_orders()
    assert len(left) == 1 and left[0]["stopLossPrice"]
    again = guard(capsys, "cancel_all", [acct], keep_stops=True)
    assert not again["changed"] and len(client(acct).fetch_open_orders()) == 1
    everything = guard(capsys, "cancel_all", [acct])
    assert everything["changed"] and client(acct).fetch_open_orders() == []


def test_flatten_refuses_without_approval_and_sells_within_the_slippage_with_it(lab, capsys):
    acct = lab.add_venue_account(f"flat-{next(_COUNTER)}", balances={"ZUSD": 1000, "XXBT": 1.25, "SOL": 40})
    lab.rest_orders(acct, 2, distance_pct=3.0)  # a resting buy and a resting sell, which holds 0.01 BTC
    refused = run_module(venue_guard, capsys, {"action": "flatten", "accounts": [acct]})
    assert refused["_rc"] == 1 and "approved" in refused["msg"] and "nothing was sent" in refused["msg"]
    assert client(acct).fetch_balance()["total"]["BTC"] == 1.25
    out = guard(capsys, "flatten", [acct], approved=True, max_slippage=0.01, time_limit=10)
    assert out["_rc"] == 0, out["_raw"]
    sold = {s["symbol"]: s for s in out["accounts"][0]["sold"]}
    assert set(sold) == {"BTC/USD", "SOL/USD"}
    for s in sold.values():
        assert 0 <= s["slippage"] <= 0.01
    total = client(acct).fetch_balance()["total"]
    assert total.get("BTC", 0) == 0 and total.get("SOL", 0) == 0 and total["USD"] > 0
    assert client(acct).fetch_open_orders() == []


def test_wrong_options_name_the_option_and_send_nothing(capsys):
    out = run_module(venue_guard, capsys, {"action": "cancel_all", "accounts": [{"name": "x", "api_key": "key-1"}]})
    assert out["_rc"] == 1 and "accounts[0] (x).secret is required" in out["msg"]
    out = run_module(venue_guard, capsys, {"action": "cancel_all", "accounts": [
        {"name": "x", "api_key": "key-1", "secret": "secret-1", "exchange": "nosuchexchange"}]})
    assert out["_rc"] == 1 and "accounts[0] (x).exchange" in out["msg"]


# last: it halts the module lab's engines
def test_the_contain_phase_leaves_no_venue_key_in_the_runners_artifacts_or_the_record(lab, tmp_path):
    """`tradeops run p0_outage --tags contain`: every engine's orders cancelled at the venue, and no API key or
    secret of any account in anything the run wrote (events, artifacts, the incident record and draft)."""
    import os
    import subprocess

    from tests.conftest import VENV_BIN, ansible_env

    env = ansible_env(lab.lab_dir, TRADEOPS_RUNS_DIR=str(tmp_path / "runs"))
    proc = subprocess.run([str(VENV_BIN / "tradeops"), "run", "p0_outage", "--tags", "contain",
                           "-e", f"incident_report_dir={tmp_path / 'reports'}"],
                          env={**env, "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}"}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CONTAINED: trading halted, verified" in proc.stdout
    working = lab.working_orders(exclude_stops=True)
    engines = [e["name"] for e in lab.state["engines"]]
    assert {name: working[name] for name in engines} == dict.fromkeys(engines, 0)  # the engines' accounts
    secrets = [v.encode() for a in lab.venue_accounts().values() for v in (a["key"], a["secret"])]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5
    leaked = [str(p) for p in written if any(s in p.read_bytes() for s in secrets)]
    assert leaked == []
