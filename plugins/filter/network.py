# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Addresses and networks written the way iptables-save and ip6tables-save write them."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types


def cidr_networks(values, option="addresses"):
    """Each address or network as ``network/prefix``: a host gets /32 (or /128), host bits are cleared
    (``10.1.2.3/24`` -> ``10.1.2.0/24``) and IPv6 is compressed, as iptables-save prints them, so the rules a
    host holds compare equal to the rules the role would write. A value that is not an address fails,
    naming ``option``."""
    out = []
    for index, value in enumerate(values or []):
        if not isinstance(value, string_types):
            raise AnsibleFilterError("%s[%d]: expected an address or network, got %r" % (option, index, value))
        try:
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError as err:
            raise AnsibleFilterError("%s[%d]: %r is not an IPv4 or IPv6 address or network (%s)"
                                     % (option, index, value, err))
    return out


class FilterModule(object):
    def filters(self):
        return {"cidr_networks": cidr_networks}
