# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""stream_backlog's plan and lines: which consumers the runtime replaces, how many run, one line per stream.

``stream_plan``: for each stream of a ``stream_backlog`` result, the stuck consumers to replace and the number of
consumers to run: as many as run now (the stuck ones replaced one for one), at least ``min_consumers``, one more
when the lag is above ``scale_lag`` (the backlog grows faster than they drain it), at most ``max_consumers``.
Only the streams that need the runtime are listed.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def stream_plan(result, min_consumers=1, max_consumers=8, scale_lag=100):
    try:
        low, high, lag_limit = int(min_consumers), int(max_consumers), int(scale_lag)
    except (TypeError, ValueError):
        raise AnsibleFilterError("stream_plan: min_consumers, max_consumers and scale_lag must be whole numbers")
    if not 1 <= low <= high:
        raise AnsibleFilterError("stream_plan: need 1 <= min_consumers (%s) <= max_consumers (%s)" % (low, high))
    plan = []
    for snap in (result or {}).get("streams") or []:
        running = len(snap.get("live") or []) + len(snap.get("stuck") or [])
        count = max(running, low)
        reasons = []
        if snap.get("stuck"):
            reasons.append("replace the stuck %s" % ", ".join(snap["stuck"]))
        if not snap.get("live") and not snap.get("stuck"):
            reasons.append("no live consumer")
        if snap.get("lag") is not None and snap["lag"] > lag_limit:
            count += 1
            reasons.append("lag %d above %d: one more consumer" % (snap["lag"], lag_limit))
        count = min(count, high)
        if reasons or count != running:
            plan.append({"stream": snap["name"], "group": snap["group"], "replace": list(snap.get("stuck") or []),
                         "count": count, "reason": "; ".join(reasons) or "at least %d consumer(s)" % low})
    return plan


def stream_lines(result):
    """One line per stream: pending, lag, consumers (stuck ones marked), the dead-letter and parked counts."""
    lines = []
    for snap in (result or {}).get("streams") or []:
        consumers = ", ".join("%s%s" % (c["name"], " STUCK (%d pending)" % c["pending"]
                                        if c["name"] in (snap.get("stuck") or []) else "")
                              for c in snap.get("consumers") or []) or "none"
        dlq = snap.get("dlq")
        lines.append("%s (%s): length %d, pending %d, lag %s, consumers %s%s" % (
            snap["name"], snap["group"], snap.get("length") or 0, snap.get("pending") or 0,
            "?" if snap.get("lag") is None else snap["lag"], consumers,
            "; %s %d, parked %d" % (dlq["name"], dlq["count"], snap.get("parked") or 0) if dlq else ""))
    return lines


class FilterModule(object):
    def filters(self):
        return {"stream_plan": stream_plan, "stream_lines": stream_lines}
