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


def hold_summary(target):
    """How long a halted engine's halt holds (the module's own wording), or "-" when not reported."""
    return target.get("hold_summary") or "-"


def halt_report_lines(result, orders=None):
    """Short, human report lines: one per engine with status, method and time to halt."""
    orders_by_name = {}
    for row in orders or []:
        orders_by_name[row.get("name")] = row
    lines = []
    width = max([len(t["name"]) for t in result.get("targets", [])] + [6])
    header = "%-*s  %-15s  %-10s  %-9s  %-17s  %s" % (width, "engine", "status", "method", "time",
                                                      "orders after halt", "held by")
    lines.append(header)
    for t in result.get("targets", []):
        row = orders_by_name.get(t["name"])
        after = "-" if row is None else str(row.get("orders_after"))
        method = t.get("method") or "-"
        cells = (width, t["name"], t["status"], method, _fmt_ms(t.get("latency_ms")), after, hold_summary(t))
        lines.append("%-*s  %-15s  %-10s  %-9s  %-17s  %s" % cells)
        if t.get("error") and t["status"] in ("failed", "unverified"):
            lines.append("%-*s    error: %s" % (width, "", t["error"]))
        for attempt in t.get("methods_tried", []):
            if attempt.get("error") and t["status"] not in ("failed", "unverified"):
                lines.append("%-*s    fell back after %s: %s" % (width, "", attempt["type"], attempt["error"]))
    halted = len(result.get("halted", [])) + len(result.get("already_halted", []))
    lines.append("%d/%d engines halted and verified in %s (failed: %s; unverified: %s)" % (
        halted, len(result.get("targets", [])), _fmt_ms(result.get("elapsed_ms")),
        ", ".join(result.get("failed_targets", [])) or "none", ", ".join(result.get("unverified", [])) or "none"))
    if result.get("quiesced_s") is not None:
        lines.append("then waited %.2f s for orders in flight to land (the quiesce, from the last engine this call "
                     "changed) before counting the orders after each engine's halt" % result["quiesced_s"])
    if result.get("quiesce_left_s") is not None:
        lines.append("then %.2f s of the quiesce (for orders in flight to land, from the last engine this call changed) "
                     "were left to wait out before counting the orders after each engine's halt; the venue is "
                     "cancelled meanwhile" % result["quiesce_left_s"])
    if result.get("not_durable"):
        lines.append("WARNING: the halt of %s would lapse by itself (it expires, or a restart drops it): give them a "
                     "durable kill-switch method" % ", ".join(result["not_durable"]))
    return lines


def halt_verdict(result, orders=None, outside=None, state="halted", strict=False, check_mode=False):
    """The kill switch's verdict, once over the fleet in Python (not a Jinja loop per engine): ``{"ok", "msg"}``.

    Not ok when: the module failed (``msg``) and ``strict``; the resume was refused by the gate (always); there is
    no result; a halted engine wrote orders after its verified halt (``orders``: the orders proof's rows); an
    engine outside a scoped halt stopped trading with it (``outside``: the outside-scope proof's rows, see
    ``stopped_with_halt``); a resumed engine wrote no order since."""
    from ansible_collections.tradeops.remediation.plugins.filter.scope import stopped_with_halt

    result = result or {}
    problems = []
    if result.get("msg") and strict:
        problems.append(str(result["msg"]))
    if result.get("gate_refused"):
        problems.append(str(result.get("msg") or "the resume was refused: this run's health gate did not cover it"))
    if "targets" not in result:
        problems.append(str(result.get("msg") or "the kill switch returned no result"))
    for row in orders or []:
        after = int(row.get("orders_after") or 0)
        if state == "halted" and after > 0:
            problems.append("%s wrote %d orders AFTER its halt was verified: it is still trading." % (row["name"], after))
        elif state == "resumed" and after == 0:
            problems.append("%s wrote no order since it was resumed." % row["name"])
    for row in stopped_with_halt(outside or []):
        problems.append("%s is OUTSIDE the scope and stopped trading with the scoped halt (its last order %.1f s "
                        "before it, none in the %.1f s since): the halt reached beyond its scope." % (
                            row["name"], float(row["gap_before"]), float(row["silent_after"])))
    if problems:
        if result.get("msg") and not strict and str(result["msg"]) not in problems:
            problems.insert(0, str(result["msg"]))
        return {"ok": False, "msg": " ".join(problems)}
    if check_mode:
        would = result.get("would_halt", result.get("would_resume", []))
        return {"ok": True, "msg": "Check mode, nothing changed. Would be %s: %s" % (state, ", ".join(would) or "none")}
    not_verified = list(result.get("failed_targets") or []) + list(result.get("unverified") or [])
    if not_verified:
        return {"ok": True, "msg": "Not verified yet (left to repair): " + ", ".join(not_verified)}
    return {"ok": True, "msg": "Every engine verified %s." % state}


def first_halts(targets, previous=None, state="halted"):
    """Per engine, its first verified halt in this run (epoch seconds), from which the run holds it to
    "no order"; earlier values are kept. An engine a halt could not verify (crashed, hung) gets no window
    from that attempt: a hung engine may well trade until the repair restarts it, and its window starts
    at its first verified halt. A resume clears the resumed engines: orders between a resume and a later
    halt are legitimate."""
    out = dict(previous or {})
    for t in targets or []:
        name = t.get("name")
        if name is None:
            continue
        if state != "halted":
            if t.get("status") in ("resumed", "already_resumed"):
                out.pop(name, None)
            continue
        at = t.get("halted_at")
        if at is None or t.get("status") != "halted":
            continue
        at = float(at)
        out[name] = at if out.get(name) is None else min(float(out[name]), at)
    return out


def orders_since(targets, first=None):
    """The rows of the orders proof: each engine with the moment to count its orders from. A halted engine
    is held from its first verified halt in this run, not only from this call, so an engine restarted
    without its halt after it was verified, and that traded until a later halt, is caught; an engine this
    call found already halted (no new halted_at) is checked too."""
    first = first or {}
    rows = []
    for t in targets or []:
        at = t.get("halted_at")
        earlier = first.get(t.get("name"))
        if earlier is not None and t.get("status") in ("halted", "already_halted", "unverified", "failed"):
            at = float(earlier) if at is None else min(float(at), float(earlier))
        rows.append({"name": t.get("name"), "halted_at": at, "resumed_at": t.get("resumed_at")})
    return rows


class FilterModule(object):
    def filters(self):
        return {
            "killswitch_targets": killswitch_targets,
            "halt_report_lines": halt_report_lines,
            "halt_verdict": halt_verdict,
            "first_halts": first_halts,
            "orders_since": orders_since,
        }
