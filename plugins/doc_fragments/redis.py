# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The Redis backend's connection options. Keep in sync with ARGSPEC in plugins/module_utils/_redis.py;
    # tests/unit/plugins/test_doc_fragments.py compares them, and checks the copies that `make docs`
    # writes into the modules (between "# fragment: redis" and "# end fragment").
    DOCUMENTATION = r"""
options:
  host:
    description: The Redis server's host name or address. Default V(127.0.0.1).
    type: str
  port:
    description: The Redis server's port. Default V(6379).
    type: int
  db:
    description: The Redis database number. Default V(0).
    type: int
  username:
    description: The Redis ACL user name.
    type: str
  password:
    description: The Redis password. Keep it in Ansible Vault; it is never returned or logged.
    type: str
  tls:
    description: Connect with TLS. Default V(false).
    type: bool
"""
