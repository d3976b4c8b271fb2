# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The venue backend's account options. Keep in sync with ACCOUNT_ARGSPEC in plugins/module_utils/_venue.py;
    # tests/unit/plugins/test_doc_fragments.py compares them, and checks the copies that `make docs`
    # writes into the modules (between "# fragment: venue" and "# end fragment").
    DOCUMENTATION = r"""
options:
  name:
    description: The account's name in results and messages (for example the engine that trades on it). Required.
    type: str
  exchange:
    description: The exchange, as ccxt names it (its class). Default V(kraken).
    type: str
  api_key:
    description: The account's API key, with the permission to query and cancel orders. Keep it in Ansible Vault. Required.
    type: str
  secret:
    description: The API key's private key. Keep it in Ansible Vault; it is never returned or logged. Required.
    type: str
  password:
    description: The API key's passphrase, for the exchanges that have one.
    type: str
  url:
    description:
      - The base URL of the exchange's API, instead of ccxt's (every API of the exchange), for example a
        test venue or the lab exchange.
    type: str
  account_id:
    description: The account's id in the positions table (for O(action=positions)).
    type: int
  quote:
    description: The quote currency; a position is a balance in any other asset with a market against it. Default V(USD).
    type: str
"""
