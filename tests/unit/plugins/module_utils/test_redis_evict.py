"""redis_evict refuses what would be FLUSHALL and names the option; the eviction itself (only the cache, never the
halt keys) runs against the lab's Redis in tests/integration/test_db_connectivity.py."""

from __future__ import annotations

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._redis_evict import DEFAULT_PROTECT, EvictService


@pytest.mark.parametrize("params, message", [
    ({"patterns": ["*"]}, "would match every key"),
    ({"patterns": ["cache:*", ""]}, "would match every key"),
    ({"databases": [-1]}, "databases: expected database numbers"),
    ({"max_memory_ratio": 0}, "max_memory_ratio must be above 0"),
    ({"max_keys": 0}, "max_keys must be at least 1"),
    ({"port": 0}, "port"),
])
def test_bad_options_name_the_option(params, message):
    with pytest.raises(ValidationError, match=message):
        EvictService(dict({"host": "127.0.0.1", "patterns": ["cache:*"]}, **params))


def test_the_halt_keys_are_always_protected():
    svc = EvictService({"patterns": ["cache:*"], "protect": ["session:*"]})
    assert svc.protect[:len(DEFAULT_PROTECT)] == DEFAULT_PROTECT and svc.protect[-1] == "session:*"
    assert "emergency_halt" in svc.protect and "emergency_halt:*" in svc.protect
