# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the roles' per-host results into incident record entries."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def repair_results(hosts, hostvars, runtime="process"):
    """For each host that service_recovery restarted (its ``service_recovery_check`` has a status), one entry
    ``{target, action, outcome, detail}``: ``recovered`` when the component is GO again (after a rollback, if
    one was tried), else ``not_recovered`` with the NO-GO probes named."""
    out = []
    for host in hosts:
        host_vars = hostvars[host]
        check = host_vars.get("service_recovery_check") if hasattr(host_vars, "get") else None
        if not isinstance(check, dict) or "status" not in check:
            continue
        final = host_vars.get("service_recovery_after_rollback") or check
        if not isinstance(final, dict) or "status" not in final:
            final = check
        nogo = [p.get("name") for p in final.get("probes") or [] if p.get("status") == "NO-GO"]
        rolled_back = "service_recovery_after_rollback" in host_vars and isinstance(
            host_vars.get("service_recovery_after_rollback"), dict)
        out.append({
            "target": host,
            "action": "restart (%s)%s" % (runtime, ", rollback" if rolled_back else ""),
            "outcome": "recovered" if final.get("status") == "GO" else "not_recovered",
            "detail": ("NO-GO: " + ", ".join(str(n) for n in nogo)) if nogo else "every probe GO",
        })
    return out


class FilterModule(object):
    def filters(self):
        return {"repair_results": repair_results}
