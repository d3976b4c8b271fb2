"""The lab exchange: Kraken's spot REST API, simulated on the loopback, faithfully enough for ccxt.

``ccxt.kraken`` works against it unmodified, with its ``urls['api']`` pointed at the lab. It implements:

* public: ``Time``, ``SystemStatus``, ``Assets``, ``AssetPairs``, ``Ticker``, ``Depth``;
* private (``API-Key`` + ``API-Sign`` checked exactly as Kraken checks them: HMAC-SHA512, keyed with the
  base64-decoded secret, of the URI path followed by SHA-256(nonce + POST data); the nonce must grow per
  key): ``Balance``, ``BalanceEx``, ``OpenOrders``, ``ClosedOrders``, ``QueryOrders``, ``TradesHistory``, ``AddOrder``
  (limit, market, stop-loss; ``timeinforce=IOC``; ``reduce_only``; relative prices ``+1.5%``/``-20``),
  ``CancelOrder``, ``CancelAll``, ``CancelAllOrdersAfter`` (the dead man's switch).

Each pair's price moves (a random walk, one step per 0.1 s); resting orders fill when the price crosses
them, stop-losses trigger, balances move with every fill (Kraken's fees). Kraken's own errors are used:
``EAPI:Invalid key``, ``EAPI:Invalid signature``, ``EAPI:Invalid nonce``, ``EAPI:Rate limit exceeded``
(its call counter: +1 per call, decaying), ``EOrder:Insufficient funds``, ``EOrder:Unknown order``, and
HTTP 503 while the exchange is down.

Faults (``POST /lab/faults``): ``exchange-down``, ``exchange-rate-limit``, ``exchange-auth`` (the key is
revoked), ``cancel-lies`` (cancel calls answer success and cancel nothing), ``exchange-slow`` (every answer
is late). The control API (``/lab/*``, header ``X-Lab-Token``) also moves prices, lists orders and fills,
and creates accounts. Run as ``python -m tradeops.lab.exchange --lab-dir DIR``: it reads
``exchange-config.json`` and writes its port to ``exchange-runtime.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import email.utils
import hashlib
import hmac
import json
import logging
import math
import os
import random
import secrets
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .state import LOOPBACK, read_json, write_json_atomic
from .web import Request, Response, serve_connection

log = logging.getLogger("tradeops.lab.exchange")

CONFIG_FILE = "exchange-config.json"
RUNTIME_FILE = "exchange-runtime.json"
LOG_FILE = "exchange.log"

FAULT_DOWN = "exchange-down"
FAULT_RATE_LIMIT = "exchange-rate-limit"
FAULT_AUTH = "exchange-auth"
FAULT_CANCEL_LIES = "cancel-lies"
FAULT_SLOW = "exchange-slow"
FAULT_KEY_EXPIRED = "exchange-key-expired"  # the engines' API keys expire (seed 002); held by the keys, not FAULTS
FAULT_WS_DOWN = "ws-down"  # the market-data feed wedges (wsfeed.py); not one of FAULTS: the feed holds it
FAULTS = (FAULT_DOWN, FAULT_RATE_LIMIT, FAULT_AUTH, FAULT_CANCEL_LIES, FAULT_SLOW)
ACCOUNT_FAULTS = (FAULT_RATE_LIMIT, FAULT_AUTH, FAULT_CANCEL_LIES)  # per account; the others are venue-wide
DEFAULT_SLOW_SECONDS = 2.0

TICK = 0.1
VOLATILITY = 0.0006  # per tick: about 1.5 % over a minute
TAKER_FEE = 0.0026
MAKER_FEE = 0.0016
SPREAD = 0.0002
# Kraken's API counter (Intermediate tier): +1 per call, max 20, decays 0.5/s. Trading calls (AddOrder,
# CancelOrder, CancelAll) have their own limiter, not modelled unless the rate-limit fault is on.
COUNTER_MAX = 20.0
COUNTER_DECAY = 0.5
# Under the rate-limit fault: every call counts, against a much smaller budget.
FAULT_COUNTER_MAX = 1.0
FAULT_COUNTER_DECAY = 1.0
TRADING_CALLS = frozenset(("AddOrder", "CancelOrder", "CancelAll", "CancelAllOrdersAfter"))
MAX_DMS_TIMEOUT = 86400

# Kraken's ids: pair -> (altname, base asset, quote asset, start price, price decimals, ordermin, DB symbol)
PAIRS: dict[str, tuple[str, str, str, float, int, str, str]] = {
    "XXBTZUSD": ("XBTUSD", "XXBT", "ZUSD", 65000.0, 1, "0.00005", "BTC-USD"),
    "XETHZUSD": ("ETHUSD", "XETH", "ZUSD", 3400.0, 2, "0.002", "ETH-USD"),
    "SOLUSD": ("SOLUSD", "SOL", "ZUSD", 150.0, 2, "0.02", "SOL-USD"),
    "ZEURZUSD": ("EURUSD", "ZEUR", "ZUSD", 1.08, 5, "0.5", "EUR-USD"),
}
# asset -> (altname, decimals, display decimals)
ASSETS: dict[str, tuple[str, int, int]] = {
    "XXBT": ("XBT", 10, 5),
    "XETH": ("ETH", 10, 5),
    "SOL": ("SOL", 10, 5),
    "ZEUR": ("EUR", 4, 2),
    "ZUSD": ("USD", 4, 2),
}
LOT_DECIMALS = 8


def pair_for_symbol(symbol: str) -> str | None:
    """The Kraken pair id trading the lab's DB symbol (``BTC-USD`` -> ``XXBTZUSD``), or None."""
    for pair, spec in PAIRS.items():
        if spec[6] == symbol:
            return pair
    return None


