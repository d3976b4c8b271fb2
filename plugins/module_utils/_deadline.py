# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deadlines and a bounded concurrent fan-out.

Every network call in tradeops takes its timeout from a :class:`Deadline`, so a dead or hung
peer can never hold a target past its deadline, and :func:`fan_out` never waits for a target
beyond that target's deadline (plus a small grace), whatever the thread is doing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math
import threading
import time

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import DeadlineExceeded, ValidationError

MIN_CALL_TIMEOUT = 0.05
# No timeout in tradeops may exceed one day: a larger one is a typo (or `inf`), and a hung peer
# would hold a target for longer than any incident lasts.
MAX_TIMEOUT = 86400.0


def check_timeout(value, option, minimum=MIN_CALL_TIMEOUT, maximum=MAX_TIMEOUT):
    """Validate a timeout option: a finite number of seconds within [minimum, maximum].

    Returns it as a float; raises :class:`ValidationError` naming ``option`` otherwise
    (``inf``, ``nan``, negative, zero, or beyond a day). ``None`` passes through.
    """
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError("%s: expected a number of seconds, got %r" % (option, value))
    if not math.isfinite(number):
        raise ValidationError("%s: must be a finite number of seconds, got %r" % (option, value))
    if number < minimum or number > maximum:
        raise ValidationError("%s: must be between %g and %g seconds, got %g" % (option, minimum, maximum, number))
    return number


class Deadline:
    """A point in monotonic time after which work for one target must stop."""

    def __init__(self, seconds, clock=time.monotonic):
        self._clock = clock
        self.seconds = float(seconds)
        self.start = clock()
        self.at = self.start + self.seconds

    def remaining(self):
        return max(0.0, self.at - self._clock())

    def expired(self):
        return self._clock() >= self.at

    def elapsed(self):
        return self._clock() - self.start

    def call_timeout(self, cap=None):
        """The timeout for the next network call: what is left, optionally capped, never 0."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded("deadline of %.1fs exceeded" % self.seconds)
        if cap is not None:
            left = min(left, cap)
        return max(MIN_CALL_TIMEOUT, left)

    def sub(self, seconds):
        """A child deadline that ends at ``seconds`` from now or at this deadline, whichever is first."""
        return Deadline(min(float(seconds), self.remaining()), clock=self._clock)


def fan_out(items, work, concurrency, timeout, on_error, grace=0.5):
    """Run ``work(item, deadline)`` for every item, at most ``concurrency`` at once.

    Each item gets its own :class:`Deadline` of ``timeout`` seconds, started when its worker
    picks it up. Results come back in the order of ``items``. If ``work`` raises, the result is
    ``on_error(item, None, exc)``. An item whose worker is still busy ``grace`` seconds after its
    deadline is abandoned and reported as ``on_error(item, elapsed, None)``; a fresh worker
    replaces the stuck one, so a hung peer delays neither the caller nor the other items.
    Worker threads are daemons.
    """
    items = list(items)
    n = len(items)
    results = [None] * n
    done = [False] * n
    started = [None] * n
    lock = threading.Lock()
    cond = threading.Condition(lock)
    next_index = [0]

    def worker():
        while True:
            with lock:
                i = next_index[0]
                if i >= n:
                    return
                next_index[0] += 1
                started[i] = time.monotonic()
            try:
                result = work(items[i], Deadline(timeout))
            except Exception as exc:  # noqa: BLE001 - a worker must never die silently
                result = on_error(items[i], None, exc)
            with cond:
                if not done[i]:
                    results[i] = result
                    done[i] = True
                cond.notify_all()

    def spawn():
        t = threading.Thread(target=worker, name="tradeops-fanout")
        t.daemon = True
        t.start()

    for dummy in range(max(1, min(int(concurrency), n))):
        spawn()

    with cond:
        while True:
            if all(done):
                break
            now = time.monotonic()
            next_wake = None
            for i in range(n):
                if done[i] or started[i] is None:
                    continue
                limit = started[i] + timeout + grace
                if now >= limit:
                    results[i] = on_error(items[i], now - started[i], None)
                    done[i] = True
                    if next_index[0] < n:
                        spawn()
                elif next_wake is None or limit < next_wake:
                    next_wake = limit
            if all(done):
                break
            wait = 0.05 if next_wake is None else max(0.0, min(next_wake - now, 0.5))
            cond.wait(wait)
    return results
