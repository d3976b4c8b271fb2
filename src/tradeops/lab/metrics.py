"""Minimal Prometheus primitives for the engines (text exposition format 0.0.4) and an error-rate window."""

from __future__ import annotations

import bisect
import math
from collections import deque

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in kv.items()) + "}"


def fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Histogram:
    """A cumulative-bucket histogram."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)  # last is +Inf only
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self, name: str, **kv: str) -> list[str]:
        out = []
        running = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            running += n
            out.append(f"{name}_bucket{labels(**kv, le=fmt(bound))} {running}")
        out.append(f"{name}_sum{labels(**kv)} {fmt(self.sum)}")
        out.append(f"{name}_count{labels(**kv)} {self.count}")
        return out


class RateWindow:
    """Attempts and errors over the last ``window`` seconds, in buckets of ``resolution`` seconds.

    Old buckets expire on every read as well as on every write, so the rate forgets old errors even
    while nothing is recorded (an engine that stopped trading reports 0.0 once its window has passed).
    """

    def __init__(self, window: float = 60, resolution: float = 1.0) -> None:
        self.window = window
        self.resolution = resolution
        self._span = max(1, round(window / resolution))  # buckets kept
        self._buckets: deque[list[int]] = deque()  # [bucket index, attempts, errors]

    def record(self, now: float, error: bool) -> None:
        idx = int(now // self.resolution)
        if not self._buckets or self._buckets[-1][0] != idx:
            self._buckets.append([idx, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += int(error)
        self._expire(idx)

    def _expire(self, idx: int) -> None:
        while self._buckets and self._buckets[0][0] <= idx - self._span:
            self._buckets.popleft()

    def clear(self) -> None:
        self._buckets.clear()

    def rate(self, now: float) -> float:
        """Errors / attempts over the window (0.0 without attempts)."""
        self._expire(int(now // self.resolution))
        attempts = sum(b[1] for b in self._buckets)
        errors = sum(b[2] for b in self._buckets)
        return errors / attempts if attempts else 0.0
