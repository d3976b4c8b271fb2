# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The performance profile of a fleet (seed 000 P2 "performance_profile.py --duration", seed 004 P2, seed 002
memory issues): every engine's process CPU and resident memory sampled from its own Prometheus page over a
window, in one call, and Redis latency (seed 004's ``redis-cli --latency``) over the same window.

A target is ``cpu_high`` when its CPU over the window (the counter's increase over the elapsed time) is above
``max_cpu_percent``; ``memory_leak`` when its resident memory grows faster than
``max_memory_growth_bytes_per_second`` (the least-squares slope over every sample: one allocation spike does not
make a leak, steady growth does) and grew in most intervals; ``memory_high`` above ``max_memory_bytes``.
No Ansible import: :class:`ProfileService` raises the collection's errors; the module maps them.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.tradeops.remediation.plugins.module_utils import _http, _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._probes import (
    PrometheusParseError,
    parse_prometheus,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import missing, number

ACCEPT = {"Accept": "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"}
CPU_METRIC = "process_cpu_seconds_total"
MEMORY_METRIC = "process_resident_memory_bytes"
FINDINGS = ("cpu_high", "memory_leak", "memory_high")

TARGET_ARGSPEC = _http.argspec("transport", "auth", name=dict(type="str", required=True),
                               url=dict(type="str", required=True), labels=dict(type="dict"),
                               timeout=dict(type="float", default=3.0))


def _sample(text, metric, labels):
    """The value of ``metric`` (with ``labels``) in a Prometheus page; None when absent; the sum when several
    series match (a process's CPU split by mode)."""
    values = [value for name, found, value in parse_prometheus(text)
              if name == metric and all(str(found.get(k)) == str(v) for k, v in labels.items())]
    return sum(values) if values else None


def slope(points):
    """The least-squares slope of ``[(t, y)]``, per second; 0 for fewer than two distinct times."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    den = sum((p[0] - mt) ** 2 for p in points)
    if den <= 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / den


class Target:
    def __init__(self, index, spec):
        where = "targets[%d]" % index
        if missing(spec.get("name")):
            raise ValidationError("%s.name is required" % where)
        self.name = str(spec["name"])
        where = "%s (%s)" % (where, self.name)
        self.url = str(spec.get("url") or "")
        _http.check_url(self.url, where + ".url")
        self.labels = dict(spec.get("labels") or {})
        self.timeout = number(spec.get("timeout"), where + ".timeout", minimum=0.1, maximum=60, default=3.0)
        self.client = _http.client(_http.http_options(spec, where + ": "))
        self.samples = []  # (t, cpu seconds or None, memory bytes or None)
        self.errors = []

    def scrape(self, deadline, cpu_metric, memory_metric):
        resp = self.client.request(self.url, "GET", deadline=deadline, headers=ACCEPT)
        if resp.status != 200:
            raise BackendError("GET %s answered HTTP %d" % (self.url, resp.status))
        t = time.time()
        try:
            text = resp.body.decode("utf-8", "replace")
            return t, _sample(text, cpu_metric, self.labels), _sample(text, memory_metric, self.labels)
        except PrometheusParseError as err:
            raise BackendError("GET %s: not a Prometheus text exposition: %s" % (self.url, err))


class ProfileService:
    """Sample every target (and Redis) every ``interval`` seconds for ``window`` seconds, then judge."""

    def __init__(self, targets, window=10.0, interval=1.0, cpu_metric=CPU_METRIC, memory_metric=MEMORY_METRIC,
                 max_cpu_percent=80.0, max_memory_bytes=None, max_memory_growth_bytes_per_second=1048576,
                 redis=None, concurrency=32):
        if not targets:
            raise ValidationError("targets must name at least one engine")
        self.targets = [Target(i, spec) for i, spec in enumerate(targets)]
        names = [t.name for t in self.targets]
        dup = sorted(set(n for n in names if names.count(n) > 1))
        if dup:
            raise ValidationError("targets: duplicate name(s) %s" % ", ".join(dup))
        self.window = number(window, "window", minimum=1, maximum=3600)
        self.interval = number(interval, "interval", minimum=0.2, maximum=self.window)
        self.cpu_metric = str(cpu_metric)
        self.memory_metric = str(memory_metric)
        self.max_cpu_percent = number(max_cpu_percent, "max_cpu_percent", minimum=0)
        self.max_memory_bytes = number(max_memory_bytes, "max_memory_bytes", integer=True, minimum=1)
        self.max_growth = number(max_memory_growth_bytes_per_second, "max_memory_growth_bytes_per_second",
                                 minimum=0)
        self.redis = _redis.redis_options(redis, "redis") if redis else None
        self.redis_ms = []
        self.redis_errors = []
        self.concurrency = int(number(concurrency, "concurrency", integer=True, minimum=1, maximum=256))

    def _round(self):
        def work(target, deadline):
            try:
                target.samples.append(target.scrape(deadline, self.cpu_metric, self.memory_metric))
            except BackendError as err:
                target.errors.append(str(err))
            return None

        def failed(target, elapsed, exc):
            target.errors.append(str(exc) if exc else "no answer within %.1fs" % target.timeout)

        pinger = None
        if self.redis is not None:
            pinger = threading.Thread(target=self._ping)
            pinger.daemon = True
            pinger.start()
        fan_out(self.targets, work, self.concurrency, max(t.timeout for t in self.targets), failed)
        if pinger is not None:
            pinger.join(self.interval + 5)

    def _ping(self):
        start = time.monotonic()
        try:
            _redis.call(self.redis, Deadline(3.0), lambda c: c.ping(), "the redis latency sample")
            self.redis_ms.append((time.monotonic() - start) * 1000.0)
        except BackendError as err:
            self.redis_errors.append(str(err))

    def run(self):
        started = time.monotonic()
        rounds = int(self.window / self.interval) + 1
        for i in range(rounds):
            due = started + i * self.interval
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._round()
        return self.result(time.monotonic() - started)

    def judge(self, target):
        cpu = [(s[0], s[1]) for s in target.samples if s[1] is not None]
        mem = [(s[0], s[2]) for s in target.samples if s[2] is not None]
        row = {"name": target.name, "samples": len(target.samples), "errors": target.errors[-3:],
               "cpu_percent": None, "memory_bytes": None, "memory_bytes_first": None,
               "memory_growth_bytes_per_second": None, "findings": []}
        if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0]:
            row["cpu_percent"] = round(100.0 * (cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 1)
            if row["cpu_percent"] > self.max_cpu_percent:
                row["findings"].append("cpu_high")
        if mem:
            row["memory_bytes_first"] = int(mem[0][1])
            row["memory_bytes"] = int(mem[-1][1])
            if self.max_memory_bytes is not None and mem[-1][1] > self.max_memory_bytes:
                row["findings"].append("memory_high")
        if len(mem) >= 3:
            growth = slope(mem)
            row["memory_growth_bytes_per_second"] = int(growth)
            rises = sum(1 for i in range(1, len(mem)) if mem[i][1] > mem[i - 1][1])
            if growth > self.max_growth and rises * 2 > len(mem) - 1:
                row["findings"].append("memory_leak")
        row["status"] = "NO-GO" if row["findings"] else ("GO" if len(target.samples) >= 2 else "UNKNOWN")
        return row

    def result(self, elapsed):
        rows = [self.judge(t) for t in self.targets]
        out = {
            "engines": rows,
            "findings": dict((f, [r["name"] for r in rows if f in r["findings"]]) for f in FINDINGS),
            "unknown": [r["name"] for r in rows if r["status"] == "UNKNOWN"],
            "window": round(elapsed, 2),
            "thresholds": {"max_cpu_percent": self.max_cpu_percent, "max_memory_bytes": self.max_memory_bytes,
                           "max_memory_growth_bytes_per_second": self.max_growth},
        }
        if self.redis is not None:
            ms = self.redis_ms
            out["redis_latency_ms"] = {
                "server": self.redis.describe(), "samples": len(ms), "errors": self.redis_errors[-3:],
                "min": round(min(ms), 3) if ms else None, "max": round(max(ms), 3) if ms else None,
                "avg": round(sum(ms) / len(ms), 3) if ms else None,
            }
        out["status"] = "NO-GO" if any(out["findings"].values()) else ("UNKNOWN" if out["unknown"] else "GO")
        return out