def new_account_keys() -> tuple[str, str]:
    """A Kraken-shaped API key (56 base64 characters) and private key (base64 of 64 bytes)."""
    return base64.b64encode(secrets.token_bytes(42)).decode(), base64.b64encode(secrets.token_bytes(64)).decode()


def kraken_signature(urlpath: str, body: bytes, nonce: str, secret: str) -> str:
    """Kraken's API-Sign: base64(HMAC-SHA512(b64decode(secret), urlpath + SHA256(nonce + body)))."""
    digest = hashlib.sha256(nonce.encode() + body).digest()
    mac = hmac.new(base64.b64decode(secret), urlpath.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def _slack(amount: float) -> float:
    """What float rounding may cost an amount that went through a decimal string (8 decimals at Kraken)."""
    return 1e-8 + abs(amount) * 1e-12


def _floor(value: float, decimals: int) -> str:
    """A balance as the exchange reports it: cut to the asset's decimals, never rounded up (an order for all
    of a reported balance must be possible)."""
    scale = 10 ** decimals
    return _fmt(math.floor(value * scale + 1e-6) / scale, decimals)


def _fmt(value: float, decimals: int = LOT_DECIMALS) -> str:
    return f"{value:.{decimals}f}"


def _txid(prefix: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

    def part(n: int) -> str:
        return "".join(secrets.choice(alphabet) for _ in range(n))

    return f"{prefix}{part(5)}-{part(5)}-{part(6)}"


class KrakenError(Exception):
    """Answered as ``{"error": [code], "result": {}}`` with HTTP 200, as Kraken does."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Order:
    txid: str
    account: str
    pair: str
    side: str
    ordertype: str  # limit | market | stop-loss
    vol: float
    price: float  # the limit price, or the stop's trigger price; 0 for market
    opentm: float
    userref: int = 0
    ioc: bool = False
    reduce_only: bool = False
    status: str = "open"  # pending | open | closed | canceled | expired
    vol_exec: float = 0.0
    avg_price: float = 0.0
    fee: float = 0.0
    closetm: float = 0.0
    reason: str | None = None

    def descr(self) -> dict[str, Any]:
        altname, _, _, _, decimals, _, _ = PAIRS[self.pair]
        px = _fmt(self.price, decimals)
        if self.ordertype == "market":
            text = f"{self.side} {_fmt(self.vol)} {altname} @ market"
        else:
            text = f"{self.side} {_fmt(self.vol)} {altname} @ {self.ordertype.replace('-', ' ')} {px}"
        return {"pair": altname, "type": self.side, "ordertype": self.ordertype,
                "price": px if self.ordertype != "market" else "0", "price2": "0", "leverage": "none",
                "order": text, "close": ""}

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "refid": None, "userref": self.userref, "status": self.status, "opentm": round(self.opentm, 4),
            "starttm": 0, "expiretm": 0, "descr": self.descr(), "vol": _fmt(self.vol),
            "vol_exec": _fmt(self.vol_exec), "cost": _fmt(self.vol_exec * self.avg_price, 5),
            "fee": _fmt(self.fee, 5), "price": _fmt(self.avg_price, 5),
            "stopprice": _fmt(self.price, 5) if self.ordertype == "stop-loss" else "0.00000",
            "limitprice": "0.00000", "misc": "", "oflags": "fciq",
        }
        if self.reduce_only:
            out["reduce_only"] = True
        if self.status in ("closed", "canceled", "expired"):
            out["closetm"] = round(self.closetm, 4)
            out["reason"] = self.reason
        return out


@dataclass
class ApiKey:
    secret: str
    label: str
    nonce: int = 0
    expired: bool = False  # seed 002's expired API key: refused as an invalid key


@dataclass
class Account:
    """A venue account: its balances and orders, and its API keys (each with its own nonce), as at Kraken,
    where a trading engine and the operations team use different keys of the same account."""

    name: str
    keys: dict[str, ApiKey]
    balances: dict[str, float]
    account_id: int | None = None
    counter: float = 0.0
    counter_at: float = field(default_factory=time.monotonic)
    dms_trigger: float | None = None  # wall time at which everything is cancelled, if armed
    dms_fired: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)

    def reserved(self, asset: str, orders: dict[str, Order]) -> float:
        total = 0.0
        for o in orders.values():
            if o.account != self.name or o.status != "open":
                continue
            _, base, quote, _, _, _, _ = PAIRS[o.pair]
            left = o.vol - o.vol_exec
            if o.side == "sell" and asset == base:
                total += left
            elif o.side == "buy" and asset == quote:
                total += left * o.price
        return total


class Exchange:
    """The venue: accounts, orders, fills and prices, in one asyncio thread (no locks needed)."""

    def __init__(self, accounts: dict[str, dict[str, Any]], seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.prices = {pair: spec[3] for pair, spec in PAIRS.items()}
        self.accounts: dict[str, Account] = {}
        self.by_key: dict[str, Account] = {}
        for name, spec in accounts.items():
            self.add_account(name, spec["keys"], spec.get("balances") or {}, spec.get("account_id"))
        self.orders: dict[str, Order] = {}
        self.open_by_account: dict[str, dict[str, Order]] = {}
        self.trades: list[dict[str, Any]] = []
        self.faults: dict[str, Any] = {}  # venue-wide: {fault: seconds or True}
        self.account_faults: dict[str, set[str]] = {}  # fault -> account names
        self.requests = 0

    # -- accounts ------------------------------------------------------------------------------------------
    def add_account(self, name: str, keys: dict[str, dict[str, str]], balances: dict[str, Any],
                    account_id: int | None = None) -> Account:
        """``keys``: ``{label: {"key", "secret"}}``."""
        acct = Account(name, {k["key"]: ApiKey(k["secret"], label) for label, k in keys.items()},
                       {a: float(v) for a, v in balances.items()}, account_id)
        old = self.accounts.get(name)
        if old:
            for key in old.keys:
                self.by_key.pop(key, None)
        self.accounts[name] = acct
        for key in acct.keys:
            self.by_key[key] = acct
        return acct

    def issue_keys(self, names: list[str], label: str) -> dict[str, dict[str, str]]:
        """A new API key for each account (as an exchange's key management does); the old ones keep working
        until they are revoked or expire."""
        out = {}
        for name in names:
            acct = self.accounts.get(name)
            if acct is None:
                raise ValueError(f"no account {name!r}")
            key, secret = new_account_keys()
            acct.keys[key] = ApiKey(secret, label)
            self.by_key[key] = acct
            out[name] = {"key": key, "secret": secret, "credential": f"{key}:{secret}"}
        return out

    def revoke_key(self, key: str) -> str:
        """Revoke one key (``key``, or a ``key:secret`` credential); KeyError if the exchange does not know it."""
        key = key.partition(":")[0]
        acct = self.by_key.pop(key)
        del acct.keys[key]
        return acct.name

    def expire_keys(self, names: list[str], label: str) -> list[str]:
        """Expire every key labelled ``label`` of each account (seed 002: an expired exchange API key)."""
        expired = []
        for name in names:
            for key, api_key in self.accounts[name].keys.items():
                if api_key.label == label and not api_key.expired:
                    api_key.expired = True
                    expired.append(key)
        return expired

    # -- market --------------------------------------------------------------------------------------------
    def step(self) -> None:
        for pair in self.prices:
            self.prices[pair] *= math.exp(self.rng.gauss(0, VOLATILITY))
        self.match_all()
        self.fire_dead_man_switches()

    def move(self, pair: str, pct: float) -> float:
        self.prices[pair] *= 1 + pct / 100.0
        self.match_all()
        return self.prices[pair]

    def match_all(self) -> None:
        for orders in list(self.open_by_account.values()):
            for order in list(orders.values()):
                self.match(order)

    def match(self, order: Order, on_arrival: bool = False) -> None:
        """Fill ``order`` if the price allows. A limit order that crosses when it arrives takes the market's
        price (a taker, no worse than its limit); one that rests fills at its limit when the price gets there."""
        if order.status != "open":
            return
        px = self.prices[order.pair]
        taker = px * (1 + SPREAD / 2) if order.side == "buy" else px * (1 - SPREAD / 2)
        if order.ordertype == "market":
            self.fill(order, taker, TAKER_FEE)
        elif order.ordertype == "limit":
            if on_arrival and ((order.side == "buy" and taker <= order.price)
                               or (order.side == "sell" and taker >= order.price)):
                self.fill(order, taker, TAKER_FEE)
            elif (order.side == "buy" and px <= order.price) or (order.side == "sell" and px >= order.price):
                self.fill(order, order.price, MAKER_FEE)
            elif order.ioc:
                self.close(order, "canceled", "Immediate or cancel: not filled")
        elif order.ordertype == "stop-loss":
            if (order.side == "sell" and px <= order.price) or (order.side == "buy" and px >= order.price):
                self.fill(order, px * (1 - SPREAD / 2) if order.side == "sell" else px * (1 + SPREAD / 2), TAKER_FEE)

    def fill(self, order: Order, price: float, fee_rate: float) -> None:
        acct = self.accounts[order.account]
        _, base, quote, _, _, _, _ = PAIRS[order.pair]
        vol = order.vol - order.vol_exec
        cost = vol * price
        fee = cost * fee_rate
        if order.side == "sell":
            if acct.balances.get(base, 0.0) + _slack(vol) < vol:
                self.close(order, "canceled", "Insufficient funds")
                return
            acct.balances[base] = acct.balances.get(base, 0.0) - vol
            acct.balances[quote] = acct.balances.get(quote, 0.0) + cost - fee
        else:
            if acct.balances.get(quote, 0.0) + _slack(cost + fee) < cost + fee:
                self.close(order, "canceled", "Insufficient funds")
                return
            acct.balances[base] = acct.balances.get(base, 0.0) + vol
            acct.balances[quote] = acct.balances.get(quote, 0.0) - cost - fee
        order.vol_exec, order.avg_price, order.fee = order.vol, price, order.fee + fee
        now = time.time()
        self.trades.append({
            "id": _txid("T"), "account": acct.name, "ordertxid": order.txid, "pair": order.pair,
            "time": now, "type": order.side, "ordertype": order.ordertype, "price": price, "vol": vol,
            "cost": cost, "fee": fee,
        })
        self.close(order, "closed", None, now)

    def close(self, order: Order, status: str, reason: str | None, now: float | None = None) -> None:
        order.status, order.reason, order.closetm = status, reason, now or time.time()
        self.open_by_account.get(order.account, {}).pop(order.txid, None)

    def cancel_all(self, acct: Account, reason: str) -> int:
        orders = list(self.open_by_account.get(acct.name, {}).values())
        for order in orders:
            self.close(order, "canceled", reason)
        return len(orders)

    def fire_dead_man_switches(self) -> None:
        now = time.time()
        for acct in self.accounts.values():
            if acct.dms_trigger is not None and now >= acct.dms_trigger:
                n = self.cancel_all(acct, "CancelAllOrdersAfter timer expired")
                acct.dms_trigger = None
                acct.dms_fired.append(now)
                log.warning("dead man's switch fired for %s: %d orders cancelled", acct.name, n)

    def open_orders(self, name: str) -> dict[str, Order]:
        return self.open_by_account.setdefault(name, {})

    # -- API -----------------------------------------------------------------------------------------------
    def public(self, method: str, query: dict[str, str]) -> Any:
        if method == "Time":
            now = time.time()
            return {"unixtime": int(now), "rfc1123": email.utils.formatdate(now, usegmt=True)}
        if method == "SystemStatus":
            return {"status": "online", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if method == "Assets":
            return {a: {"aclass": "currency", "altname": alt, "decimals": dec, "display_decimals": disp,
                        "collateral_value": 1.0, "status": "enabled"} for a, (alt, dec, disp) in ASSETS.items()}
        if method == "AssetPairs":
            return {p: self.pair_info(p) for p in self.pairs_of(query.get("pair"))}
        if method == "Ticker":
            return {p: self.ticker(p) for p in self.pairs_of(query.get("pair"))}
        if method == "Depth":
            pairs = self.pairs_of(query.get("pair"))
            if len(pairs) != 1:
                raise KrakenError("EGeneral:Invalid arguments")
            return {pairs[0]: self.depth(pairs[0], int(query.get("count") or 10))}
        raise KrakenError("EGeneral:Unknown method")

    def pairs_of(self, raw: str | None) -> list[str]:
        if not raw:
            return list(PAIRS)
        out = []
        for name in raw.split(","):
            pair = next((p for p, spec in PAIRS.items() if name in (p, spec[0])), None)
            if pair is None:
                raise KrakenError("EQuery:Unknown asset pair")
            out.append(pair)
        return out

    def pair_info(self, pair: str) -> dict[str, Any]:
        altname, base, quote, _, decimals, ordermin, _ = PAIRS[pair]
        fees = [[0, 0.26], [50000, 0.24], [100000, 0.22]]
        fees_maker = [[0, 0.16], [50000, 0.14], [100000, 0.12]]
        return {
            "altname": altname, "wsname": f"{ASSETS[base][0]}/{ASSETS[quote][0]}", "aclass_base": "currency",
            "base": base, "aclass_quote": "currency", "quote": quote, "lot": "unit", "cost_decimals": 5,
            "pair_decimals": decimals, "lot_decimals": LOT_DECIMALS, "lot_multiplier": 1, "leverage_buy": [],
            "leverage_sell": [], "fees": fees, "fees_maker": fees_maker, "fee_volume_currency": "ZUSD",
            "margin_call": 80, "margin_stop": 40, "ordermin": ordermin, "costmin": "0.5", "tick_size": "0.1",
            "status": "online",
        }

    def ticker(self, pair: str) -> dict[str, Any]:
        decimals = PAIRS[pair][4]
        px = self.prices[pair]
        ask, bid = _fmt(px * (1 + SPREAD / 2), decimals), _fmt(px * (1 - SPREAD / 2), decimals)
        last = _fmt(px, decimals)
        return {"a": [ask, "1", "1.000"], "b": [bid, "1", "1.000"], "c": [last, "0.10000000"],
                "v": ["100.0", "1000.0"], "p": [last, last], "t": [100, 1000], "l": [last, last],
                "h": [last, last], "o": last}

    def depth(self, pair: str, count: int) -> dict[str, Any]:
        decimals = PAIRS[pair][4]
        px = self.prices[pair]
        now = int(time.time())
        asks = [[_fmt(px * (1 + SPREAD / 2 + i * 0.0005), decimals), "1.000", now] for i in range(count)]
        bids = [[_fmt(px * (1 - SPREAD / 2 - i * 0.0005), decimals), "1.000", now] for i in range(count)]
        return {"asks": asks, "bids": bids}

    def private(self, acct: Account, method: str, params: dict[str, Any]) -> Any:
        if method == "Balance":
            return {a: _floor(v, ASSETS.get(a, ("", 10, 0))[1]) for a, v in sorted(acct.balances.items())}
        if method == "BalanceEx":  # what ccxt's fetch_balance calls: balance and what open orders hold
            opened = self.open_orders(acct.name)
            return {a: {"balance": _floor(v, ASSETS.get(a, ("", 10, 0))[1]),
                        "hold_trade": _fmt(acct.reserved(a, opened), ASSETS.get(a, ("", 10, 0))[1])}
                    for a, v in sorted(acct.balances.items())}
        if method == "OpenOrders":
            return {"open": {t: o.info() for t, o in self.open_orders(acct.name).items()}}
        if method == "ClosedOrders":
            closed = {t: o.info() for t, o in self.orders.items()
                      if o.account == acct.name and o.status in ("closed", "canceled", "expired")}
            return {"closed": closed, "count": len(closed)}
        if method == "QueryOrders":
            ids = str(params.get("txid") or "").split(",")
            found = {t: self.orders[t].info() for t in ids if t in self.orders and self.orders[t].account == acct.name}
            if not found:
                raise KrakenError("EOrder:Invalid order")
            return found
        if method == "TradesHistory":
            start = float(params.get("start") or 0)
            trades = {t["id"]: self.trade_info(t) for t in self.trades
                      if t["account"] == acct.name and t["time"] >= start}
            return {"trades": trades, "count": len(trades)}
        if method == "AddOrder":
            return self.add_order(acct, params)
        if method == "CancelOrder":
            txid = str(params.get("txid") or "")
            order = self.open_orders(acct.name).get(txid)
            if order is None:
                raise KrakenError("EOrder:Unknown order")
            if acct.name not in self.account_faults.get(FAULT_CANCEL_LIES, ()):
                self.close(order, "canceled", "User requested")
            return {"count": 1}
        if method == "CancelAll":
            if acct.name in self.account_faults.get(FAULT_CANCEL_LIES, ()):
                return {"count": len(self.open_orders(acct.name))}
            return {"count": self.cancel_all(acct, "User requested")}
        if method == "CancelAllOrdersAfter":
            try:
                timeout = int(params.get("timeout"))
            except (TypeError, ValueError):
                raise KrakenError("EGeneral:Invalid arguments:timeout") from None
            if not 0 <= timeout <= MAX_DMS_TIMEOUT:
                raise KrakenError("EGeneral:Invalid arguments:timeout")
            now = time.time()
            acct.dms_trigger = now + timeout if timeout else None
            iso = "%Y-%m-%dT%H:%M:%SZ"
            return {"currentTime": time.strftime(iso, time.gmtime(now)),
                    "triggerTime": time.strftime(iso, time.gmtime(acct.dms_trigger)) if timeout else "0"}
        raise KrakenError("EGeneral:Unknown method")

    def trade_info(self, t: dict[str, Any]) -> dict[str, Any]:
        decimals = PAIRS[t["pair"]][4]
        return {"ordertxid": t["ordertxid"], "postxid": _txid("P"), "pair": t["pair"], "time": t["time"],
                "type": t["type"], "ordertype": t["ordertype"], "price": _fmt(t["price"], decimals),
                "cost": _fmt(t["cost"], 5), "fee": _fmt(t["fee"], 5), "vol": _fmt(t["vol"]), "margin": "0.00000",
                "misc": ""}

    def add_order(self, acct: Account, params: dict[str, Any]) -> dict[str, Any]:
        pairs = self.pairs_of(str(params.get("pair") or "-"))
        pair = pairs[0]
        side, ordertype = params.get("type"), params.get("ordertype")
        if side not in ("buy", "sell") or ordertype not in ("limit", "market", "stop-loss"):
            raise KrakenError("EGeneral:Invalid arguments")
        try:
            vol = float(params.get("volume"))
        except (TypeError, ValueError):
            raise KrakenError("EGeneral:Invalid arguments:volume") from None
        if not math.isfinite(vol) or vol < float(PAIRS[pair][5]):
            raise KrakenError("EOrder:Order minimum not met")
        price = 0.0
        if ordertype != "market":
            price = self.parse_price(pair, params.get("price"))
        reduce_only = str(params.get("reduce_only", "")).lower() in ("true", "1")
        _, base, quote, _, _, _, _ = PAIRS[pair]
        if side == "sell":
            if acct.balances.get(base, 0.0) - acct.reserved(base, self.open_orders(acct.name)) + _slack(vol) < vol:
                raise KrakenError("EOrder:Insufficient funds")
        else:
            if reduce_only:  # spot: a buy reduces no position
                raise KrakenError("EOrder:Reduce only:Non-PC")
            need = vol * (price or self.prices[pair] * (1 + SPREAD))
            if acct.balances.get(quote, 0.0) - acct.reserved(quote, self.open_orders(acct.name)) + _slack(need) < need:
                raise KrakenError("EOrder:Insufficient funds")
        try:
            userref = int(params.get("userref") or 0)
        except ValueError:
            raise KrakenError("EGeneral:Invalid arguments:userref") from None
        order = Order(_txid("O"), acct.name, pair, side, ordertype, vol, price, time.time(), userref,
                      ioc=str(params.get("timeinforce", "")).upper() == "IOC", reduce_only=reduce_only)
        if str(params.get("validate", "")).lower() == "true":
            return {"descr": {"order": order.descr()["order"]}}
        self.orders[order.txid] = order
        self.open_orders(acct.name)[order.txid] = order
        self.match(order, on_arrival=True)
        return {"descr": {"order": order.descr()["order"]}, "txid": [order.txid]}

    def parse_price(self, pair: str, raw: Any) -> float:
        text = str(raw or "").strip()
        if not text:
            raise KrakenError("EGeneral:Invalid arguments:price")
        try:
            if text[0] in "+-":
                sign = 1 if text[0] == "+" else -1
                if text.endswith("%"):
                    value = self.prices[pair] * (1 + sign * float(text[1:-1]) / 100.0)
                else:
                    value = self.prices[pair] + sign * float(text[1:])
            else:
                value = float(text)
        except ValueError:
            raise KrakenError("EGeneral:Invalid arguments:price") from None
        if not math.isfinite(value) or value <= 0:
            raise KrakenError("EGeneral:Invalid arguments:price")
        return round(value, PAIRS[pair][4])

    # -- request pipeline ----------------------------------------------------------------------------------
    def authenticate(self, request: Request, method: str) -> tuple[Account, dict[str, Any]]:
        key = request.header("api-key") or ""
        acct = self.by_key.get(key)
        if acct is None or acct.name in self.account_faults.get(FAULT_AUTH, ()) or acct.keys[key].expired:
            if acct is not None:
                acct.refused["auth"] = acct.refused.get("auth", 0) + 1
            raise KrakenError("EAPI:Invalid key")
        params = parse_body(request)
        nonce = str(params.get("nonce") or "")
        try:
            expected = kraken_signature(request.path, request.body, nonce, acct.keys[key].secret)
        except (binascii.Error, ValueError):
            raise KrakenError("EAPI:Invalid key") from None
        if not hmac.compare_digest(expected, request.header("api-sign") or ""):
            acct.refused["signature"] = acct.refused.get("signature", 0) + 1
            raise KrakenError("EAPI:Invalid signature")
        if not nonce.isdigit() or int(nonce) <= acct.keys[key].nonce:
            acct.refused["nonce"] = acct.refused.get("nonce", 0) + 1
            raise KrakenError("EAPI:Invalid nonce")
        acct.keys[key].nonce = int(nonce)
        self.charge(acct, method)
        params.pop("nonce", None)
        return acct, params

    def charge(self, acct: Account, method: str) -> None:
        limited = acct.name in self.account_faults.get(FAULT_RATE_LIMIT, ())
        if not limited and method in TRADING_CALLS:
            return
        cap, decay = (FAULT_COUNTER_MAX, FAULT_COUNTER_DECAY) if limited else (COUNTER_MAX, COUNTER_DECAY)
        now = time.monotonic()
        acct.counter = max(0.0, acct.counter - (now - acct.counter_at) * decay)
        acct.counter_at = now
        if acct.counter + 1 > cap:
            acct.refused["rate_limit"] = acct.refused.get("rate_limit", 0) + 1
            raise KrakenError("EAPI:Rate limit exceeded")
        acct.counter += 1

    # -- lab control ---------------------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        return {
            "prices": {p: self.prices[p] for p in PAIRS},
            "faults": {"venue": dict(self.faults),
                       "accounts": {f: sorted(names) for f, names in self.account_faults.items() if names}},
            "accounts": {
                a.name: {"account_id": a.account_id, "open_orders": len(self.open_orders(a.name)),
                         "balances": dict(a.balances), "dead_man_switch": a.dms_trigger,
                         "dead_man_switch_fired": list(a.dms_fired), "refused": dict(a.refused)}
                for a in self.accounts.values()
            },
            "orders": len(self.orders), "trades": len(self.trades), "requests": self.requests,
        }

    def set_fault(self, fault: str, accounts: list[str] | None, clear: bool, seconds: float | None) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown exchange fault {fault!r}; known: {', '.join(FAULTS)}")
        if fault in ACCOUNT_FAULTS:
            names = list(self.accounts) if not accounts or accounts == ["*"] else accounts
            unknown = [n for n in names if n not in self.accounts]
            if unknown:
                raise ValueError(f"no exchange account named {', '.join(unknown)}")
            target = self.account_faults.setdefault(fault, set())
            if clear:
                target.difference_update(names)
            else:
                target.update(names)
        elif accounts and accounts != ["*"]:
            raise ValueError(f"{fault} applies to the whole exchange and takes no accounts")
        elif clear:
            self.faults.pop(fault, None)
        else:
            self.faults[fault] = float(seconds) if seconds else (DEFAULT_SLOW_SECONDS if fault == FAULT_SLOW else True)


def parse_body(request: Request) -> dict[str, Any]:
    body = request.body.decode("utf-8", "replace")
    if (request.header("content-type") or "").startswith("application/json"):
        try:
            data = json.loads(body or "{}")
        except ValueError:
            raise KrakenError("EGeneral:Invalid arguments") from None
        if not isinstance(data, dict):
            raise KrakenError("EGeneral:Invalid arguments")
        return data
    return dict(urllib.parse.parse_qsl(body, keep_blank_values=True))


def kraken_answer(result: Any = None, error: str | None = None) -> Response:
    return Response.json({"error": [error] if error else [], "result": result if error is None else {}})


class ExchangeServer:
    """The HTTP side: Kraken's ``/0/public/*`` and ``/0/private/*``, and the lab's ``/lab/*``."""

    def __init__(self, exchange: Exchange, control_token: str) -> None:
        self.exchange = exchange
        self.control_token = control_token
        self.feed: Any = None  # the market-data WebSocket feed (wsfeed.WsFeed), when aiohttp is there

    async def handle(self, request: Request) -> Response:
        ex = self.exchange
        try:
            if request.path.startswith("/lab/ws"):
                return await self.feed_control(request)
            if request.path.startswith("/lab/"):
                return self.control(request)
            ex.requests += 1
            if FAULT_SLOW in ex.faults:
                await asyncio.sleep(float(ex.faults[FAULT_SLOW]))
            if FAULT_DOWN in ex.faults:
                return Response.text("<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
                                     503, "text/html")
            parts = request.path.split("/")
            if len(parts) != 4 or parts[1] != "0" or parts[2] not in ("public", "private"):
                return Response.text("Not Found", 404)
            method = parts[3]
            if parts[2] == "public":
                query = dict(urllib.parse.parse_qsl(request.target.partition("?")[2]))
                return kraken_answer(ex.public(method, query))
            if request.method != "POST":
                return kraken_answer(error="EGeneral:Invalid arguments")
            acct, params = ex.authenticate(request, method)
            return kraken_answer(ex.private(acct, method, params))
        except KrakenError as exc:
            return kraken_answer(error=exc.code)
        except Exception:  # a bug must answer, not hang the client
            log.exception("exchange: %s %s failed", request.method, request.path)
            return kraken_answer(error="EGeneral:Internal error")

    async def feed_control(self, request: Request) -> Response:
        """``GET /lab/ws``; ``POST /lab/ws {"fault": "ws-down", "clear"}``; ``POST /lab/ws/restart``."""
        if not hmac.compare_digest(request.header("x-lab-token") or "", self.control_token):
            return Response.error(403, "bad X-Lab-Token")
        if self.feed is None:
            return Response.error(404, "this exchange runs no market-data feed (aiohttp is not installed)")
        if request.path == "/lab/ws" and request.method == "GET":
            return Response.json(self.feed.view())
        if request.path == "/lab/ws" and request.method == "POST":
            body = request.json_object()
            if body.get("fault") != FAULT_WS_DOWN:
                return Response.error(400, f"the feed's fault is {FAULT_WS_DOWN}")
            self.feed.wedged = not body.get("clear")
            log.warning("market-data feed %s", "wedged (ws-down)" if self.feed.wedged else "unwedged")
            return Response.json(self.feed.view())
        if request.path == "/lab/ws/restart" and request.method == "POST":
            return Response.json(await self.feed.restart())
        return Response.error(404, f"no control endpoint {request.method} {request.path}")

    def control(self, request: Request) -> Response:
        if not hmac.compare_digest(request.header("x-lab-token") or "", self.control_token):
            return Response.error(403, "bad X-Lab-Token")
        ex = self.exchange
        body = request.json_object() if request.method == "POST" else {}
        query = dict(urllib.parse.parse_qsl(request.target.partition("?")[2]))
        path = request.path
        try:
            if path == "/lab/state":
                return Response.json(ex.view())
            if path == "/lab/orders":
                status = query.get("status", "open")
                orders = [dict(o.info(), txid=o.txid, account=o.account, pair=o.pair) for o in ex.orders.values()
                          if (status == "all" or o.status == status)
                          and (not query.get("account") or o.account == query["account"])]
                return Response.json({"orders": orders})
            if path == "/lab/fills":
                since = float(query.get("since") or 0)
                return Response.json({"fills": [t for t in ex.trades if t["time"] >= since
                                                and (not query.get("account") or t["account"] == query["account"])]})
            if path == "/lab/faults" and request.method == "POST":
                accounts = body.get("accounts")
                if isinstance(accounts, str):
                    accounts = [accounts]
                ex.set_fault(str(body.get("fault")), accounts, bool(body.get("clear")), body.get("seconds"))
                return Response.json(ex.view()["faults"])
            if path == "/lab/move" and request.method == "POST":
                pair = ex.pairs_of(str(body.get("pair") or "").replace("/", "").replace("BTC", "XBT"))[0]
                return Response.json({"pair": pair, "price": ex.move(pair, float(body["pct"]))})
            if path == "/lab/keys" and request.method == "POST":
                return Response.json({"keys": ex.issue_keys(list(body.get("accounts") or []),
                                                            str(body.get("label") or "engine"))})
            if path == "/lab/keys/revoke" and request.method == "POST":
                raw = str(body.get("credential") or body.get("key") or "")
                try:
                    return Response.json({"revoked": raw.partition(":")[0], "account": ex.revoke_key(raw)})
                except KeyError:
                    return Response.error(404, "no such key")
            if path == "/lab/keys/expire" and request.method == "POST":
                names = list(body.get("accounts") or ex.accounts)
                return Response.json({"expired": len(ex.expire_keys(names, str(body.get("label") or "engine")))})
            if path == "/lab/accounts" and request.method == "POST":
                name = str(body.get("name") or "")
                if not name:
                    return Response.error(400, "name is required")
                keys = {label: dict(zip(("key", "secret"), new_account_keys(), strict=True))
                        for label in body.get("keys") or ["ops"]}
                ex.add_account(name, keys, body.get("balances") or {}, body.get("account_id"))
                return Response.json({"name": name, "keys": keys})
        except (KrakenError, ValueError, KeyError, TypeError) as exc:
            return Response.error(400, str(exc))
        return Response.error(404, f"no control endpoint {request.method} {path}")


async def run(lab_dir: Path, host: str = LOOPBACK) -> None:
    config = read_json(lab_dir / CONFIG_FILE)
    if config is None:
        raise SystemExit(f"no {CONFIG_FILE} in {lab_dir}")
    exchange = Exchange(config.get("accounts") or {}, config.get("seed"))
    server = ExchangeServer(exchange, config["control_token"])
    srv = await asyncio.start_server(lambda r, w: serve_connection(r, w, server.handle), host,
                                     int(config.get("port") or 0), backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    ws_port = None
    try:
        from .wsfeed import WsFeed

        server.feed = WsFeed(lambda: {PAIRS[p][6].replace("-", "/"): exchange.prices[p] for p in PAIRS}, host)
        ws_port = await server.feed.start()
    except ImportError:
        log.warning("no market-data feed: aiohttp is not installed")
        server.feed = None
    write_json_atomic(lab_dir / RUNTIME_FILE, {"pid": os.getpid(), "host": host, "port": port, "ws_port": ws_port})
    log.info("exchange listening on %s:%d with %d accounts", host, port, len(exchange.accounts))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with srv:
        try:
            await _tick(exchange, stop)
        finally:
            if server.feed is not None:
                await server.feed.stop()


async def _tick(exchange: Exchange, stop: asyncio.Event) -> None:
    """The market: one price step per TICK until ``stop``."""
    while not stop.is_set():
        exchange.step()
        try:
            await asyncio.wait_for(stop.wait(), TICK)
        except TimeoutError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tradeops.lab.exchange", description=__doc__.split("\n")[0])
    parser.add_argument("--lab-dir", required=True, type=Path)
    parser.add_argument("--listen", default=LOOPBACK, help="the address to listen on (a drill's venue host: 0.0.0.0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    asyncio.run(run(args.lab_dir.resolve(), args.listen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
