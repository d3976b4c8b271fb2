# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # PostgreSQL connection options (modelled on community.postgresql's postgres fragment).
    # Keep in sync with postgres_connection_spec() in plugins/module_utils/_postgres.py;
    # tests/unit/plugins/module_utils/test_probes.py compares the two.
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host of the PostgreSQL server.
      - Without it, libpq's default applies (the local Unix socket, or E(PGHOST)).
    type: str
  login_port:
    description: Port of the PostgreSQL server.
    type: int
    default: 5432
  login_db:
    description:
      - Database to connect to.
      - Without it, libpq's default applies (a database named after O(login_user)).
    type: str
  login_user:
    description:
      - Role to connect as.
      - Without it, libpq's default applies (the operating system user, or E(PGUSER)).
    type: str
  login_password:
    description:
      - Password of O(login_user). Keep it in Ansible Vault; it is never returned or logged.
      - Without it, libpq's defaults apply (E(PGPASSWORD), C(~/.pgpass), peer or certificate authentication).
    type: str
  sslmode:
    description:
      - libpq's C(sslmode). V(verify-full) checks the server certificate and its host name.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  connect_timeout:
    description:
      - Seconds to wait for the connection. libpq counts whole seconds and treats values below 2 as 2.
      - It is further bounded by the module's own deadline, where it has one.
    type: int
    default: 5
requirements:
  - psycopg2 (C(psycopg2) or C(psycopg2-binary)) on the host that runs the module.
notes:
  - The connection sets C(application_name=tradeops.remediation), so it can be told apart in C(pg_stat_activity).
"""
