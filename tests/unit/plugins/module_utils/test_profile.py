"""performance_profile's service against real local /metrics pages: CPU from the counter's increase, a leak from
steady growth (not from one spike), an engine that does not answer is UNKNOWN, never GO; bad options name the
option."""

from __future__ import annotations

import time

import pytest
from ansible_collections.tradeops.remediation.plugins.filter.performance import profile_line
from ansible_collections.tradeops.remediation.plugins.filter.scope import host_representatives
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._profile import ProfileService, slope

from tests.helpers.http import JsonHandler, LocalServer

MIB = 1024 * 1024


class Engine:
    """A /metrics page whose CPU counter and memory follow functions of the time since start."""

    def __init__(self, cpu_per_s: float, memory) -> None:
        self.start = time.time()
        self.cpu_per_s = cpu_per_s
        self.memory = memory
        engine = self

        class Handler(JsonHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                t = time.time() - engine.start
                self.reply(200, "# TYPE process_cpu_seconds_total counter\n"
                                f'process_cpu_seconds_total{{engine="x"}} {engine.cpu_per_s * t}\n'
                                f'process_resident_memory_bytes{{engine="x"}} {engine.memory(t)}\n'
                                'other_metric{engine="x"} 1\n', content_type="text/plain")

        self.server = LocalServer(Handler)

    def target(self, name):
        return {"name": name, "url": self.server.url + "/metrics", "labels": {"engine": "x"}}


@pytest.fixture
def engines():
    made = []

    def make(cpu_per_s, memory):
        made.append(Engine(cpu_per_s, memory))
        return made[-1]

    yield make
    for e in made:
        e.server.close()


def test_cpu_and_steady_growth_are_found_and_a_healthy_engine_is_go(engines):
    hot = engines(0.9, lambda t: 50 * MIB)
    leak = engines(0.02, lambda t: 50 * MIB + int(t * 8 * MIB))
    spike = engines(0.02, lambda t: 50 * MIB if t < 1.1 else 300 * MIB)  # one allocation, then flat
    fine = engines(0.02, lambda t: 50 * MIB)
    result = ProfileService([hot.target("hot"), leak.target("leak"), spike.target("spike"), fine.target("fine")],
                            window=2.0, interval=0.4).run()
    rows = {r["name"]: r for r in result["engines"]}
    assert result["findings"] == {"cpu_high": ["hot"], "memory_leak": ["leak"], "memory_high": []}
    assert 80 < rows["hot"]["cpu_percent"] < 100
    assert 6 * MIB < rows["leak"]["memory_growth_bytes_per_second"] < 10 * MIB
    assert rows["spike"]["status"] == "GO" and rows["fine"]["status"] == "GO"
    assert result["status"] == "NO-GO"
    cpu = rows["hot"]["cpu_percent"]
    assert profile_line(rows["hot"]).startswith(f"hot NO-GO cpu_high: CPU {cpu:.1f} %, memory 50 MiB -> 50 MiB")


def test_an_engine_that_does_not_answer_is_unknown_never_go(engines):
    fine = engines(0.02, lambda t: 50 * MIB)
    result = ProfileService([fine.target("fine"), {"name": "gone", "url": "http://127.0.0.1:9/metrics",
                                                   "timeout": 0.5}], window=1.0, interval=0.5).run()
    rows = {r["name"]: r for r in result["engines"]}
    assert rows["gone"]["status"] == "UNKNOWN" and rows["gone"]["errors"]
    assert result["unknown"] == ["gone"] and result["status"] == "UNKNOWN"


@pytest.mark.parametrize("targets, kwargs, message", [
    ([], {}, "targets must name at least one engine"),
    ([{"name": "a", "url": "ftp://x"}], {}, "targets[0] (a).url must start with http:// or https://"),
    ([{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}], {}, "duplicate name(s) a"),
    ([{"name": "a", "url": "http://x"}], {"window": 0.1}, "window must be at least 1"),
])
def test_bad_options_name_the_option(targets, kwargs, message):
    with pytest.raises(ValidationError) as err:
        ProfileService(targets, **kwargs)
    assert message in str(err.value)


def test_slope_and_one_host_per_machine():
    assert slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2.0)
    assert slope([(1, 5)]) == 0.0
    hostvars = {"e1": {"ansible_host": "10.0.0.1"}, "e2": {"ansible_host": "10.0.0.1"}, "e3": {}}
    assert host_representatives(["e1", "e2", "e3"], hostvars) == ["e1", "e3"]
