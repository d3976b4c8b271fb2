"""stream_plan: the stuck consumers replaced one for one, at least min_consumers, one more when the lag grows, at
most max_consumers, and only the streams that need the runtime; stream_lines marks the stuck consumers."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.streams import stream_lines, stream_plan


def snap(name="s", live=(), stuck=(), lag=0, dlq=None):
    consumers = [{"name": n, "pending": 0} for n in live] + [{"name": n, "pending": 7} for n in stuck]
    return {"name": name, "group": "g", "length": 10, "pending": 7 * len(stuck), "lag": lag, "live": list(live),
            "stuck": list(stuck), "consumers": consumers, "dlq": dlq, "parked": 0}


def test_a_healthy_stream_needs_nothing():
    assert stream_plan({"streams": [snap(live=["g-1"])]}) == []


def test_the_stuck_consumer_is_replaced_one_for_one():
    [plan] = stream_plan({"streams": [snap(live=["g-1"], stuck=["g-2"])]})
    assert plan["replace"] == ["g-2"] and plan["count"] == 2 and "replace the stuck g-2" in plan["reason"]


def test_no_consumer_at_all_gets_the_minimum_and_a_growing_lag_one_more_within_the_maximum():
    [plan] = stream_plan({"streams": [snap()]}, min_consumers=2)
    assert plan["count"] == 2 and plan["reason"] == "no live consumer"
    [plan] = stream_plan({"streams": [snap(live=["g-1", "g-2"], lag=500)]}, scale_lag=100)
    assert plan["count"] == 3 and plan["replace"] == []
    [plan] = stream_plan({"streams": [snap(live=["g-1", "g-2"], stuck=["g-3"], lag=500)]}, max_consumers=3)
    assert plan["count"] == 3


def test_bounds_are_checked():
    with pytest.raises(AnsibleFilterError, match="min_consumers"):
        stream_plan({"streams": []}, min_consumers=3, max_consumers=2)


def test_lines_mark_the_stuck_consumer_and_the_dead_letters():
    [line] = stream_lines({"streams": [snap(live=["g-1"], stuck=["g-2"], dlq={"name": "s.dlq", "count": 4})]})
    assert line == "s (g): length 10, pending 7, lag 0, consumers g-1, g-2 STUCK (7 pending); s.dlq 4, parked 0"
