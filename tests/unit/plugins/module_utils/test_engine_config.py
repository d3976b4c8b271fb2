"""engine_config against real local HTTP servers: a setting sent only where it differs and read back, an engine that
does not keep it fails (alone), a hung engine fails within its timeout, check mode sends nothing, the token is sent
in its header; and exchange_plan's decisions."""

from __future__ import annotations

import json
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.filter.exchange import exchange_lines, exchange_plan, venue_probes
from ansible_collections.tradeops.remediation.plugins.module_utils._engine_config import EngineConfigService
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError

from tests.helpers.http import JsonHandler, LocalServer, hung_listener


def engine(keeps=True):
    state = {"venue": "primary", "backoff": False, "posts": 0, "tokens": []}

    class Handler(JsonHandler):
        def do_GET(self):
            state["tokens"].append(self.headers.get("X-Admin-Token"))
            self.reply(200, {k: state[k] for k in ("venue", "backoff")})

        def do_POST(self):
            state["posts"] += 1
            body = json.loads(self.read_body())
            if keeps:
                state.update(body)
            self.reply(200, {k: state[k] for k in ("venue", "backoff")})

    return LocalServer(Handler), state


def target(server, name):
    return {"name": name, "url": server.url + "/admin/config", "token": "tok-canary", "timeout": 2}


def test_set_only_where_it_differs_read_back_and_an_engine_that_does_not_keep_it_fails_alone():
    (a, sa), (b, sb), (c, _sc) = engine(), engine(), engine(keeps=False)
    sb["venue"] = "backup"
    try:
        result = EngineConfigService({"targets": [target(a, "a"), target(b, "b"), target(c, "c")],
                                      "set": {"venue": "backup"}}).run()
    finally:
        for s in (a, b, c):
            s.close()
    rows = {r["name"]: r for r in result["engines"]}
    assert rows["a"]["changed"] and rows["a"]["after"]["venue"] == "backup" and sa["posts"] == 1
    assert not rows["b"]["changed"] and sb["posts"] == 0  # already there: only read
    assert result["failed"] == ["c"] and "did not keep {'venue': 'backup'}" in rows["c"]["error"]
    assert result["status"] == "NO-GO" and result["changed"]
    assert set(sa["tokens"]) == {"tok-canary"}


def test_check_mode_sends_nothing_and_a_hung_engine_fails_within_its_timeout():
    a, sa = engine()
    hung = hung_listener()
    started = time.monotonic()
    try:
        result = EngineConfigService({"targets": [
            target(a, "a"), {"name": "h", "url": f"http://127.0.0.1:{hung.getsockname()[1]}/admin/config",
                             "timeout": 1}], "set": {"backoff": True}, "timeout": 2}, check_mode=True).run()
    finally:
        a.close()
        hung.close()
    assert time.monotonic() - started < 5
    rows = {r["name"]: r for r in result["engines"]}
    assert rows["a"]["would_set"] == {"backoff": True} and sa["posts"] == 0
    assert result["failed"] == ["h"]


@pytest.mark.parametrize("params, message", [
    ({"targets": []}, "targets: name at least one engine"),
    ({"targets": [{"name": "e1"}]}, r"targets\[0\] \(e1\): url is required"),
    ({"targets": [{"name": "e1", "url": "ftp://x"}]}, r"targets\[0\] \(e1\): url"),
    ({"targets": [{"name": "e", "url": "http://x"}, {"name": "e", "url": "http://y"}]}, "each engine once"),
    ({"targets": [{"name": "e", "url": "http://x"}], "set": ["venue"]}, "set must be a dict"),
])
def test_bad_options_name_the_option(params, message):
    with pytest.raises(ValidationError, match=message):
        EngineConfigService(params)


def probe(primary="GO", backup="GO"):
    return {"probes": [{"component": "primary", "status": primary, "latency_ms": 3, "message": "p"},
                       {"component": "backup", "status": backup, "latency_ms": 2, "message": "b"}]}


def configs(*rows):
    return {"engines": [{"name": n, "before": {"venue": v, "backoff": bo, "venue_calls": {"calls": c,
                                                                                         "rate_limited": rl}}}
                        for n, v, bo, c, rl in rows]}


def test_exchange_plan_fails_over_cancels_orphans_fails_back_and_backs_off():
    fleet = configs(("e1", "primary", False, 5, 0.6), ("e2", "backup", False, 5, 0.0), ("e3", "primary", True, 1, 0))
    p = exchange_plan(probe(primary="NO-GO"), fleet)
    assert p["failover"] == ["e1", "e3"] and p["orphans"] == [] and p["backoff_on"] == ["e1"]
    p = exchange_plan(probe(), fleet, restore=True)
    assert p["failover"] == [] and p["orphans"] == p["failback"] == ["e2"] and p["backoff_off"] == ["e3"]
    p = exchange_plan(probe(primary="NO-GO", backup="NO-GO"), fleet)
    assert p["stranded"] == ["e1", "e3"] and p["failover"] == []
    assert "NO venue answers: left to a person: e1, e3" in exchange_lines(p)
    assert [v["component"] for v in venue_probes({"primary": {"ping_url": "http://p/0/public/Time"},
                                                   "backup": {"ping_url": "http://b/0/public/Time"}})] == [
        "backup", "primary"]


def test_exchange_plan_names_the_engines_whose_market_data_is_stale():
    fleet = {"engines": [
        {"name": "fresh", "before": {"venue": "primary", "market_data": {"url": "ws://x", "age_s": 0.4}}},
        {"name": "stale", "before": {"venue": "primary", "market_data": {"url": "ws://x", "age_s": 9.0}}},
        {"name": "never", "before": {"venue": "primary", "market_data": {"url": "ws://x", "age_s": None}}},
        {"name": "nofeed", "before": {"venue": "primary", "market_data": {"url": None, "age_s": None}}}]}
    p = exchange_plan(probe(), fleet, max_market_data_age=5)
    assert p["feed_stale"] == ["stale", "never"] and not p["healthy"]


def test_venue_key_rotations_write_direct_test_with_the_old_refused_and_revoke():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.tradeops.remediation.plugins.filter.exchange import venue_key_rotations

    hostvars = {"e1": {"tradeops_venue_credential": {
        "store": {"type": "env_file", "path": "/x/venue.env", "key": "VENUE_API_CREDENTIAL"},
        "test": {"url": "http://e1/admin/venue/credential", "header": "X-Venue-Credential"}}}, "e2": {}}
    revoke = {"url": "http://ex/lab/keys/revoke", "body_field": "credential"}
    [item] = venue_key_rotations(["e1"], hostvars, {"e1": {"credential": "k:s"}}, revoke)
    assert item["value"] == "k:s" and item["staging"] == "direct" and item["revoke_previous"]
    assert item["test"]["old_must_fail"] and item["revoke"] == revoke and item["store"]["path"] == "/x/venue.env"
    with pytest.raises(AnsibleFilterError, match="e2 has no tradeops_venue_credential"):
        venue_key_rotations(["e2"], hostvars, {"e2": {"credential": "k:s"}}, revoke)
    with pytest.raises(AnsibleFilterError, match="issued no key for e1"):
        venue_key_rotations(["e1"], hostvars, {}, revoke)
