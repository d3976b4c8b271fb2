# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Performance degradation (seed 000 P2): one line per profiled engine, for people."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def _mib(value):
    return "?" if value is None else "%.0f MiB" % (float(value) / 1048576.0)


def profile_line(row):
    """``engine-002 NO-GO memory_leak: CPU 2.0 %, memory 48 MiB -> 130 MiB (+8.0 MiB/s)`` for a row of
    ``performance_profile``'s ``engines``."""
    row = row or {}
    growth = row.get("memory_growth_bytes_per_second")
    cpu = row.get("cpu_percent")
    text = "%s %s%s: CPU %s, memory %s -> %s%s" % (
        row.get("name"), row.get("status"),
        (" " + ",".join(row.get("findings") or [])) if row.get("findings") else "",
        "?" if cpu is None else "%.1f %%" % cpu,
        _mib(row.get("memory_bytes_first")), _mib(row.get("memory_bytes")),
        "" if growth is None else " (%+.1f MiB/s)" % (growth / 1048576.0))
    if row.get("errors"):
        text += "; " + row["errors"][-1]
    return text


class FilterModule(object):
    def filters(self):
        return {"profile_line": profile_line}
