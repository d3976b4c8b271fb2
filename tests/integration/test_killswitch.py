"""HaltService and its backends against the lab's real engines, PostgreSQL and Redis.

A halt counts only if the orders table proves it: no order created after the verified halt.
The kubernetes backend is the one exception: it runs against a FAKE of the Kubernetes API
(tests/unit/plugins/module_utils/k8s_fake.py), because no real API server can run here.
"""

from __future__ import annotations

import os
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.inventory.lab import _killswitch_target
from ansible_collections.tradeops.remediation.plugins.module_utils._killswitch import HaltService

from tests.unit.plugins.module_utils.k8s_fake import FakeKubernetes


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from tests.conftest import start_lab

    handle = start_lab(tmp_path_factory.mktemp("ks-lab"), engines=8, order_interval=0.1)
    yield handle
    handle.lab.down()


def engine(lab, name):
    return next(e for e in lab.state["engines"] if e["name"] == name)


def target_for(lab, name, only=None):
    """The inventory plugin's target for an engine, optionally keeping only some method types."""
    e = engine(lab, name)
    target = _killswitch_target(e, lab.state["admin_token"])
    rd = lab.state["redis"]
    for m in target["methods"]:
        if m["type"] == "redis":
            m.update(host=rd["host"], port=rd["port"], password=rd["password"])
    if only is not None:
        target["methods"] = [m for m in target["methods"] if m["type"] in only]
    return target


def halt(targets, **kw):
    kw.setdefault("timeout", 5)
    return HaltService(targets, reason="unit test", **kw).run()


def resume(targets, **kw):
    kw.setdefault("timeout", 5)
    return HaltService(targets, state="resumed", **kw).run()


def proven_halted(lab, result, name):
    t = next(t for t in result["targets"] if t["name"] == name)
    assert t["status"] == "halted", t
    # watch for five order intervals: at every poll, no order after the verified halt
    watch_until = time.monotonic() + 0.5
    while True:
        assert lab.orders_after(name, t["halted_at"]) == 0, f"{name} traded after its verified halt"
        if time.monotonic() > watch_until:
            break
        time.sleep(0.1)
    assert lab.orders_between(name, t["halted_at"] - 30, t["halted_at"]) > 0
    return t


def proven_resumed(lab, result, name):
    t = next(t for t in result["targets"] if t["name"] == name)
    assert t["status"] == "resumed", t
    counts = lab.wait_for_orders([name], since=t["resumed_at"], timeout=5)
    assert counts[name] > 0, f"{name} did not trade after resume"


@pytest.mark.parametrize("name, kind", [
    ("engine-001", "killswitch_api"),   # seed 001: POST /api/v1/emergency/kill_switch
    ("engine-002", "orchestrate_api"),  # seed 004: POST /admin/orchestrate/halt with X-Admin-Token
    ("engine-003", "redis"),            # seed 003: emergency_halt key with a TTL
    ("engine-004", "file"),             # seed 002: EMERGENCY_STOP flag file
])
def test_each_backend_halts_and_resumes_a_real_engine(lab, name, kind):
    assert engine(lab, name)["methods"][0] == kind
    target = target_for(lab, name)
    target["methods"] = target["methods"][:1]  # the backend under test, no fallback
    result = halt([target])
    t = proven_halted(lab, result, name)
    assert t["method"] == ("http" if kind.endswith("_api") else kind)
    assert t["verified_by"] == "status"
    if kind == "redis":
        # held until the gated resume: the runbook's 1 h expiry must never resume trading by itself
        assert lab.lab.redis_client().ttl(engine(lab, name)["redis_key"]) == -1
    if kind.endswith("_api"):
        assert t["held_by"] == [{"method": "http", "source": f"http POST {target['methods'][0]['url']} "
                                 "(in the engine's memory)", "expires_at": None, "survives_restart": False}]
        assert t["durable"] is False and result["not_durable"] == [name]
    else:
        assert [h["method"] for h in t["held_by"]] == [kind]
        assert t["held_by"][0]["expires_at"] is None and t["durable"] is True and result["not_durable"] == []
    proven_resumed(lab, resume([target]), name)


def test_a_halt_holds_by_every_durable_source_when_the_whole_chain_is_applied(lab):
    """apply_all (what the playbooks' contain phase does): the API halt plus the file flag, no expiry."""
    target = target_for(lab, "engine-001")
    flag = os.path.join(engine(lab, "engine-001")["dir"], "EMERGENCY_STOP")
    try:
        result = halt([target], apply_all=True)
        t = proven_halted(lab, result, "engine-001")
        assert [(h["method"], h["survives_restart"], h["expires_at"]) for h in t["held_by"]] == [
            ("http", False, None), ("file", True, None)]
        assert t["durable"] is True and t["expires_at"] is None and result["not_durable"] == []
        assert os.path.exists(flag)
    finally:
        proven_resumed(lab, resume([target]), "engine-001")
    assert not os.path.exists(flag)


