# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that assemble health_check probes from the inventory and summarise the results."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def stack_probes(hosts, hostvars, var="tradeops_health_probes", extra=None):
    """Every play host's probes (host variable ``var``), each tagged with its host as component,
    plus ``extra`` probes for shared components (database, cache, resources)."""
    probes = []
    for host in hosts:
        try:
            host_vars = hostvars[host]
        except KeyError:
            raise AnsibleFilterError("stack_probes: host %r is not in hostvars" % host)
        for probe in (host_vars.get(var) if hasattr(host_vars, "get") else None) or []:
            probe = dict(probe)
            probe.setdefault("component", host)
            probes.append(probe)
    for probe in extra or []:
        probes.append(dict(probe))
    return probes


def resource_probes(path="/", min_free_bytes=1073741824, max_memory_percent=85, max_load_per_cpu=0.8,
                    component="controller"):
    """Seed 000's resource thresholds: disk under 1 GB free is critical; memory above 85% and
    CPU (load per core) above 80% are warnings."""
    return [
        {"name": "disk-free", "type": "disk", "path": path, "min_free_bytes": int(min_free_bytes),
         "severity": "critical", "component": component},
        {"name": "memory-used", "type": "memory", "max_used_percent": float(max_memory_percent),
         "severity": "warning", "component": component},
        {"name": "cpu-load", "type": "load", "max_load_per_cpu": float(max_load_per_cpu),
         "severity": "warning", "component": component},
    ]


def health_summary_lines(result, limit=40):
    """A one-screen summary: the verdict, then every probe that is not GO, then a count."""
    probes = result.get("probes", [])
    bad = [p for p in probes if p.get("status") != "GO"]
    lines = ["%s: %d probes, %d NO-GO, %d warnings (%d rounds, %s ms)" % (
        result.get("status", "?"), len(probes), len(result.get("nogo", [])), len(result.get("warning_probes", [])),
        result.get("attempts", 0), result.get("elapsed_ms", "?"))]
    for p in bad[:limit]:
        cells = (p.get("status"), p.get("name"), p.get("component") or "-", p.get("message") or "")
        lines.append("%-6s %-28s %-10s %s" % cells)
    if len(bad) > limit:
        lines.append("... and %d more" % (len(bad) - limit))
    return lines


class FilterModule(object):
    def filters(self):
        return {
            "stack_probes": stack_probes,
            "resource_probes": resource_probes,
            "health_summary_lines": health_summary_lines,
        }
