#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: engine_config
short_description: Set a setting of every engine's config API at once, each read back
version_added: 0.1.0
description:
  - Seed 003's exchange failover (the engines trade on the backup venue), seed 000's rate-limit answers (back-off
    and cached market data) and seed 000's "reduce update frequency" are each a setting of the engine's
    configuration API. This module reads every target's configuration (C(GET)), sends a C(POST) of O(set) to those
    whose values differ, and reads each again; a value the engine does not keep fails that engine.
  - The fleet is one call, the engines concurrently (at most O(concurrency) at once, each bounded by its timeout),
    not a task per engine.
  - Without O(set) it only reads (C(before) in RV(engines)).
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads every engine and reports what it would set (C(would_set) in RV(engines)); sends nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
    details:
      - An engine that already has the values is only read.
options:
  targets:
    description:
      - The engines' config APIs. The lab inventory gives each engine one as C(tradeops_engine_config); the filter
        C(tradeops.remediation.killswitch_targets) turns the engines' host variable into this list.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The engine.
        type: str
        required: true
      url:
        description: Its config API, for example C(http://engine-001:8080/admin/config).
        type: str
        required: true
      token:
        description: The admin token, sent in O(targets[].token_header).
        type: str
      token_header:
        description: The header the token goes in.
        type: str
        default: X-Admin-Token
      headers:
        description: More headers.
        type: dict
      timeout:
        description: Seconds this engine may take; default O(timeout).
        type: float
      validate_certs:
        description: Verify the engine's TLS certificate.
        type: bool
        default: true
      ca_path:
        description: CA bundle to verify it with.
        type: path
      client_cert:
        description: Client certificate (mutual TLS).
        type: path
      client_key:
        description: Its key.
        type: path
      proxy:
        description: HTTP proxy URL.
        type: str
  set:
    description: 'The settings to set, for example C({"venue": "backup"}) or C({"backoff": true}). Empty reads only.'
    type: dict
    default: {}
  concurrency:
    description: Engines called at once.
    type: int
    default: 20
  timeout:
    description: Seconds each engine may take, its read, write and read-back together.
    type: float
    default: 10
"""

EXAMPLES = r"""
- name: Fail over every engine to the backup venue (seed 003), read back
  tradeops.remediation.engine_config:
    targets: "{{ groups['trading_engines'] | tradeops.remediation.killswitch_targets(hostvars, 'tradeops_engine_config') }}"
    set:
      venue: backup
  run_once: true
  delegate_to: localhost
  no_log: true
  register: failover
"""

RETURN = r"""
status:
  description: V(GO) when every engine holds O(set) afterwards (or, reading only, answered), else V(NO-GO).
  returned: always
  type: str
engines:
  description: Per engine, C(before) and C(after) (its configuration), C(changed), C(ok), C(error), and in check
    mode C(would_set).
  returned: always
  type: list
  elements: dict
failed:
  description: The engines that failed.
  returned: always
  type: list
  elements: str
problems:
  description: One line per failed engine.
  returned: always
  type: list
  elements: str
set:
  description: The settings asked for.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils._engine_config import EngineConfigService
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError

ARGUMENT_SPEC = dict(
    targets=dict(type="list", elements="dict", required=True, options=dict(
        name=dict(type="str", required=True),
        url=dict(type="str", required=True),
        token=dict(type="str", no_log=True),
        token_header=dict(type="str", default="X-Admin-Token", no_log=False),
        headers=dict(type="dict"),
        timeout=dict(type="float"),
        validate_certs=dict(type="bool", default=True),
        ca_path=dict(type="path"),
        client_cert=dict(type="path"),
        client_key=dict(type="path", no_log=False),
        proxy=dict(type="str"),
    )),
    set=dict(type="dict", default={}),
    concurrency=dict(type="int", default=20),
    timeout=dict(type="float", default=10),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = EngineConfigService(module.params, check_mode=module.check_mode).run()
    except ValidationError as err:
        module.fail_json(msg="engine_config: %s. Nothing was sent: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="engine_config: %s" % err)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
