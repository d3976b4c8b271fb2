# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn inventory host vars into venue_guard accounts, and its results into report lines."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def venue_accounts(hosts, hostvars, var="venue_account"):
    """The exchange account of every host that has one (``hostvars[host][var]``), once per account name."""
    accounts, seen = [], set()
    for host in hosts:
        try:
            host_vars = hostvars[host]
        except KeyError:
            raise AnsibleFilterError("venue_accounts: host %r is not in hostvars" % host)
        config = host_vars.get(var) if hasattr(host_vars, "get") else None
        if not config:
            continue
        if not isinstance(config, dict):
            raise AnsibleFilterError("venue_accounts: %s of host %s must be a dict" % (var, host))
        account = dict(config)
        account["name"] = account.get("name") or host
        if account["name"] not in seen:
            seen.add(account["name"])
            accounts.append(account)
    return accounts


def venue_report_lines(result):
    """One short line per account: its status, the orders working before and after, and why if not verified."""
    lines = []
    for acct in (result or {}).get("accounts") or []:
        line = "%s: %s" % (acct.get("name"), acct.get("status"))
        if acct.get("working_before") is not None:
            line += ", working orders %s -> %s" % (acct.get("working_before"), acct.get("working_after"))
        if acct.get("late_orders"):
            line += " (%s found at the read-back after the engines' quiesce)" % acct["late_orders"]
        if acct.get("mismatches"):
            line += ", mismatched: %s" % ", ".join("%s (venue %s, table %s)" % (m["symbol"], m["venue"], m["db"])
                                                   for m in acct["mismatches"])
        if acct.get("placed"):
            line += ", stop-losses placed: %s" % ", ".join(p["symbol"] for p in acct["placed"])
        if acct.get("unprotected"):
            line += ", NOT protected: %s" % "; ".join("%s (%s)" % (u["symbol"], u["error"]) for u in acct["unprotected"])
        if acct.get("sold"):
            line += ", sold: %s" % ", ".join("%s %s (slippage %s)" % (s["symbol"], s["sold"], s["slippage"])
                                             for s in acct["sold"])
        if acct.get("error"):
            line += " - " + acct["error"]
        lines.append(line)
    if (result or {}).get("action") == "cancel_all":
        lines.append("venue: %s working order(s) before, %s after; not verified: %s" % (
            result.get("working_orders_before"), result.get("working_orders_after"),
            ", ".join(result.get("unverified") or []) or "none"))
        if result.get("settled_s") is not None:
            lines.append("venue: %s account(s) read back again when the engines' quiesce ended (%.2f s after the "
                         "first pass; the others were last read after it): %s order(s) had landed late"
                         % (result.get("read_again"), result["settled_s"], result.get("late_orders", 0)))
    return lines


class FilterModule(object):
    def filters(self):
        return {"venue_accounts": venue_accounts, "venue_report_lines": venue_report_lines}
