"""The orders proof's time windows (plugins/filter/killswitch.py): from when is each engine held to "no order"."""

from __future__ import annotations

from ansible_collections.tradeops.remediation.plugins.filter.killswitch import first_halts, halt_verdict, orders_since


def t(name, status, halted_at=None, resumed_at=None):
    return {"name": name, "status": status, "halted_at": halted_at, "resumed_at": resumed_at}


def test_contain_then_reverify_holds_each_engine_from_its_first_verified_halt():
    contain = [t("e1", "halted", 100.0), t("e2", "unverified"), t("e3", "failed")]
    first = first_halts(contain, {}, "halted")
    # a hung or crashed engine may trade until the repair restarts it: no window from the failed attempt
    assert first == {"e1": 100.0}
    # re-verify after the repair: e1 already halted (no new halted_at), e2/e3 restarted and halted at 130/131
    reverify = [t("e1", "already_halted"), t("e2", "halted", 130.0), t("e3", "halted", 131.0)]
    rows = {r["name"]: r["halted_at"] for r in orders_since(reverify, first)}
    # without the run's history e1 (already halted) would not be checked at all
    assert rows == {"e1": 100.0, "e2": 130.0, "e3": 131.0}
    assert orders_since(reverify, {})[0] == {"name": "e1", "halted_at": None, "resumed_at": None}
    # the earliest moment is kept, new ones are added
    assert first_halts(reverify, first, "halted") == {"e1": 100.0, "e2": 130.0, "e3": 131.0}


def test_a_resume_clears_the_window_so_a_later_halt_starts_a_new_one():
    first = {"e1": 100.0, "e2": 101.0}
    after_resume = first_halts([t("e1", "resumed", resumed_at=200.0)], first, "resumed")
    assert after_resume == {"e2": 101.0}
    rows = orders_since([t("e1", "halted", 300.0), t("e2", "already_halted")], after_resume)
    assert {r["name"]: r["halted_at"] for r in rows} == {"e1": 300.0, "e2": 101.0}


def test_a_resume_call_keeps_its_resumed_at():
    rows = orders_since([t("e1", "resumed", resumed_at=200.0)], {"e1": 100.0})
    assert rows == [{"name": "e1", "halted_at": None, "resumed_at": 200.0}]


def test_halt_verdict_every_engine_halted_and_silent():
    result = {"targets": [{"name": "e1"}, {"name": "e2"}], "failed_targets": [], "unverified": []}
    verdict = halt_verdict(result, [{"name": "e1", "orders_after": 0}, {"name": "e2", "orders_after": 0}])
    assert verdict == {"ok": True, "msg": "Every engine verified halted."}


def test_halt_verdict_an_engine_that_still_trades_fails_and_is_named():
    verdict = halt_verdict({"targets": []}, [{"name": "e1", "orders_after": 0}, {"name": "e2", "orders_after": 3}])
    assert not verdict["ok"]
    assert verdict["msg"] == "e2 wrote 3 orders AFTER its halt was verified: it is still trading."


def test_halt_verdict_strictness_gate_and_resume():
    assert not halt_verdict({"targets": [], "msg": "e1 unreachable"}, strict=True)["ok"]
    lenient = halt_verdict({"targets": [], "msg": "e1 unreachable", "unverified": ["e1"]})
    assert lenient == {"ok": True, "msg": "Not verified yet (left to repair): e1"}
    assert not halt_verdict({"targets": [], "gate_refused": True, "msg": "no gate"})["ok"]
    assert not halt_verdict({"msg": "boom"})["ok"]
    resumed = halt_verdict({"targets": []}, [{"name": "e1", "orders_after": 0}], state="resumed")
    assert resumed == {"ok": False, "msg": "e1 wrote no order since it was resumed."}


def test_halt_verdict_a_scoped_halt_that_silenced_an_outside_engine_fails():
    outside = [{"name": "e9", "orders_before": 12, "orders_after": 0, "gap_before": 0.1, "silent_after": 3.0},
               {"name": "e8", "orders_before": 2, "orders_after": 0, "gap_before": 4.0, "silent_after": 3.0}]
    verdict = halt_verdict({"targets": []}, [], outside)
    assert not verdict["ok"] and "e9 is OUTSIDE the scope" in verdict["msg"] and "e8" not in verdict["msg"]


def test_halt_verdict_check_mode():
    verdict = halt_verdict({"targets": [], "would_halt": ["e1"]}, check_mode=True)
    assert verdict == {"ok": True, "msg": "Check mode, nothing changed. Would be halted: e1"}
