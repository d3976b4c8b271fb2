"""fan_out: deadlines hold even when peers accept connections and never answer."""

from __future__ import annotations

import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _http
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, DeadlineExceeded

from tests.helpers.http import hung_listener


def test_hung_peers_do_not_hold_the_fan_out_past_their_deadline():
    hung = [hung_listener() for _ in range(6)]
    items = [("hung", s.getsockname()[1]) for s in hung] + [("fast", i) for i in range(30)]

    def work(item, deadline):
        kind, port = item
        if kind == "fast":
            return "ok"
        try:
            _http.request(f"http://127.0.0.1:{port}/", timeout=deadline.call_timeout())
        except BackendError as err:
            return f"error: {err}"
        return "answered?"

    def on_error(item, elapsed, exc):
        return "abandoned"

    started = time.monotonic()
    # concurrency 4 < 6 hung peers: the fast items still finish because stuck workers are replaced
    results = fan_out(items, work, concurrency=4, timeout=0.6, on_error=on_error, grace=0.3)
    elapsed = time.monotonic() - started
    for s in hung:
        s.close()
    assert results[6:] == ["ok"] * 30
    assert all(r.startswith("error: GET") and "no answer" in r for r in results[:6]), results[:6]
    # 6 hung peers, 4 workers: two waves of 0.6 s, never 6 x 0.6 s
    assert elapsed < 2.0, elapsed


def test_worker_that_ignores_its_deadline_is_abandoned_not_awaited():
    def work(item, deadline):
        if item == "stuck":
            time.sleep(5)  # ignores the deadline entirely
        return item

    started = time.monotonic()
    results = fan_out(["a", "stuck", "b"], work, concurrency=2, timeout=0.3,
                      on_error=lambda item, elapsed, exc: ("abandoned", item, exc), grace=0.2)
    assert time.monotonic() - started < 1.5
    assert results[0] == "a" and results[2] == "b"
    assert results[1][:2] == ("abandoned", "stuck") and results[1][2] is None


def test_an_exception_in_a_worker_becomes_that_item_result():
    def work(item, deadline):
        raise RuntimeError(f"boom {item}")

    results = fan_out([1, 2], work, concurrency=2, timeout=1, on_error=lambda i, e, exc: str(exc))
    assert results == ["boom 1", "boom 2"]


def test_deadline_call_timeout_is_bounded_and_raises_when_spent():
    d = Deadline(0.2)
    assert 0 < d.call_timeout() <= 0.2
    assert d.call_timeout(cap=0.01) <= 0.05  # never below the floor, never above the cap + floor
    assert d.sub(10).remaining() <= 0.2
    time.sleep(0.25)
    try:
        d.call_timeout()
    except DeadlineExceeded:
        pass
    else:
        raise AssertionError("an expired deadline must refuse to hand out a timeout")
