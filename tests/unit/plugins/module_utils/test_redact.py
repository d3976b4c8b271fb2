"""The one redaction helper every module_utils class uses."""

from ansible_collections.tradeops.remediation.plugins.module_utils import _pg_integrity, _probes, _secrets
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import redact


def test_secrets_are_replaced_in_nested_values_and_others_kept():
    out = redact({"msg": "auth pw=hunter2 failed", "items": ["hunter2", 3], "n": None}, ["hunter2"])
    assert out == {"msg": "auth pw=******** failed", "items": ["********", 3], "n": None}


def test_empty_values_are_ignored_and_longer_secrets_go_first():
    assert redact("abc", ["", None]) == "abc"
    # "tok" is a prefix of the longer secret: the longer one must not be half-revealed
    assert redact("tokLONGER tok", ["tok", "tokLONGER"]) == "******** ********"


def test_every_service_uses_the_same_helper():
    assert _probes.redact is _pg_integrity.redact is _secrets.redact is redact
