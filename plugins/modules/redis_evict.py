#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: redis_evict
short_description: Free a Redis out of memory by evicting only the cache keys you name, never the halt keys
version_added: 0.1.0
description:
  - Seed 004's Redis checks (C(INFO memory), C(INFO clients)) and, in place of its C(redis-cli flushall) ("CAUTION
    Data loss"), the eviction of only the keys the inventory names as cache.
  - Keys are found with C(SCAN ... MATCH), never C(KEYS), and deleted with C(UNLINK) in batches. A database in
    O(databases) is emptied key by key the same way, never with C(FLUSHDB), so that its protected keys stay.
  - A key matching a O(protect) pattern is never deleted, whatever O(patterns) says. The halt keys
    (C(emergency_halt), C(emergency_halt:*)) and the collection's own keys (C(tradeops:*)) are always protected.
  - Afterwards the server must take a write (a probe key set with a 30 s expiry and deleted) and use no more than
    O(max_memory_ratio) of its C(maxmemory); otherwise RV(status) is V(NO-GO).
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.redis
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Counts the keys it would delete (RV(would_delete)) and deletes nothing. Its write check before the eviction
        still runs (a probe key set with a 30 s expiry and deleted at once), as the V(write) option of health_check's redis probe does.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - The second run finds no key to delete, unless the cache was filled again in between.
options:
  patterns:
    description:
      - C(SCAN) patterns of the cache keys to delete in O(db), for example V(cache:*). A pattern that matches every
        key (V(*)) is refused.
    type: list
    elements: str
    default: []
  databases:
    description: Databases whose every key but the protected ones is deleted (a cache database).
    type: list
    elements: int
    default: []
  protect:
    description: More patterns of keys never deleted, added to the halt keys and the collection's own keys.
    type: list
    elements: str
    default: []
  max_keys:
    description: At most this many keys are deleted in one run (RV(truncated) says when more matched).
    type: int
    default: 1000000
  max_memory_ratio:
    description: Used memory above this share of C(maxmemory) afterwards is V(NO-GO). Without C(maxmemory), not
      checked.
    type: float
    default: 0.9
  timeout:
    description: Seconds the whole call may take.
    type: float
    default: 30
notes:
  - It needs the C(redis) Python library.
"""

EXAMPLES = r"""
- name: Redis is out of memory - evict the market-data cache only (the halt keys stay)
  tradeops.remediation.redis_evict:
    host: redis.internal
    password: "{{ vault_redis_password }}"
    patterns: ["cache:*", "quotes:*"]
  register: evicted

- name: Read memory and clients without deleting anything
  tradeops.remediation.redis_evict:
    host: redis.internal
    password: "{{ vault_redis_password }}"
"""

RETURN = r"""
status:
  description: V(GO) when the server takes a write and is within O(max_memory_ratio) afterwards, else V(NO-GO).
  returned: always
  type: str
problems:
  description: What made RV(status) V(NO-GO).
  returned: always
  type: list
  elements: str
before:
  description: Memory and clients before (C(used_memory), C(maxmemory), C(maxmemory_policy), C(ratio),
    C(connected_clients), C(blocked_clients)).
  returned: always
  type: dict
after:
  description: The same, afterwards.
  returned: always
  type: dict
write_ok_before:
  description: Whether the server took a write before the eviction.
  returned: always
  type: bool
write_ok:
  description: Whether it takes one afterwards.
  returned: always
  type: bool
evicted:
  description: Per pattern or database, the keys matched, deleted and protected (kept).
  returned: always
  type: list
  elements: dict
  sample: [{"what": "db 0 keys cache:*", "matched": 790, "deleted": 790, "protected_kept": 0}]
deleted:
  description: Keys deleted.
  returned: always
  type: int
would_delete:
  description: In check mode, the keys that would be deleted.
  returned: always
  type: int
truncated:
  description: Whether more keys matched than O(max_keys).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils import _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._redis_evict import EvictService

ARGUMENT_SPEC = _redis.argspec(
    patterns=dict(type="list", elements="str", default=[]),
    databases=dict(type="list", elements="int", default=[]),
    protect=dict(type="list", elements="str", default=[]),
    max_keys=dict(type="int", default=1000000, no_log=False),
    max_memory_ratio=dict(type="float", default=0.9),
    timeout=dict(type="float", default=30),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = EvictService(module.params, check_mode=module.check_mode).run()
    except ValidationError as err:
        module.fail_json(msg="redis_evict: %s. Nothing was deleted: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="redis_evict: %s" % err)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
