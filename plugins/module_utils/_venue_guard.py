# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``venue_guard``: the kill switch at the exchange, over many accounts at once, every action read back.

:class:`VenueGuard` runs one action on every account concurrently (:func:`fan_out`), each account within
its own deadline:

* ``cancel_all``: (arm the dead man's switch first, if asked), cancel every working order (the exchange's
  cancel-all where it has one, else per order), then read the open orders back, cancelling what is left,
  until none is left: ``verified``. An account whose orders cannot be read back empty before its deadline
  is ``unverified`` and named with the orders still working, never assumed done. With ``settle_until`` (the
  end of the engines' quiesce after their verified halt), every verified account is read back once more when
  that time has come, and an order that landed late (an engine had it in flight when it was halted) is
  cancelled and read back the same way: the cancel does not wait for the quiesce, its proof does.
* ``dead_man_switch``: arm (or heartbeat: arm again) or disarm the exchange's cancel-all-after timer.
* ``positions``: the venue's positions (spot: the balances of every asset but the quote currency)
  against the positions table; ``reconcile: apply`` rewrites the table from the venue, copying the old
  rows into a backup table first, in one transaction.
* ``protect``: a stop-loss for every position not covered by one, at ``stop_distance`` below the price;
  read back.
* ``flatten``: sell every position with immediate-or-cancel limit orders no worse than ``max_slippage``
  from the price when it started, within ``time_limit``; the realised slippage reported; read back.
  It refuses to run without ``approved``.

Check mode reads only. Nothing here knows Ansible: the module builds a :class:`VenueGuard` and calls
:meth:`VenueGuard.run`.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import functools
import math
import time

from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    DeadlineExceeded,
    TradeopsError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._venue import ClientPool, MarketCache, VenueClient
from ansible_collections.tradeops.remediation.plugins.module_utils import _postgres

ACTIONS = ("cancel_all", "dead_man_switch", "positions", "protect", "flatten")
VERIFIED, UNVERIFIED, FAILED, OK, MISMATCH = "verified", "unverified", "failed", "ok", "mismatch"
READBACK_PAUSE = 0.1
# settle_until is the end of a quiesce (a few order intervals); further away than this is a mistake, not a wait
MAX_SETTLE = 600.0
DUST = 1e-9
BACKUP_COLUMNS = "backed_up_at timestamptz NOT NULL DEFAULT now(), backup_reason text"


def _num(value):
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _cancel_count(answer):
    """How many orders an exchange's cancel-all says it cancelled, where it says (Kraken: ``result.count``)."""
    for item in answer if isinstance(answer, list) else [answer]:
        info = item.get("info") if isinstance(item, dict) else None
        result = info.get("result") if isinstance(info, dict) else None
        if isinstance(result, dict) and isinstance(result.get("count"), int):
            return result["count"]
    return None


def _price_at_least(ex, symbol, price):
    """``price`` on the market's price grid, rounded up (a sell's floor must not slip past max_slippage)."""
    rounded = float(ex.price_to_precision(symbol, price))
    tick = _num((ex.markets[symbol].get("precision") or {}).get("price"))
    if rounded < price and 0 < tick < price:
        rounded = float(ex.price_to_precision(symbol, math.ceil(price / tick - 1e-9) * tick))
    return rounded


def _protective(order):
    """A stop-loss sell: what protect places on a position (it only ever reduces it)."""
    return order.get("side") == "sell" and bool(order.get("stopLossPrice"))


def _order_view(order):
    return {"id": order.get("id"), "symbol": order.get("symbol"), "side": order.get("side"),
            "type": order.get("type"), "amount": order.get("amount"),
            "price": order.get("price") if order.get("price") is not None else order.get("stopLossPrice")}


class VenueGuard:
    """One action over many accounts. ``accounts`` are :class:`VenueAccount` records."""

    def __init__(self, action, accounts, timeout=10.0, request_timeout=3.0, concurrency=20, check_mode=False,
                 dead_man_switch=None, stop_distance=0.05, max_slippage=0.01, time_limit=60.0, approved=False,
                 reconcile="report", positions_db=None, positions_table="positions", symbols=None,
                 tolerance=1e-6, keep_stops=False, settle_until=None):
        if action not in ACTIONS:
            raise ValidationError("action must be one of %s, got %r" % (", ".join(ACTIONS), action))
        if action == "flatten" and approved is not True:
            raise ValidationError(
                "flatten sells every position at the venue: it runs only with approved=true, given by a person "
                "(the liquidate playbook's approval gate); nothing was sent")
        if action == "positions" and not positions_db:
            raise ValidationError("positions needs the positions database: set login_host/login_db (or "
                                  "login_user) to reach it")
        self.action = action
        self.accounts = accounts
        self.timeout = float(timeout)
        self.request_timeout = float(request_timeout)
        self.concurrency = int(concurrency)
        self.check_mode = bool(check_mode)
        self.dms = dead_man_switch  # {"state": armed|disarmed, "timeout": seconds} or None
        self.stop_distance = float(stop_distance)
        self.max_slippage = float(max_slippage)
        self.time_limit = float(time_limit)
        self.reconcile = reconcile
        self.positions_db = positions_db
        self.positions_table = positions_table
        self.symbols = dict(symbols or {})
        self.tolerance = float(tolerance)
        self.keep_stops = bool(keep_stops)
        if settle_until is not None:
            if action != "cancel_all":
                raise ValidationError("settle_until applies to action=cancel_all only, not %s" % action)
            settle_until = float(settle_until)
            if not (math.isfinite(settle_until) and settle_until - time.time() <= MAX_SETTLE):
                raise ValidationError("settle_until must be an epoch time at most %d seconds from now, got %r"
                                      % (MAX_SETTLE, settle_until))
        self.settle_until = settle_until
        self._read_at = {}
        self.markets = MarketCache()
        self.pool = ClientPool()

    # -- the fleet -----------------------------------------------------------------------------------------
    def run(self):
        started, started_at = time.monotonic(), time.time()
        timeout = self.timeout + (self.time_limit if self.action == "flatten" else 0.0)
        settle = None
        try:
            results = fan_out(self.accounts, self._one, self.concurrency, timeout, self._on_error)
            # every read-back so far came before the settle time: read the verified accounts back again after it
            if self.settle_until is not None and self.settle_until > started_at and not self.check_mode:
                settle = self._settle(results, timeout)
        finally:
            self.pool.close()
        out = {"action": self.action, "accounts": results,
               "elapsed_ms": int((time.monotonic() - started) * 1000),
               "changed": any(r.get("changed") for r in results)}
        if settle is not None:
            out.update(settle)
        if self.action == "cancel_all":
            out["verified"] = [r["name"] for r in results if r["status"] == VERIFIED]
            out["unverified"] = [r["name"] for r in results if r["status"] != VERIFIED]
            out["working_orders_before"] = sum(r.get("working_before") or 0 for r in results)
            out["working_orders_after"] = sum(r.get("working_after") or 0 for r in results
                                              if r.get("working_after") is not None)
        elif self.action == "positions":
            out["mismatched"] = [r["name"] for r in results if r["status"] == MISMATCH]
        out["failed_accounts"] = [r["name"] for r in results if r["status"] in (FAILED, UNVERIFIED)]
        return out

    def _on_error(self, account, elapsed, exc):
        if exc is None:
            error = "no answer within the deadline of %.1fs (abandoned after %.1fs)" % (self.timeout, elapsed)
        else:
            error = str(exc) if isinstance(exc, TradeopsError) else "%s: %s" % (type(exc).__name__, exc)
        status = UNVERIFIED if self.action == "cancel_all" else FAILED
        return {"name": account.name, "exchange": account.exchange, "status": status, "changed": False,
                "error": error}

    def _settle(self, results, timeout):
        """Wait until ``settle_until``, then read every verified account back once more (cancelling what landed
        late), unless its last read was sent after ``settle_until`` already (late in a large first pass); each
        account's second pass has its own deadline of ``timeout``. Its outcome replaces the first."""
        waited = max(0.0, min(self.settle_until - time.time(), MAX_SETTLE))
        time.sleep(waited)
        first = dict((r["name"], r) for r in results if r.get("status") == VERIFIED
                     and self._read_at.get(r["name"], 0.0) < self.settle_until)
        again = [a for a in self.accounts if a.name in first]
        late = fan_out(again, functools.partial(self._one, step=self._late_orders), self.concurrency, timeout,
                       self._on_error)
        for second in late:
            merged = first[second["name"]]
            for key in ("status", "working_after", "remaining", "late_orders", "error"):
                if key in second:
                    merged[key] = second[key]
            for key in ("cancel_rounds", "requests", "retries", "elapsed_ms"):
                merged[key] = (merged.get(key) or 0) + (second.get(key) or 0)
            merged["cancel_errors"] = merged.get("cancel_errors", []) + second.get("cancel_errors", [])
            if not merged["cancel_errors"]:
                del merged["cancel_errors"]
            merged["changed"] = bool(merged.get("changed") or second.get("changed"))
        return {"settled_s": round(waited, 3), "late_orders": sum(r.get("late_orders") or 0 for r in late),
                "read_again": len(late)}

    def _one(self, account, deadline, step=None):
        client = VenueClient(account, self.request_timeout, self.markets, self.pool)
        result = {"name": account.name, "exchange": account.exchange, "changed": False}
        started = time.monotonic()
        try:
            client.ready(deadline)
            (step or getattr(self, "_" + self.action))(client, deadline, result)
        except TradeopsError as err:
            result.setdefault("status", UNVERIFIED if self.action == "cancel_all" else FAILED)
            if result["status"] in (VERIFIED, OK):
                result["status"] = FAILED
            result["error"] = str(err)
        finally:
            client.close()
        result["requests"], result["retries"] = client.requests, client.retries
        result["elapsed_ms"] = int((time.monotonic() - started) * 1000)
        return result

    # -- cancel_all ----------------------------------------------------------------------------------------
    def _open(self, client, deadline):
        started = time.time()
        orders = client.call(deadline, "read open orders", client.exchange.fetch_open_orders)
        # when the last read of each account was sent (one key per account: no two threads write the same one)
        self._read_at[client.account.name] = started
        return orders

    def _cancel_all(self, client, deadline, result):
        ex = client.exchange
        result["status"] = UNVERIFIED
        if self.check_mode:
            before = [o for o in self._open(client, deadline) if not (self.keep_stops and _protective(o))]
            result.update(working_before=len(before), status=VERIFIED if not before else UNVERIFIED,
                          working_after=len(before), would_cancel=len(before), changed=bool(before),
                          remaining=[_order_view(o) for o in before])
            return
        if self.dms and self.dms.get("state") == "armed":
            # not a change by itself: re-arming is the heartbeat, and the switch's state cannot be read back
            result["dead_man_switch"] = self._arm(client, deadline, self.dms.get("timeout"))
        rounds = 0
        kept = []
        if self.keep_stops:
            # protective stop-losses stay (seed 002: positions protected); everything else is cancelled
            open_orders = self._open(client, deadline)
            kept = [o for o in open_orders if _protective(o)]
            open_orders = [o for o in open_orders if not _protective(o)]
            result["working_before"] = len(open_orders)
            if open_orders and not kept and ex.has.get("cancelAllOrders"):
                client.call(deadline, "cancel all orders", ex.cancel_all_orders)
                rounds = 1
                open_orders = self._open(client, deadline)
        elif ex.has.get("cancelAllOrders"):
            # the exchange's own cancel-all first, without reading the book: it is what stops the risk
            answer = client.call(deadline, "cancel all orders", ex.cancel_all_orders)
            rounds = 1
            result["working_before"] = _cancel_count(answer)
            open_orders = self._open(client, deadline)
        else:
            open_orders = self._open(client, deadline)
            result["working_before"] = len(open_orders)
        result["stops_kept"] = len(kept)
        if result["working_before"]:
            result["changed"] = True
        self._until_none(client, deadline, result, open_orders, rounds)

    def _late_orders(self, client, deadline, result):
        """After ``settle_until``: what landed since the first read-back, cancelled and read back until none."""
        result["status"] = UNVERIFIED
        open_orders = [o for o in self._open(client, deadline) if not (self.keep_stops and _protective(o))]
        result["late_orders"] = len(open_orders)
        self._until_none(client, deadline, result, open_orders, 0)

    def _until_none(self, client, deadline, result, open_orders, rounds):
        """Cancel ``open_orders`` one by one and read back, until the exchange lists none (``verified``) or the
        deadline runs out (``unverified``, the orders still working named)."""
        ex = client.exchange
        while True:
            result["working_after"] = len(open_orders)
            result["remaining"] = [_order_view(o) for o in open_orders]
            result["cancel_rounds"] = rounds
            if not open_orders:
                result["status"] = VERIFIED
                return
            try:
                if deadline.remaining() < READBACK_PAUSE:
                    raise DeadlineExceeded("deadline")
                rounds += 1
                result["changed"] = True
                for order in open_orders:  # what a cancel-all left (or no cancel-all): one by one
                    try:
                        client.call(deadline, "cancel order %s" % order.get("id"), ex.cancel_order,
                                    order.get("id"), order.get("symbol"))
                    except DeadlineExceeded:
                        raise
                    except BackendError as err:
                        result.setdefault("cancel_errors", []).append(str(err))
                time.sleep(min(READBACK_PAUSE, deadline.remaining()))
                open_orders = [o for o in self._open(client, deadline) if not (self.keep_stops and _protective(o))]
            except DeadlineExceeded:
                result["cancel_rounds"] = rounds
                result["error"] = ("%d order(s) still working when the deadline of %.1fs ran out, after %d cancel "
                                   "round(s): the exchange answered the cancels but the orders stay (cancel them at "
                                   "the venue by hand, or have the venue's risk desk do it)"
                                   % (len(open_orders), self.timeout, rounds))
                return

    # -- dead man's switch ---------------------------------------------------------------------------------
    def _arm(self, client, deadline, seconds):
        ex = client.exchange
        if not ex.has.get("cancelAllOrdersAfter"):
            raise BackendError("%s has no dead man's switch (cancelAllOrdersAfter) in ccxt"
                               % client.account.describe())
        seconds = int(seconds or 0)
        answer = client.call(deadline, "set the dead man's switch", ex.cancel_all_orders_after, seconds * 1000)
        payload = answer.get("result", answer) if isinstance(answer, dict) else {}
        return {"armed": seconds > 0, "timeout": seconds,
                "trigger_time": payload.get("triggerTime") if isinstance(payload, dict) else None,
                "current_time": payload.get("currentTime") if isinstance(payload, dict) else None}

    def _dead_man_switch(self, client, deadline, result):
        state = (self.dms or {}).get("state", "armed")
        seconds = (self.dms or {}).get("timeout") if state == "armed" else 0
        if self.check_mode:
            result.update(status=OK, changed=True, would=state)
            return
        dms = self._arm(client, deadline, seconds)
        if state == "armed" and not dms["trigger_time"] or state == "disarmed" and dms["trigger_time"] not in (
                "0", 0, None):
            raise BackendError("%s: the exchange did not confirm the dead man's switch %s (answer: %r)"
                               % (client.account.describe(), state, dms))
        result.update(status=OK, changed=True, dead_man_switch=dms)

    # -- positions -----------------------------------------------------------------------------------------
    def _venue_positions(self, client, deadline):
        balance = client.call(deadline, "read balances", client.exchange.fetch_balance)
        quote = client.account.quote
        out = {}
        for code, total in (balance.get("total") or {}).items():
            if code == quote:
                continue
            symbol = "%s/%s" % (code, quote)
            if symbol in client.exchange.markets and abs(_num(total)) > DUST:
                out[symbol] = _num(total)
        return out

    def _db_symbol(self, symbol):
        return self.symbols.get(symbol) or symbol.replace("/", "-")

    def _positions(self, client, deadline, result):
        account = client.account
        if account.account_id is None:
            raise ValidationError("%s: account_id is required for positions (the positions table's account)"
                                  % account.name)
        venue = self._venue_positions(client, deadline)
        conn = _postgres.connect(self.positions_db, deadline, application_name="tradeops.venue_guard")
        try:
            with conn:
                with conn.cursor() as cur:
                    db = self._db_positions(cur, account.account_id)
                    listed = dict((self._db_symbol(s), s) for s in client.exchange.markets
                                  if s.endswith("/" + account.quote))
                    mismatches = []
                    for db_symbol, venue_symbol in sorted(listed.items()):
                        have, want = db.get(db_symbol, 0.0), venue.get(venue_symbol, 0.0)
                        if abs(have - want) > self.tolerance:
                            mismatches.append({"symbol": venue_symbol, "db_symbol": db_symbol, "venue": want,
                                               "db": have, "difference": round(want - have, 10)})
                    result.update(
                        account_id=account.account_id,
                        venue=dict((self._db_symbol(s), q) for s, q in venue.items()),
                        db=db, mismatches=mismatches,
                        not_at_venue=sorted(s for s in db if s not in listed),
                        status=MISMATCH if mismatches else OK)
                    if mismatches and self.reconcile == "apply":
                        result["changed"] = True
                        if not self.check_mode:
                            self._rewrite(cur, account.account_id, mismatches)
                            result["reconciled"] = len(mismatches)
                            result["status"] = OK
        finally:
            conn.close()

    def _table(self, suffix=""):
        from psycopg2 import sql
        parts = (self.positions_table + suffix).split(".")
        return sql.SQL(".").join(sql.Identifier(p) for p in parts)

    def _db_positions(self, cur, account_id):
        from psycopg2 import sql
        cur.execute(sql.SQL("SELECT symbol, sum(quantity) FROM {} WHERE account_id = %s AND status = 'open' "
                            "GROUP BY symbol").format(self._table()), (account_id,))
        return dict((row[0], float(row[1] or 0)) for row in cur.fetchall())

    def _rewrite(self, cur, account_id, mismatches):
        """Back the old rows up (nothing lost), then one open row per symbol with the venue's quantity."""
        from psycopg2 import sql
        table, backup = self._table(), self._table("_venue_backup")
        cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (LIKE {}, " + BACKUP_COLUMNS + ")").format(backup, table))
        for m in mismatches:
            where = sql.SQL("account_id = %s AND symbol = %s AND status = 'open'")
            args = (account_id, m["db_symbol"])
            cur.execute(sql.SQL("INSERT INTO {} SELECT *, now(), %s FROM {} WHERE ").format(backup, table) + where,
                        ("venue reconcile: venue %s, table %s" % (m["venue"], m["db"]),) + args)
            cur.execute(sql.SQL("SELECT sum(quantity * entry_price) / nullif(sum(quantity), 0) FROM {} WHERE ")
                        .format(table) + where, args)
            entry = cur.fetchone()[0]
            cur.execute(sql.SQL("DELETE FROM {} WHERE ").format(table) + where, args)
            if m["venue"] > DUST:
                cur.execute(sql.SQL("INSERT INTO {} (account_id, symbol, quantity, entry_price, status, updated_at) "
                                    "VALUES (%s, %s, %s, %s, 'open', now())").format(table),
                            (account_id, m["db_symbol"], m["venue"], entry))

    # -- protect -------------------------------------------------------------------------------------------
    def _covered(self, open_orders, symbol):
        return sum(_num(o.get("amount")) - _num(o.get("filled")) for o in open_orders
                   if o.get("symbol") == symbol and o.get("side") == "sell" and o.get("stopLossPrice"))

    def _held(self, open_orders, symbol):
        """What working orders that are not stop-losses hold of a position (a resting sell reserves it)."""
        return sum(_num(o.get("amount")) - _num(o.get("filled")) for o in open_orders
                   if o.get("symbol") == symbol and o.get("side") == "sell" and not o.get("stopLossPrice"))

    def _protect(self, client, deadline, result):
        ex = client.exchange
        positions = self._venue_positions(client, deadline)
        open_orders = self._open(client, deadline)
        placed, protected, unprotected, held = [], [], [], {}
        for symbol, amount in sorted(positions.items()):
            minimum = _num(((ex.markets[symbol].get("limits") or {}).get("amount") or {}).get("min"))
            reserved = self._held(open_orders, symbol)
            gap = amount - self._covered(open_orders, symbol) - reserved
            if reserved > DUST:
                held[symbol] = reserved
            if gap <= max(minimum, DUST):
                protected.append(symbol)
                continue
            if self.check_mode:
                placed.append({"symbol": symbol, "amount": gap, "would_place": True})
                continue
            last = _num(client.call(deadline, "read %s price" % symbol, ex.fetch_ticker, symbol).get("last"))
            stop = float(ex.price_to_precision(symbol, last * (1 - self.stop_distance)))
            for attempt in range(3):  # a trading engine may rest a sell meanwhile: read again, place the rest
                try:
                    order = client.call(deadline, "place a stop-loss on %s" % symbol, ex.create_order, symbol,
                                        "market", "sell", float(ex.amount_to_precision(symbol, gap)), None,
                                        {"stopLossPrice": stop})
                    placed.append({"symbol": symbol, "amount": gap, "stop_price": stop, "id": order.get("id")})
                    break
                except BackendError as err:
                    if attempt == 2 or "InsufficientFunds" not in str(err):
                        unprotected.append({"symbol": symbol, "amount": gap, "error": str(err)})
                        break
                    open_orders = self._open(client, deadline)
                    reserved = self._held(open_orders, symbol)
                    gap = amount - self._covered(open_orders, symbol) - reserved
                    held[symbol] = reserved
                    if gap <= max(minimum, DUST):
                        protected.append(symbol)
                        break
        result["changed"] = bool(placed)
        if not self.check_mode and placed:
            time.sleep(min(READBACK_PAUSE, deadline.remaining()))
            open_orders = self._open(client, deadline)
            for p in placed:
                symbol = p["symbol"]
                minimum = _num(((ex.markets[symbol].get("limits") or {}).get("amount") or {}).get("min"))
                if self._covered(open_orders, symbol) + self._held(open_orders, symbol) + max(minimum, DUST) \
                        < positions[symbol]:
                    unprotected.append({"symbol": symbol, "amount": p["amount"],
                                        "error": "the stop-loss is not among the open orders when read back"})
                else:
                    protected.append(symbol)
        # a part held by a working sell order is reported, not protected twice (the exchange would refuse it)
        result.update(positions=positions, placed=placed, protected=sorted(set(protected)),
                      held_by_orders=held, unprotected=unprotected, status=FAILED if unprotected else VERIFIED)

    # -- flatten -------------------------------------------------------------------------------------------
    def _flatten(self, client, deadline, result):
        ex = client.exchange
        positions = self._venue_positions(client, deadline)
        if self.check_mode:
            result.update(status=OK, positions=positions, changed=bool(positions), would_sell=positions)
            return
        if positions and self._open(client, deadline):  # resting orders hold the funds a sale needs
            self._cancel_all(client, deadline, {})
        ends = time.monotonic() + self.time_limit
        sold = []
        for symbol, amount in sorted(positions.items()):
            minimum = _num(((ex.markets[symbol].get("limits") or {}).get("amount") or {}).get("min"))
            start_price = _num(client.call(deadline, "read %s price" % symbol, ex.fetch_ticker, symbol).get("last"))
            floor = _price_at_least(ex, symbol, start_price * (1 - self.max_slippage))
            left, proceeds, filled = amount, 0.0, 0.0
            while left > max(minimum, DUST) and time.monotonic() < ends:
                order = client.call(deadline, "sell %s" % symbol, ex.create_order, symbol, "limit", "sell",
                                    float(ex.amount_to_precision(symbol, left)), floor, {"timeInForce": "IOC"})
                got = client.call(deadline, "read the sale of %s" % symbol, ex.fetch_order, order["id"], symbol)
                qty = _num(got.get("filled"))
                proceeds += qty * _num(got.get("average") or got.get("price"))
                filled += qty
                left = self._venue_positions(client, deadline).get(symbol, 0.0)
                if qty <= DUST:  # the price is beyond max_slippage: wait for it within the time limit
                    time.sleep(min(0.5, max(0.0, ends - time.monotonic())))
            average = proceeds / filled if filled else None
            sold.append({"symbol": symbol, "amount": amount, "sold": filled, "left": left,
                         "start_price": start_price, "average_price": average,
                         "slippage": round((start_price - average) / start_price, 6) if average else None})
        result["changed"] = any(s["sold"] > 0 for s in sold)
        after = self._venue_positions(client, deadline)
        left = dict((s, q) for s, q in after.items() if q > max(DUST, _num(
            ((ex.markets[s].get("limits") or {}).get("amount") or {}).get("min"))))
        result.update(sold=sold, positions_after=after, status=VERIFIED if not left else FAILED)
        if left:
            result["error"] = ("positions left after the time limit of %.0fs (price beyond max_slippage %.4f): %s"
                               % (self.time_limit, self.max_slippage, ", ".join(sorted(left))))
