# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The HTTP backend's option groups, one attribute each (tradeops.remediation.http_options.transport,
    # tradeops.remediation.http_options.auth). Keep in sync with TRANSPORT_ARGSPEC and AUTH_ARGSPEC in
    # plugins/module_utils/_http.py; tests/unit/plugins/test_doc_fragments.py compares them.
    # The modules take these options inside lists (targets, probes, test), where Ansible merges no
    # fragment: `make docs` writes them into each module's DOCUMENTATION between its
    # "# fragment: ..." and "# end fragment" lines, and the same test fails when one is stale.
    TRANSPORT = r"""
options:
  validate_certs:
    description: Validate the server's TLS certificate and host name. Default V(true).
    type: bool
  ca_path:
    description: A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
    type: path
  client_cert:
    description:
      - A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
    type: path
  client_key:
    description:
      - The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
    type: path
  proxy:
    description:
      - An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes
        through it with C(CONNECT).
      - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
    type: str
"""

    AUTH = r"""
options:
  headers:
    description: Extra request headers. Put a secret in the token option, not here.
    type: dict
  token:
    description: A token sent in the header named by the token_header option, for example an admin token.
    type: str
  token_header:
    description: The header that carries the token. Default V(X-Admin-Token).
    type: str
"""
