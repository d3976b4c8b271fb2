#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: stream_backlog
short_description: Drain a Redis stream backlog - claim from stuck consumers, requeue dead letters a bounded number of times
version_added: 0.1.0
description:
  - Seed 004's "Stream Processing Issues" (high pending counts, DLQ accumulation, processing delays) on Redis streams
    with consumer groups. One call reads every stream of O(streams) and, when asked, repairs it.
  - Reads each stream's length, its group's pending count and lag, each consumer's pending entries and idle time,
    and its dead-letter stream. A consumer is stuck when it holds a pending entry delivered O(claim_idle_seconds)
    ago or more (it read the message and never acknowledged it).
  - With O(claim), the stuck consumers' pending entries are claimed (C(XCLAIM)) for the live consumers, round robin;
    the consumers must read their own pending list (as Redis's documentation recommends) to process them. A
    consumer in O(forget) is deleted from the group only once it holds nothing.
  - With O(requeue), each dead-lettered entry goes back to its original stream (its C(original_stream) field, else
    the stream) at most O(max_requeues) times; one that comes back again is parked on the parking stream with the
    reason, not looped. Each move adds to the destination and deletes from the dead-letter stream in one
    C(MULTI). The count is the larger of the entry's C(requeues) field and the collection's ledger in Redis
    (C(tradeops:streams:requeues:<dlq>), keyed by a digest of the message's own fields).
  - With O(drain_timeout), the requeue passes repeat until every stream is drained (no stuck consumer, no pending
    entry older than 2 s, lag within O(max_lag), the dead-letter stream empty) or the time is up.
  - The dead-letter entries, whole, and the streams as read are written to O(evidence_path) (mode 0600) before
    anything moves.
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.redis
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads everything and reports what it would claim, requeue, park or forget (entries with C(would)); moves
        nothing.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details:
      - A second run finds nothing to claim or requeue unless new messages failed or a consumer stuck in between.
options:
  streams:
    description: The streams to read and repair.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The stream, for example V(notify.events).
        type: str
        required: true
      group:
        description: Its consumer group, for example V(notify).
        type: str
        required: true
      dlq:
        description: Its dead-letter stream, for example V(notify.events.dlq).
        type: str
      parked:
        description: Where a message dead-lettered again after O(max_requeues) requeues goes. Default C(<dlq>.parked).
        type: str
  claim:
    description: Claim the stuck consumers' pending entries for the live consumers.
    type: bool
    default: false
  claim_idle_seconds:
    description: A pending entry delivered this long ago or more makes its consumer stuck, and is claimable.
    type: float
    default: 30
  forget:
    description: Consumers to delete from their group once they hold nothing (the ones their runtime replaced).
    type: list
    elements: str
    default: []
  requeue:
    description: Requeue the dead-lettered entries, at most O(max_requeues) times each; park the rest.
    type: bool
    default: false
  max_requeues:
    description: How many times one message is requeued before it is parked.
    type: int
    default: 1
  drain_timeout:
    description: Seconds to keep requeueing and watching until every stream is drained; V(0) looks once.
    type: float
    default: 0
  max_pending:
    description: More pending entries than this in a group is V(NO-GO).
    type: int
    default: 1000
  max_lag:
    description: A group lag (entries not yet delivered) above this is V(NO-GO).
    type: int
    default: 1000
  evidence_path:
    description: File the dead-letter entries and the streams are written to before anything moves.
    type: path
  timeout:
    description: Seconds the whole call may take; must be longer than O(drain_timeout).
    type: float
    default: 60
notes:
  - It needs the C(redis) Python library and Redis 7 or later (the group lag).
"""

EXAMPLES = r"""
- name: Report pending and dead-letter counts (seed 004 "Check stream status")
  tradeops.remediation.stream_backlog:
    host: redis.internal
    password: "{{ vault_redis_password }}"
    streams:
      - {name: notify.events, group: notify, dlq: notify.events.dlq}
      - {name: orchestrator.commands, group: orchestrator}

- name: Claim from the replaced consumer, requeue the DLQ once, park what fails again, wait until drained
  tradeops.remediation.stream_backlog:
    host: redis.internal
    password: "{{ vault_redis_password }}"
    streams:
      - {name: notify.events, group: notify, dlq: notify.events.dlq}
    claim: true
    forget: [notify-1]
    requeue: true
    max_requeues: 1
    drain_timeout: 60
    timeout: 90
    evidence_path: /var/lib/tradeops/evidence/stream-backlog-dlq.json
"""

RETURN = r"""
status:
  description: V(GO) when every stream exists with its group, no consumer is stuck, one is live, pending and lag are
    within bounds and the dead-letter stream is empty; else V(NO-GO).
  returned: always
  type: str
problems:
  description: What made RV(status) V(NO-GO).
  returned: always
  type: list
  elements: str
streams:
  description: Each stream as read at the end (C(length), C(pending), C(lag), C(consumers), C(stuck), C(live),
    C(old_pending), C(dlq) with C(count) and the first entries, C(parked)).
  returned: always
  type: list
  elements: dict
before:
  description: The same, as read first.
  returned: always
  type: list
  elements: dict
claimed:
  description: Per stuck consumer, how many entries went to which live consumer.
  returned: always
  type: list
  elements: dict
  sample: [{"stream": "notify.events", "from": "notify-1", "to": "notify-3", "count": 42}]
requeued:
  description: The dead-letter entries put back on their stream, with their new ids and requeue counts.
  returned: always
  type: list
  elements: dict
parked:
  description: The dead-letter entries moved to the parking stream, with their error and requeue counts.
  returned: always
  type: list
  elements: dict
forgotten:
  description: The consumers deleted from their group.
  returned: always
  type: list
  elements: dict
kept_consumers:
  description: Consumers in O(forget) not deleted because they still hold messages.
  returned: always
  type: list
  elements: dict
drained:
  description: Whether every stream was drained at the end (V(null) in check mode).
  returned: always
  type: bool
evidence_path:
  description: The evidence file written, if any.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils import _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._streams import StreamBacklogService

ARGUMENT_SPEC = _redis.argspec(
    streams=dict(type="list", elements="dict", required=True, options=dict(
        name=dict(type="str", required=True),
        group=dict(type="str", required=True),
        dlq=dict(type="str"),
        parked=dict(type="str"),
    )),
    claim=dict(type="bool", default=False),
    claim_idle_seconds=dict(type="float", default=30),
    forget=dict(type="list", elements="str", default=[]),
    requeue=dict(type="bool", default=False),
    max_requeues=dict(type="int", default=1),
    drain_timeout=dict(type="float", default=0),
    max_pending=dict(type="int", default=1000),
    max_lag=dict(type="int", default=1000),
    evidence_path=dict(type="path"),
    timeout=dict(type="float", default=60),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = StreamBacklogService(module.params, check_mode=module.check_mode).run()
    except ValidationError as err:
        module.fail_json(msg="stream_backlog: %s. Nothing was moved: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="stream_backlog: %s" % err)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
