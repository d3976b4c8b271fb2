"""The venue filters: host vars -> venue_guard accounts, results -> report lines."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.venue import venue_accounts, venue_report_lines


def test_accounts_come_from_the_hosts_that_have_one_once_each_named_after_the_host_by_default():
    hostvars = {
        "engine-1": {"venue_account": {"api_key": "k1", "secret": "s1"}},
        "engine-2": {},
        "engine-3": {"venue_account": {"name": "shared", "api_key": "k3", "secret": "s3"}},
        "engine-4": {"venue_account": {"name": "shared", "api_key": "k3", "secret": "s3"}},
        "engine-5": {"venue_account": {}},
    }
    accounts = venue_accounts(list(hostvars), hostvars)
    assert [a["name"] for a in accounts] == ["engine-1", "shared"]
    assert accounts[0]["api_key"] == "k1"


def test_a_malformed_account_or_an_unknown_host_is_refused():
    with pytest.raises(AnsibleFilterError, match="must be a dict"):
        venue_accounts(["e"], {"e": {"venue_account": "key"}})
    with pytest.raises(AnsibleFilterError, match="not in hostvars"):
        venue_accounts(["x"], {})


def test_report_lines_say_what_was_working_and_why_an_account_is_not_verified():
    lines = venue_report_lines({"action": "cancel_all", "working_orders_before": 5, "working_orders_after": 2,
                                "unverified": ["b"], "accounts": [
                                    {"name": "a", "status": "verified", "working_before": 3, "working_after": 0},
                                    {"name": "b", "status": "unverified", "working_before": 2, "working_after": 2,
                                     "error": "2 order(s) still working"}]})
    assert lines == ["a: verified, working orders 3 -> 0",
                     "b: unverified, working orders 2 -> 2 - 2 order(s) still working",
                     "venue: 5 working order(s) before, 2 after; not verified: b"]
