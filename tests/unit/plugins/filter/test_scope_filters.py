"""The scope filters: which engines a scoped incident acts on, and when a scoped fix must escalate instead."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.scope import scope_hosts, scope_plan

FLEET = ["engine-001", "engine-002", "engine-003", "engine-004", "engine-005", "engine-006"]
GROUPS = {
    "all": FLEET + ["lab-controller"],
    "trading_engines": FLEET,
    "strategy_momentum": ["engine-001", "engine-004"],
    "desk_a": ["engine-001", "engine-003", "engine-005"],
    "evidence_targets": ["lab-controller"],
}


@pytest.mark.parametrize("scope", ["all", "", None, ["all"], ["engine-002", "all"]])
def test_all_or_nothing_given_is_every_play_host(scope):
    assert scope_hosts(FLEET, scope, GROUPS) == FLEET


@pytest.mark.parametrize("scope, expected", [
    ("engine-003", ["engine-003"]),
    (["engine-005", "engine-002"], ["engine-002", "engine-005"]),  # in the play's order
    ("strategy_momentum", ["engine-001", "engine-004"]),
    ("strategy_momentum, desk_a", ["engine-001", "engine-003", "engine-004", "engine-005"]),
    (["desk_a", "engine-001"], ["engine-001", "engine-003", "engine-005"]),  # named twice, listed once
    ([], []),
])
def test_a_scope_narrows_the_play_to_hosts_and_groups(scope, expected):
    assert scope_hosts(FLEET, scope, GROUPS) == expected


def test_a_scope_never_widens_the_play():
    play = ["engine-001", "engine-002"]
    assert scope_hosts(play, "desk_a", GROUPS) == ["engine-001"]


@pytest.mark.parametrize("scope, words", [
    ("engine-099", "engine-099 is neither a host of this play nor a group"),
    (["strategy_typo", "engine-007"], "engine-007, strategy_typo are neither"),
    ("evidence_targets", "evidence_targets is neither"),  # a group, but of none of the play's hosts
    ([""], "every entry of the scope must be a host or group name"),
    ([3], "every entry of the scope must be a host or group name"),
    ({"engine": "engine-001"}, "must be 'all' or a list of host and group names, got dict"),
])
def test_a_name_outside_the_play_is_an_error_naming_it(scope, words):
    with pytest.raises(AnsibleFilterError, match=words):
        scope_hosts(FLEET, scope, GROUPS)


def test_the_plan_scopes_the_failing_engines_and_lists_the_rest():
    plan = scope_plan(FLEET, ["engine-005", "engine-002"], 0.5)
    assert plan["scope"] == ["engine-002", "engine-005"]
    assert plan["outside"] == ["engine-001", "engine-003", "engine-004", "engine-006"]
    assert (plan["ratio"], plan["escalate"], plan["shared"]) == (0.3333, False, [])


def test_nothing_failing_is_an_empty_scope_not_an_escalation():
    plan = scope_plan(FLEET, [], 0.5)
    assert plan["scope"] == [] and not plan["escalate"] and plan["outside"] == FLEET


def test_more_than_the_ratio_escalates_and_exactly_the_ratio_does_not():
    assert not scope_plan(FLEET, FLEET[:3], 0.5)["escalate"]
    plan = scope_plan(FLEET, FLEET[:4], 0.5)
    assert plan["escalate"] and plan["reason"] == "4 of 6 engines failing (67%), above the 50% a scoped fix may halt"


def test_a_failing_shared_component_escalates_whatever_the_ratio():
    plan = scope_plan(FLEET, ["postgres", "engine-001"], 0.5)
    assert plan["escalate"] and plan["shared"] == ["postgres"] and plan["scope"] == ["engine-001"]
    assert "shared component(s) failing: postgres" in plan["reason"]


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, "half", None])
def test_the_ratio_must_be_a_fraction(ratio):
    with pytest.raises(AnsibleFilterError, match="max_ratio"):
        scope_plan(FLEET, ["engine-001"], ratio)


def test_only_an_engine_that_was_trading_at_the_halt_is_blamed_on_it():
    from ansible_collections.tradeops.remediation.plugins.filter.scope import stopped_with_halt

    rows = [
        {"name": "silenced", "orders_before": 40, "orders_after": 0, "gap_before": 0.1, "silent_after": 1.4},
        {"name": "self-halted-earlier", "orders_before": 12, "orders_after": 0, "gap_before": 3.2, "silent_after": 1.4},
        {"name": "trading", "orders_before": 40, "orders_after": 12, "gap_before": 0.1, "silent_after": 1.4},
        {"name": "idle", "orders_before": 0, "orders_after": 0, "gap_before": None, "silent_after": 1.4},
    ]
    assert [r["name"] for r in stopped_with_halt(rows)] == ["silenced"]
    with pytest.raises(AnsibleFilterError, match="outside-scope proof's rows"):
        stopped_with_halt(["not a row"])
