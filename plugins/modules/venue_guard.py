#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: venue_guard
short_description: The kill switch at the exchange - cancel every working order (verified), dead man's switch, positions
version_added: 0.1.0
description:
  - Acts on many exchange accounts in one call, B(concurrently), each account within its own O(timeout), through
    L(ccxt,https://github.com/ccxt/ccxt) (any exchange ccxt supports; the lab exchange speaks Kraken's API).
    Every action is verified by reading the state back from the exchange.
  - "O(action=cancel_all): cancels every working order of each account (the exchange's cancel-all call where it has
    one, else order by order), then reads the open orders back, cancelling what is left, until none is left. An
    account is V(verified) only when the exchange lists no open order; one that cannot be read back empty within
    O(timeout) (the exchange lies about its cancels, is down, refuses the key) is V(unverified), named in
    RV(unverified) with the orders still working. The exchange's rate-limit answers, 5xx and timeouts are retried
    with backoff inside the deadline. With O(dead_man_switch.state=armed) the dead man's switch is armed first.
    With O(settle_until), every verified account is read back once more when that time has come (see there)."
  - "O(action=dead_man_switch): arms (O(dead_man_switch.state=armed); calling it again is the heartbeat) or
    disarms the exchange's cancel-all-after timer (Kraken's C(CancelAllOrdersAfter)): if no heartbeat comes within
    O(dead_man_switch.timeout) seconds, the exchange itself cancels every order of the account."
  - "O(action=positions): the venue's positions (spot: the balance of every asset with a market against the account's
    O(accounts[].quote)) against the open rows of O(positions_table) for O(accounts[].account_id), every mismatch
    reported. O(reconcile=apply) rewrites the table from the venue in one transaction, copying the old rows into
    C(<positions_table>_venue_backup) first (nothing is lost)."
  - "O(action=protect): places a stop-loss sell O(stop_distance) below the current price for the part of every
    position that no stop-loss covers yet, then reads the open orders back."
  - "O(action=flatten): sells every position with immediate-or-cancel limit orders no worse than O(max_slippage)
    below the price at its start, until it is gone or O(time_limit) runs out, and reports the realised slippage
    (seed 001's C(liquidate_all)). It refuses to run without O(approved=true). On spot markets a sale of at most
    the balance is reduce-only by construction."
extends_documentation_fragment:
  - tradeops.remediation.controller_run
  - tradeops.remediation.postgres
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads only (open orders, balances, the positions table) and reports what would be cancelled, placed,
        sold or rewritten.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - O(action=cancel_all), O(action=protect) and O(action=positions) report no change when there is nothing to
        cancel, protect or reconcile (arming the dead man's switch along with O(action=cancel_all) is not counted,
        since re-arming is its heartbeat). O(action=dead_man_switch) is a change every time.
options:
  action:
    description: What to do on every account.
    type: str
    required: true
    choices: [cancel_all, dead_man_switch, positions, protect, flatten]
  accounts:
    description: The exchange accounts.
    type: list
    elements: dict
    required: true
    suboptions:
      # fragment: venue
      name:
        description: The account's name in results and messages (for example the engine that trades on it). Required.
        type: str
      exchange:
        description: The exchange, as ccxt names it (its class). Default V(kraken).
        type: str
      api_key:
        description: The account's API key, with the permission to query and cancel orders. Keep it in Ansible Vault. Required.
        type: str
      secret:
        description: The API key's private key. Keep it in Ansible Vault; it is never returned or logged. Required.
        type: str
      password:
        description: The API key's passphrase, for the exchanges that have one.
        type: str
      url:
        description:
          - The base URL of the exchange's API, instead of ccxt's (every API of the exchange), for example a test venue or the lab exchange.
        type: str
      account_id:
        description: The account's id in the positions table (for O(action=positions)).
        type: int
      quote:
        description: The quote currency; a position is a balance in any other asset with a market against it. Default V(USD).
        type: str
      # end fragment
  timeout:
    description: Seconds each account may take, every retry included (O(action=flatten) adds O(time_limit)).
    type: float
    default: 10
  request_timeout:
    description: Seconds one request to the exchange may take (capped by what is left of O(timeout)).
    type: float
    default: 3
  concurrency:
    description: How many accounts are worked on at once.
    type: int
    default: 20
  strict:
    description:
      - Fail the task when an account is not verified (or an action failed on it). Every result is returned either
        way; the incident playbooks set it to V(false) and decide from RV(unverified).
    type: bool
    default: true
  keep_stops:
    description:
      - O(action=cancel_all) - leave the protective stop-loss sells (what O(action=protect) places) and cancel every
        other order; RV(accounts[].stops_kept) counts them. Without it every order is cancelled, stops included.
      - Verified the same way, the exchange listing no open order but those stops.
    type: bool
    default: false
  settle_until:
    description:
      - O(action=cancel_all) - the end of the engines' quiesce after their verified halt, in epoch seconds
        (M(tradeops.remediation.halt_trading)'s RV(tradeops.remediation.halt_trading#module:quiesce_until)). The
        cancel does not wait for it; every account is cancelled and read back at once, then, when this time has come,
        every verified account whose last read was sent before it is read back again (in a large fan-out, the
        accounts read after it need not be), and an order that landed meanwhile (an engine had it in flight
        when it was halted) is cancelled and read back the same way, within a second O(timeout). An account is
        V(verified) only if that last read-back is empty; RV(late_orders) counts what landed late.
      - A time already past when the call starts adds nothing; one more than 600 seconds away fails the call before
        anything is sent. Not in check mode.
    type: float
  dead_man_switch:
    description: The dead man's switch (O(action=dead_man_switch), and armed first by O(action=cancel_all) when given).
    type: dict
    suboptions:
      state:
        description: V(armed) (arming again is the heartbeat) or V(disarmed).
        type: str
        choices: [armed, disarmed]
        default: armed
      timeout:
        description: Seconds without a heartbeat after which the exchange cancels everything (1 to 86400).
        type: int
        default: 60
  stop_distance:
    description: O(action=protect) - how far below the current price the stop-loss triggers, as a fraction (0.05 is 5 %).
    type: float
    default: 0.05
  max_slippage:
    description: O(action=flatten) - the worst price accepted, as a fraction below the price at the start.
    type: float
    default: 0.01
  time_limit:
    description: O(action=flatten) - seconds to sell within; what is left is reported.
    type: float
    default: 60
  approved:
    description: O(action=flatten) - a person's approval; without it nothing is sold.
    type: bool
    default: false
  reconcile:
    description: O(action=positions) - V(report) the mismatches, or V(apply) the venue's positions to the table.
    type: str
    choices: [report, apply]
    default: report
  positions_table:
    description: O(action=positions) - the positions table (C(account_id), C(symbol), C(quantity), C(entry_price), C(status), C(updated_at)).
    type: str
    default: positions
  symbols:
    description: O(action=positions) - the table's symbol for a venue symbol, where it is not the venue's with C(/) made C(-).
    type: dict
    default: {}
  tolerance:
    description: O(action=positions) - the largest difference of quantity that is not a mismatch.
    type: float
    default: 0.000001
seealso:
  - module: tradeops.remediation.halt_trading
author:
  - tradeops SRE team (@tradeops)
"""

EXAMPLES = r"""
- name: Cancel every working order at the venue, verified, arming the dead man's switch first
  tradeops.remediation.venue_guard:
    action: cancel_all
    accounts:
      - name: engine-001
        exchange: kraken
        api_key: "{{ vault_kraken_ops_key }}"
        secret: "{{ vault_kraken_ops_secret }}"
    dead_man_switch:
      timeout: 120
    strict: false
  delegate_to: localhost
  register: venue

- name: Reconcile the positions table against the exchange (report only)
  tradeops.remediation.venue_guard:
    action: positions
    accounts: "{{ venue_accounts }}"
    login_host: db.internal
    login_db: trading
    login_user: tradeops
    login_password: "{{ vault_db_password }}"

- name: Liquidate, after the approval gate
  tradeops.remediation.venue_guard:
    action: flatten
    accounts: "{{ venue_accounts }}"
    approved: true
    max_slippage: 0.005
    time_limit: 120
"""

RETURN = r"""
action:
  description: The action.
  returned: always
  type: str
accounts:
  description: One result per account, in the order of O(accounts).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The account.
      type: str
    status:
      description: V(verified), V(unverified) (cancel_all), V(ok), V(mismatch) (positions) or V(failed).
      type: str
    working_before:
      description: (cancel_all) Open orders at the start.
      type: int
    working_after:
      description: (cancel_all) Open orders at the last read-back.
      type: int
    stops_kept:
      description: (cancel_all) Protective stop-losses left working (O(keep_stops)).
      type: int
    late_orders:
      description: (cancel_all with O(settle_until)) Orders found working at the read-back after O(settle_until).
      type: int
    remaining:
      description: (cancel_all) The orders still working at the last read-back.
      type: list
      elements: dict
    mismatches:
      description: (positions) Each symbol whose quantity differs, with C(venue), C(db) and C(difference).
      type: list
      elements: dict
    sold:
      description: (flatten) Per symbol the amount sold, the average price and the realised C(slippage).
      type: list
      elements: dict
    error:
      description: Why the account is not verified or failed; no key or secret.
      type: str
    elapsed_ms:
      description: Time spent on the account.
      type: int
  sample:
    - {name: engine-001, status: verified, working_before: 3, working_after: 0, remaining: [], elapsed_ms: 41}
verified:
  description: (cancel_all) The accounts with no working order left, read back.
  returned: when O(action=cancel_all)
  type: list
  elements: str
unverified:
  description: (cancel_all) The accounts not proven empty.
  returned: when O(action=cancel_all)
  type: list
  elements: str
working_orders_before:
  description: (cancel_all) Open orders over every account at the start.
  returned: when O(action=cancel_all)
  type: int
working_orders_after:
  description: (cancel_all) Open orders over every account at the last read-back.
  returned: when O(action=cancel_all)
  type: int
late_orders:
  description: (cancel_all) Orders found working over every account at the read-back after O(settle_until).
  returned: when O(settle_until) was later than the call's start, not in check mode
  type: int
settled_s:
  description: (cancel_all) Seconds waited, after the first pass over every account, for O(settle_until).
  returned: when O(settle_until) was later than the call's start, not in check mode
  type: float
read_again:
  description: (cancel_all) Accounts read back again after O(settle_until).
  returned: when O(settle_until) was later than the call's start, not in check mode
  type: int
mismatched:
  description: (positions) The accounts whose positions differ from the table.
  returned: when O(action=positions)
  type: list
  elements: str
failed_accounts:
  description: The accounts unverified or failed.
  returned: always
  type: list
  elements: str
elapsed_ms:
  description: Wall time of the whole call.
  returned: always
  type: int
ran_on_controller:
  description: The call ran in the controller's own process, not as a module (see the notes).
  returned: when it ran on the controller
  type: bool
  sample: true
"""

from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._module import run_module
from ansible_collections.tradeops.remediation.plugins.module_utils._postgres import postgres_connection_spec
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import number
from ansible_collections.tradeops.remediation.plugins.module_utils._venue import accounts_options, argspec
from ansible_collections.tradeops.remediation.plugins.module_utils._venue_guard import ACTIONS, VenueGuard

ARGUMENT_SPEC = dict(
    action=dict(type="str", required=True, choices=list(ACTIONS)),
    accounts=dict(type="list", elements="dict", required=True, options=argspec()),
    timeout=dict(type="float", default=10),
    request_timeout=dict(type="float", default=3),
    concurrency=dict(type="int", default=20),
    strict=dict(type="bool", default=True),
    keep_stops=dict(type="bool", default=False),
    dead_man_switch=dict(type="dict", options=dict(
        state=dict(type="str", choices=["armed", "disarmed"], default="armed"),
        timeout=dict(type="int", default=60),
    )),
    stop_distance=dict(type="float", default=0.05),
    max_slippage=dict(type="float", default=0.01),
    time_limit=dict(type="float", default=60),
    approved=dict(type="bool", default=False),
    reconcile=dict(type="str", choices=["report", "apply"], default="report"),
    positions_table=dict(type="str", default="positions"),
    symbols=dict(type="dict", default={}),
    tolerance=dict(type="float", default=0.000001),
    settle_until=dict(type="float"),
)
ARGUMENT_SPEC.update(postgres_connection_spec())
DB_OPTIONS = tuple(postgres_connection_spec())


def build(params, check_mode):
    """The :class:`VenueGuard` the options describe; ValidationError names the option."""
    dms = params.get("dead_man_switch")
    if dms:
        dms = dict(dms, timeout=number(dms.get("timeout"), "dead_man_switch.timeout", integer=True, minimum=1,
                                       maximum=86400, between=True))
    db = dict((k, params.get(k)) for k in DB_OPTIONS)
    has_db = any(params.get(k) for k in ("login_host", "login_db", "login_user"))
    return VenueGuard(
        params["action"], accounts_options(params["accounts"]),
        timeout=check_timeout(params["timeout"], "timeout", minimum=0.5),
        request_timeout=check_timeout(params["request_timeout"], "request_timeout"),
        concurrency=number(params["concurrency"], "concurrency", integer=True, minimum=1, maximum=1000, between=True),
        check_mode=check_mode, dead_man_switch=dms,
        stop_distance=number(params["stop_distance"], "stop_distance", above=0, maximum=0.5),
        max_slippage=number(params["max_slippage"], "max_slippage", above=0, maximum=0.5),
        time_limit=check_timeout(params["time_limit"], "time_limit", minimum=1),
        approved=params["approved"], reconcile=params["reconcile"],
        positions_db=db if has_db else None, positions_table=params["positions_table"],
        symbols=params["symbols"], tolerance=number(params["tolerance"], "tolerance", minimum=0),
        keep_stops=params["keep_stops"], settle_until=params.get("settle_until"))


def run(params, check_mode=False, diff=False):
    """What the module does with its validated ``params``: ``(result, warnings, failure message or None)``.

    The module and its action plugin (which runs it in the controller's process) both call this.
    """
    try:
        result = build(params, check_mode).run()
    except ValidationError as err:
        raise TradeopsError("%s. Nothing was sent to any exchange: fix the options and re-run." % err)
    message = None
    if params["strict"] and result["failed_accounts"]:
        errors = ["%s: %s" % (r["name"], r.get("error") or r["status"]) for r in result["accounts"]
                  if r["name"] in result["failed_accounts"]]
        message = ("venue_guard %s: %d account(s) not verified or failed - %s"
                   % (result["action"], len(errors), "; ".join(errors)))
    return result, [], message


def main():
    run_module(ARGUMENT_SPEC, run, "venue_guard: ")


if __name__ == "__main__":
    main()