def test_every_halt_call_refreshes_the_redis_key_expiry(lab):
    """A repeat halt of an already-halted engine re-asserts its Redis key: with the runbook's TTL
    (hold_until_resumed=false) the TTL is set back to the full ttl; by default the expiry is removed."""
    name = "engine-003"
    key = engine(lab, name)["redis_key"]
    rc = lab.lab.redis_client()
    target = target_for(lab, name, only=["redis"])
    try:
        first = halt([target], hold_until_resumed=False)
        proven_halted(lab, first, name)
        assert 3500 < rc.ttl(key) <= 3600
        rc.expire(key, 30)  # most of the hour has passed
        again = halt([target], hold_until_resumed=False)
        t = again["targets"][0]
        assert t["status"] == "already_halted" and t["changed"] is True
        assert 3500 < rc.ttl(key) <= 3600, "a repeat halt must refresh the TTL"
        assert t["expires_at"] is not None and t["expires_at"] > time.time() + 3500
        assert t["durable"] is False and again["not_durable"] == [name]
        rc.expire(key, 30)  # a key set with the runbook's expiry, then the default: held until resumed
        held = halt([target])
        assert held["targets"][0]["status"] == "already_halted"
        assert rc.ttl(key) == -1
        assert held["targets"][0]["durable"] is True and held["targets"][0]["expires_at"] is None
    finally:
        proven_resumed(lab, resume([target]), name)


