#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_sessions
short_description: Read PostgreSQL's sessions and lock waits; terminate only the long queries and root blockers the runbook allows
version_added: 0.1.0
description:
  - "Seed 003's P1 Database Performance Degradation and seed 004's P1 Database Connectivity Issues, in one call: the
    connections by state against C(max_connections), the active queries older than O(long_query_seconds), and every
    lock wait (C(pg_locks) not granted) grouped under the root blocker it ultimately waits for (C(pg_blocking_pids))."
  - With O(terminate), it ends only what the runbook allows, and only past a threshold. V(long_queries) ends the
    active queries older than O(long_query_seconds) (seed 003's C(pg_terminate_backend), without its
    C(NOT LIKE '%pg_stat_activity%') guesswork). V(root_blockers) ends the session at the root of a chain whose
    longest waiter has waited at least O(lock_wait_seconds), never a session in the middle of a chain.
  - "Never terminated: its own session, the collection's sessions (C(application_name) starting C(tradeops.)), any
    process that is not a client backend (replication walsenders, autovacuum, background workers), and the
    applications and roles in O(protect_applications) and O(protect_users). They are reported in RV(spared)."
  - Before the first C(pg_terminate_backend), the whole snapshot, query text and waiting chains included, is written
    to O(evidence_path) (mode 0600, fsynced). Each terminated session must then be gone within O(verify_timeout),
    and a second read says what remains (RV(after)).
  - Query texts are shortened to 200 characters, with password literals replaced.
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.postgres
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads as usual and reports what it would terminate in RV(would_terminate); terminates nothing and writes no
        evidence file.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - A terminated session is gone, so a second run finds nothing to terminate.
options:
  terminate:
    description:
      - What to terminate. Empty, it only reads.
    type: list
    elements: str
    choices: [long_queries, root_blockers]
    default: []
  long_query_seconds:
    description: An active query older than this is long (seed 003, 5 minutes).
    type: float
    default: 300
  lock_wait_seconds:
    description: A root blocker is terminated only when a session it blocks has waited at least this long.
    type: float
    default: 30
  max_connection_ratio:
    description: More connections than this share of C(max_connections) is a problem (RV(status) V(NO-GO)).
    type: float
    default: 0.9
  protect_applications:
    description: C(application_name) prefixes never terminated (for example a replication tool or a migration).
    type: list
    elements: str
    default: []
  protect_users:
    description: Roles whose sessions are never terminated.
    type: list
    elements: str
    default: []
  evidence_path:
    description:
      - The file the snapshot is written to (mode 0600) before anything is terminated. Required with O(terminate).
        Its directory must exist.
    type: path
  statement_timeout:
    description: Seconds each of its own statements may run.
    type: float
    default: 10
  verify_timeout:
    description: Seconds a terminated session has to disappear from C(pg_stat_activity).
    type: float
    default: 10
  sample_size:
    description: At most this many waiting sessions are listed per chain.
    type: int
    default: 50
notes:
  - It needs C(psycopg2), and a role allowed to read every session's query (a superuser or C(pg_read_all_stats)) and to
    terminate them (a superuser or C(pg_signal_backend)).
"""

EXAMPLES = r"""
- name: Read the sessions and lock waits (seed 004)
  tradeops.remediation.pg_sessions:
    login_host: db.internal
    login_db: trading
    login_user: ops
    login_password: "{{ vault_pg_password }}"
  register: sessions

- name: End the root blocker of any chain waiting 30 s or more, the evidence first
  tradeops.remediation.pg_sessions:
    login_host: db.internal
    login_db: trading
    login_user: ops
    login_password: "{{ vault_pg_password }}"
    terminate: [root_blockers]
    lock_wait_seconds: 30
    protect_applications: [pg_dump, migrate]
    evidence_path: /var/lib/tradeops/evidence/inc-42-pg-sessions.json
"""

RETURN = r"""
status:
  description: V(GO) when, after any termination, no query is past O(long_query_seconds), no chain waits past
    O(lock_wait_seconds) and the connections are within O(max_connection_ratio); else V(NO-GO).
  returned: always
  type: str
  sample: GO
problems:
  description: What made RV(status) V(NO-GO), one line each.
  returned: always
  type: list
  elements: str
connections:
  description: Client connections (ours included), C(max_connections), C(superuser_reserved_connections), their ratio
    and the count by state (seed 003).
  returned: always
  type: dict
  sample: {"total": 12, "max_connections": 100, "reserved": 3, "ratio": 0.12, "by_state": {"active": 2, "idle": 9}}
long_queries:
  description: The active queries older than O(long_query_seconds), longest first, each with why it is protected (or
    null).
  returned: always
  type: list
  elements: dict
blocking:
  description:
    - One entry per root blocker, longest wait first; C(root) is the blocking session (its query, how long its
      transaction is open), C(waiting) the sessions that wait for it (pid, lock mode and relation, how long, query).
  returned: always
  type: list
  elements: dict
would_terminate:
  description: In check mode, what would have been terminated.
  returned: always
  type: list
  elements: dict
terminated:
  description: What was terminated, each with its C(reason), C(terminated) (true or false) and C(error).
  returned: always
  type: list
  elements: dict
spared:
  description: Sessions the options matched but that were not terminated, each with C(spared_because).
  returned: always
  type: list
  elements: dict
still_alive:
  description: Terminated pids still present after O(verify_timeout).
  returned: always
  type: list
  elements: int
evidence_path:
  description: The evidence file written, or null.
  returned: always
  type: str
after:
  description: The second read, after the terminations (the same keys as the first).
  returned: when something was terminated
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._pg_sessions import (
    SessionsService,
    TERMINATE_CHOICES,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._postgres import postgres_connection_spec

ARGUMENT_SPEC = dict(
    terminate=dict(type="list", elements="str", choices=list(TERMINATE_CHOICES), default=[]),
    long_query_seconds=dict(type="float", default=300),
    lock_wait_seconds=dict(type="float", default=30),
    max_connection_ratio=dict(type="float", default=0.9),
    protect_applications=dict(type="list", elements="str", default=[]),
    protect_users=dict(type="list", elements="str", default=[]),
    evidence_path=dict(type="path"),
    statement_timeout=dict(type="float", default=10),
    verify_timeout=dict(type="float", default=10),
    sample_size=dict(type="int", default=50),
)
ARGUMENT_SPEC.update(postgres_connection_spec())


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = SessionsService(module.params, check_mode=module.check_mode).run()
    except ValidationError as err:
        module.fail_json(msg="pg_sessions: %s. Nothing was read or terminated: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="pg_sessions: %s" % err)
    failed = [t for t in result["terminated"] if not t["terminated"] and t["error"] and "already" not in t["error"]]
    problems = ["pid %d: %s" % (t["pid"], t["error"]) for t in failed]
    problems += ["pid %d is still there after verify_timeout" % p for p in result["still_alive"]]
    if problems:
        result["msg"] = "pg_sessions: %s. Terminate them as a superuser (the evidence is in %s)." % (
            "; ".join(problems), result["evidence_path"])
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
