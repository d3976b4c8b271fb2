# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn inventory host vars into halt_trading targets, and results into a report."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def killswitch_targets(hosts, hostvars, var="halt_trading_target"):
    targets = []
    for host in hosts:
        try:
            host_vars = hostvars[host]
        except KeyError:
            raise AnsibleFilterError("killswitch_targets: host %r is not in hostvars" % host)
        config = host_vars.get(var) if hasattr(host_vars, "get") else None
        if not config:
            targets.append({"name": host, "methods": []})
            continue
        target = dict(config)
        target["name"] = target.get("name") or host
        targets.append(target)
    return targets


def _fmt_ms(value):
    return "-" if value is None else "%d ms" % value


def halt_report_lines(result, orders=None):
    """Short, human report lines: one per engine with status, method and time to halt."""
    orders_by_name = {}
    for row in orders or []:
        orders_by_name[row.get("name")] = row
    lines = []
    width = max([len(t["name"]) for t in result.get("targets", [])] + [6])
    header = "%-*s  %-15s  %-10s  %-9s  %s" % (width, "engine", "status", "method", "time", "orders after halt")
    lines.append(header)
    for t in result.get("targets", []):
        row = orders_by_name.get(t["name"])
        after = "-" if row is None else str(row.get("orders_after"))
        method = t.get("method") or "-"
        cells = (width, t["name"], t["status"], method, _fmt_ms(t.get("latency_ms")), after)
        lines.append("%-*s  %-15s  %-10s  %-9s  %s" % cells)
        if t.get("error") and t["status"] in ("failed", "unverified"):
            lines.append("%-*s    error: %s" % (width, "", t["error"]))
        for attempt in t.get("methods_tried", []):
            if attempt.get("error") and t["status"] not in ("failed", "unverified"):
                lines.append("%-*s    fell back after %s: %s" % (width, "", attempt["type"], attempt["error"]))
    halted = len(result.get("halted", [])) + len(result.get("already_halted", []))
    lines.append("%d/%d engines halted and verified in %s (failed: %s; unverified: %s)" % (
        halted, len(result.get("targets", [])), _fmt_ms(result.get("elapsed_ms")),
        ", ".join(result.get("failed_targets", [])) or "none", ", ".join(result.get("unverified", [])) or "none"))
    return lines


class FilterModule(object):
    def filters(self):
        return {
            "killswitch_targets": killswitch_targets,
            "halt_report_lines": halt_report_lines,
        }
