"""venue_guard cancel_all: 20 accounts x 100 resting orders at the lab exchange (Kraken's API), zero left.

Each run seeds every account with ``orders`` resting limit orders (the accounts' trading keys), then times,
side by side on the same exchange:

- a. ``venue_guard`` (its service, in this process, as the module runs it): from the start of the call to
  zero working orders verified on every account (the exchange's cancel-all, then the read-back);
- b. the baseline: a per-order cancel loop through ccxt in one process (for each account: read the open
  orders, ``cancel_order`` each, read back until empty), what a script without the cancel-all call does;
- c. ``venue_guard`` again under the ``exchange-rate-limit`` fault on every account, with a 10 s deadline:
  how many accounts are left unverified, and the time.

After each timed path the exchange itself is asked for every account's working orders (the lab's control
API), so a figure only counts if the venue agrees that nothing is left.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ccxt
from _common import loadavg, log, ratio, summary
from ansible_collections.tradeops.remediation.plugins.module_utils._venue import accounts_options
from ansible_collections.tradeops.remediation.plugins.module_utils._venue_guard import VenueGuard

from tradeops.lab import Lab

ACCOUNTS = 20
ORDERS = 100
RATE_LIMIT_DEADLINE = 10.0


def _guard(accounts: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    return VenueGuard("cancel_all", accounts_options([dict(a) for a in accounts]), timeout=timeout,
                      concurrency=len(accounts)).run()


def _loop(accounts: list[dict[str, Any]]) -> None:
    for acct in accounts:
        ex = ccxt.kraken({"apiKey": acct["api_key"], "secret": acct["secret"], "enableRateLimit": False,
                          "timeout": 5000})
        ex.urls["api"] = {"public": acct["url"], "private": acct["url"]}
        open_orders = ex.fetch_open_orders()
        while open_orders:
            for order in open_orders:
                ex.cancel_order(order["id"], order["symbol"])
            open_orders = ex.fetch_open_orders()


def _left(lab: Lab, accounts: list[dict[str, Any]]) -> int:
    working = lab.working_orders()
    return sum(working[a["name"]] for a in accounts)


def run_venue(runs: int, work: Path, n_accounts: int = ACCOUNTS, orders: int = ORDERS) -> dict[str, Any]:
    lab = Lab(work / "venue-lab")
    out: dict[str, Any] = {"accounts": n_accounts, "orders_per_account": orders, "loadavg_start": loadavg()}
    lab.up(engines=1)
    try:
        accounts = [lab.add_venue_account(f"bench-{i:02d}") for i in range(n_accounts)]
        guard_s, loop_s, limited_s, unverified, failed = [], [], [], [], 0

        def seed() -> None:
            for acct in accounts:
                lab.rest_orders(acct, orders, distance_pct=20.0)
            assert _left(lab, accounts) == n_accounts * orders

        for run in range(runs):
            seed()
            started = time.perf_counter()
            res = _guard(accounts, timeout=10.0)
            took = time.perf_counter() - started
            ok = not res["unverified"] and _left(lab, accounts) == 0
            guard_s.append(took if ok else None)
            failed += not ok
            seed()
            started = time.perf_counter()
            _loop(accounts)
            took = time.perf_counter() - started
            loop_s.append(took if _left(lab, accounts) == 0 else None)
            seed()
            names = [a["name"] for a in accounts]
            lab.inject("exchange-rate-limit", names)
            try:
                started = time.perf_counter()
                res = _guard(accounts, timeout=RATE_LIMIT_DEADLINE)
                took = time.perf_counter() - started
            finally:
                lab.inject("exchange-rate-limit", names, clear=True)
            unverified.append(len(res["unverified"]))
            limited_s.append(took)
            log(f"venue run {run + 1}/{runs}: guard {guard_s[-1]}, loop {loop_s[-1]}, rate-limited {took:.2f}s "
                f"with {len(res['unverified'])} unverified")
        out.update(
            guard_s=summary(guard_s), loop_s=summary(loop_s), rate_limited_s=summary(limited_s),
            rate_limited_unverified=summary(unverified, 0), failed_runs=failed,
        )
        out["ratios"] = {"loop/guard": ratio(out["loop_s"]["median"], out["guard_s"]["median"], 1)}
    finally:
        lab.down()
    out["loadavg_end"] = loadavg()
    return out