def test_a_refused_redis_connection_leaves_the_fallback_its_share_of_the_deadline(lab, tmp_path):
    """redis-py's default retry took ~4 s on a refused connection whatever the timeout, so the file
    fallback after it was never written within a 4 s deadline."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        flag = tmp_path / "EMERGENCY_STOP"
        target = {"name": "refused", "methods": [
            {"type": "redis", "key": "emergency_halt:refused", "host": "127.0.0.1", "port": port},
            {"type": "file", "path": str(flag)}]}
        started = time.monotonic()
        result = halt([target], timeout=4)
        elapsed = time.monotonic() - started
    t = result["targets"][0]
    assert t["status"] == "halted" and t["method"] == "file", t
    assert "refused" in t["methods_tried"][0]["error"].lower()
    assert flag.exists() and elapsed < 3.0, elapsed


@pytest.mark.parametrize("option, value, message", [
    ("port", 70000, "methods[0].port must be between 1 and 65535, got 70000"),
    ("port", 0, "methods[0].port must be between 1 and 65535, got 0"),
    ("db", -1, "methods[0].db must be between 0 and"),
    ("ttl", 0, "methods[0].ttl must be between 1 and"),
    ("ttl", "soon", "methods[0].ttl must be a whole number, got 'soon'"),
])
def test_redis_options_out_of_range_name_the_option(option, value, message):
    target = {"name": "e1", "methods": [{"type": "redis", "key": "k", option: value}]}
    result = HaltService([target], timeout=1).run()
    assert result["failed_targets"] == ["e1"]
    assert message in result["targets"][0]["error"]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -5, 0, 1e9])
def test_timeout_must_be_finite_and_bounded(value):
    from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError

    with pytest.raises(ValidationError, match="^timeout: "):
        HaltService([{"name": "e1", "methods": [{"type": "file", "path": "/nonexistent/x"}]}], timeout=value)


def test_orchestrate_api_without_the_token_is_refused_and_reported(lab):
    target = target_for(lab, "engine-006", only=["http"])
    target["methods"][0].pop("token")
    result = halt([target], timeout=2)
    t = result["targets"][0]
    assert t["status"] == "failed"
    assert "401" in t["error"]
    assert lab.wait_for_orders(["engine-006"], since=time.time(), timeout=5)["engine-006"] > 0


def test_lying_kill_switch_is_not_verified(lab):
    lab.lab.inject("killswitch-lies", engines=["engine-005"])
    try:
        target = target_for(lab, "engine-005", only=["http"])
        result = halt([target], timeout=3)
        t = result["targets"][0]
        assert t["status"] == "unverified"
        assert t["methods_tried"][0]["action"] == "HTTP 200"
        assert "not verified" in t["error"]
        assert result["unverified"] == ["engine-005"]
        assert HaltService.failure_message(result) and "engine-005" in HaltService.failure_message(result)
        # it really is still trading
        assert lab.wait_for_orders(["engine-005"], since=time.time(), timeout=5)["engine-005"] > 0
    finally:
        lab.lab.inject("killswitch-lies", engines=["engine-005"], clear=True)


def test_fallback_follows_the_chain_order_and_stops_at_the_first_verified(lab):
    lab.lab.inject("killswitch-broken", engines=["engine-005"])
    flag = os.path.join(engine(lab, "engine-005")["dir"], "EMERGENCY_STOP")
    try:
        target = target_for(lab, "engine-005")
        never = {"type": "file", "path": os.path.join(engine(lab, "engine-005")["dir"], "NEVER_TRIED")}
        target["methods"].append(never)
        result = halt([target])
        t = proven_halted(lab, result, "engine-005")
        assert [a["type"] for a in t["methods_tried"]] == ["http", "file"]
        assert "HTTP 500" in t["methods_tried"][0]["error"]
        assert t["method"] == "file" and os.path.exists(flag)
        assert not os.path.exists(never["path"]), "a method after the verified one was applied"
        proven_resumed(lab, resume([target]), "engine-005")
        assert not os.path.exists(flag), "resume must undo every method of the chain"
    finally:
        lab.lab.inject("killswitch-broken", engines=["engine-005"], clear=True)


def test_hung_engine_is_bounded_and_delays_no_one(lab):
    lab.lab.inject("hang", engines=["engine-007"])
    try:
        targets = [target_for(lab, "engine-007"), target_for(lab, "engine-008")]
        started = time.monotonic()
        result = halt(targets, timeout=2)
        elapsed = time.monotonic() - started
        hung, other = result["targets"]
        assert hung["status"] in ("failed", "unverified") and "no answer" in hung["error"]
        assert other["status"] == "halted" and other["latency_ms"] < 1500
        assert elapsed < 2 + 0.8, elapsed
    finally:
        lab.lab.inject("hang", engines=["engine-007"], clear=True)
        resume([target_for(lab, "engine-007"), target_for(lab, "engine-008")])


def test_crashed_engine_fails_fast_with_the_connection_error(lab):
    lab.lab.inject("crash", engines=["engine-006"])
    try:
        started = time.monotonic()
        result = halt([target_for(lab, "engine-006", only=["http"])], timeout=5)
        t = result["targets"][0]
        assert t["status"] == "failed" and "refused" in t["error"].lower()
        assert time.monotonic() - started < 1.0
    finally:
        lab.lab.inject("crash", engines=["engine-006"], clear=True)


def test_check_mode_changes_nothing_on_real_engines(lab):
    targets = [target_for(lab, n) for n in ("engine-001", "engine-003", "engine-004")]
    result = halt(targets, check_mode=True)
    assert sorted(result["would_halt"]) == ["engine-001", "engine-003", "engine-004"]
    since = time.time()
    assert all(lab.wait_for_orders(["engine-001", "engine-003", "engine-004"], since=since).values())
    assert lab.lab.redis_client().exists(engine(lab, "engine-003")["redis_key"]) == 0


def test_kubernetes_scale_to_zero_and_restore_against_a_fake_api():
    """FAKE Kubernetes API (no real API server can run here): see k8s_fake.py."""
    fake = FakeKubernetes()
    fake.add("engine-k8s", replicas=3)
    try:
        method = {"type": "kubernetes", "deployment": "engine-k8s", "namespace": "trading", "api_url": fake.url}
        target = {"name": "k8s", "methods": [method]}
        result = halt([target])
        t = result["targets"][0]
        assert t["status"] == "halted" and t["verified_by"] == "flag"
        dep = fake.get("engine-k8s")
        assert dep["spec"]["replicas"] == 0
        assert dep["metadata"]["annotations"]["tradeops.io/halted-replicas"] == "3"
        assert halt([target])["already_halted"] == ["k8s"]
        result = resume([target])
        assert result["resumed"] == ["k8s"], result
        dep = fake.get("engine-k8s")
        assert dep["spec"]["replicas"] == 3
        assert "tradeops.io/halted-replicas" not in dep["metadata"]["annotations"]
    finally:
        fake.close()


def test_apply_all_does_not_take_an_engine_down_on_top_of_a_verified_flag(tmp_path):
    """FAKE Kubernetes API (no real API server can run here): see k8s_fake.py. With the whole chain applied
    (the contain phase), a scale-to-zero after a verified, durable flag would kill the engine's pods and the
    evidence in them for nothing; it stays a fallback."""
    fake = FakeKubernetes()
    fake.add("engine-k8s", replicas=3)
    flag = tmp_path / "EMERGENCY_STOP"
    try:
        k8s = {"type": "kubernetes", "deployment": "engine-k8s", "namespace": "trading", "api_url": fake.url}
        held = halt([{"name": "k8s", "methods": [{"type": "file", "path": str(flag)}, k8s]}], apply_all=True)
        t = held["targets"][0]
        assert t["status"] == "halted" and t["method"] == "file" and flag.exists()
        assert t["methods_tried"][1]["action"].startswith("skipped: already halted; kubernetes scale")
        assert fake.get("engine-k8s")["spec"]["replicas"] == 3
        assert [h["method"] for h in t["held_by"]] == ["file"] and t["durable"] is True
        # still the fallback when the flag cannot be written
        broken = {"type": "file", "path": str(tmp_path / "missing-dir" / "EMERGENCY_STOP")}
        fell_back = halt([{"name": "k8s", "methods": [broken, k8s]}], apply_all=True)["targets"][0]
        assert fell_back["status"] == "halted" and fell_back["method"] == "kubernetes"
        assert fake.get("engine-k8s")["spec"]["replicas"] == 0
    finally:
        fake.close()
