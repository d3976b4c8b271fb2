"""cidr_networks writes addresses as iptables-save / ip6tables-save print them: what the isolate role compares
the host's rules with, so a host already isolated is left alone (and check mode reports no change)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.tradeops.remediation.plugins.filter.network import cidr_networks


def test_addresses_come_out_as_iptables_save_prints_them():
    assert cidr_networks([" 10.1.2.3 ", "10.1.2.3/24", "192.168.0.0/16", "2001:DB8:0:0::1", "2001:db8::7/64",
                          "::ffff:10.0.0.1", "0.0.0.0/0"]) == [
        "10.1.2.3/32", "10.1.2.0/24", "192.168.0.0/16", "2001:db8::1/128", "2001:db8::/64",
        "::ffff:a00:1/128", "0.0.0.0/0"]


@pytest.mark.parametrize("value", ["10.0.0.300", "host.example", "", None, "10.0.0.1/33"])
def test_a_value_that_is_not_an_address_names_the_option(value):
    with pytest.raises(AnsibleFilterError, match=r"^isolate_allow_outbound\[\]\.to\[1\]: "):
        cidr_networks(["10.0.0.1", value], "isolate_allow_outbound[].to")
