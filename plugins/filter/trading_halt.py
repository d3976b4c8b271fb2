# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Why engines halted themselves (seed 004 "Trading System Halted": ``GET /pnl/status`` and its ``haltReason``).

``halt_status_probes`` turns each engine's status endpoint (host variable, default ``tradeops_pnl_status``) into
one health_check http probe, so the whole fleet is read in one concurrent call: the probe is GO while the engine
trades, and captures the halt reason, the P&L and the risk manager's rejections whatever its status.
``halt_reason_plan`` sorts the engines by what the runbook does about their reason.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

DEFAULT_FIELDS = {"halted_field": "halted", "reason_field": "haltReason", "pnl_field": "pnl",
                  "capture": ["dailyTarget", "dailyLossLimit", "riskRejections"]}
PASSED = ("url", "token", "token_header", "headers", "timeout", "validate_certs", "ca_path", "client_cert",
          "client_key", "proxy")


def halt_status_probes(hosts, hostvars, var="tradeops_pnl_status"):
    """One http probe per host that has ``var``: ``{url, token, token_header, headers, timeout, halted_field,
    reason_field, pnl_field, capture}`` (seed 004: ``/pnl/status`` with ``X-Admin-Token``)."""
    probes = []
    for host in hosts or []:
        try:
            config = hostvars[host].get(var)
        except KeyError:
            raise AnsibleFilterError("halt_status_probes: host %r is not in hostvars" % host)
        if not config:
            continue
        if not isinstance(config, dict) or not config.get("url"):
            raise AnsibleFilterError("halt_status_probes: %s.%s must be a dict with at least url" % (host, var))
        fields = dict(DEFAULT_FIELDS)
        fields.update((k, v) for k, v in config.items() if k in DEFAULT_FIELDS)
        probe = dict((k, v) for k, v in config.items() if k in PASSED)
        probe.update(name=host + "-halted", component=host, type="http", field=fields["halted_field"], value=False,
                     capture=[fields["reason_field"], fields["pnl_field"]] + list(fields["capture"]))
        probes.append(probe)
    return probes


def halt_reason_plan(result, normal=("daily_target_reached",), critical=("daily_loss_limit",),
                     reason_field="haltReason", pnl_field="pnl"):
    """Sort the engines a ``halt_status_probes`` health_check read: ``trading``, ``normal`` (a reason that is
    normal operation: reported, left alone), ``critical`` (kept halted, escalated), ``other`` (diagnosed, then the
    gated resume), ``unreadable`` (no answer: nothing is known, nothing is done). ``engines`` holds each one's
    ``halted``, ``reason``, ``pnl`` and the other captured fields."""
    plan = {"trading": [], "normal": [], "critical": [], "other": [], "unreadable": [], "engines": {}}
    for probe in (result or {}).get("probes") or []:
        name = probe.get("component") or probe.get("name")
        captured = probe.get("captured")
        if captured is None or probe.get("value") is None:
            plan["unreadable"].append(name)
            plan["engines"][name] = {"halted": None, "reason": None, "error": probe.get("message")}
            continue
        halted = probe.get("value") is True or str(probe.get("value")).lower() == "true"
        reason = captured.get(reason_field)
        entry = dict(captured)
        entry.update(halted=halted, reason=reason, pnl=captured.get(pnl_field))
        plan["engines"][name] = entry
        if not halted:
            plan["trading"].append(name)
        elif reason in normal:
            plan["normal"].append(name)
        elif reason in critical:
            plan["critical"].append(name)
        else:
            plan["other"].append(name)
    for key in ("trading", "normal", "critical", "other", "unreadable"):
        plan[key].sort()
    return plan


def halt_reason_lines(plan):
    """One line per halted or unreadable engine, for the on-call engineer."""
    what = {"normal": "normal operation: reported, left alone", "critical": "CRITICAL: kept halted, escalated",
            "other": "diagnosed; resumed only through the gated resume", "unreadable": "status unreadable"}
    lines = []
    for kind in ("critical", "other", "normal", "unreadable"):
        for name in plan.get(kind) or []:
            engine = plan["engines"].get(name) or {}
            pnl = engine.get("pnl")
            money = "" if pnl is None else " (pnl %s)" % pnl
            lines.append("%s: %s%s - %s" % (name, engine.get("reason") or "-", money, what[kind]))
    trading = plan.get("trading") or []
    lines.append("%d engine(s) trading" % len(trading))
    return lines


class FilterModule(object):
    def filters(self):
        return {"halt_status_probes": halt_status_probes, "halt_reason_plan": halt_reason_plan,
                "halt_reason_lines": halt_reason_lines}
