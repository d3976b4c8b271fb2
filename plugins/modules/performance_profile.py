#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: performance_profile
short_description: Profile a fleet's process CPU and memory, and Redis latency, over a window, in one call
version_added: 0.1.0
description:
  - Seed 000 P2's C(performance_profile.py --duration) and seed 004 P2's diagnostics, for every engine at once and
    read-only. Every O(interval) seconds for O(window) seconds it reads each engine's own Prometheus page (its
    O(cpu_metric) and O(memory_metric), the standard process metrics of the Prometheus client libraries), and
    with O(redis) it times a Redis C(PING) in each round (seed 004's C(redis-cli --latency)).
  - "An engine is V(cpu_high) when its CPU over the window (the counter's increase over the elapsed time) is above
    O(max_cpu_percent); V(memory_leak) when its resident memory grows faster than
    O(max_memory_growth_bytes_per_second) (the least-squares slope over every sample) and rose in most intervals;
    V(memory_high) above O(max_memory_bytes)."
  - An engine that answers fewer than two rounds is V(UNKNOWN), never V(GO).
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - It only reads, so it runs the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  targets:
    description: The engines to profile, one Prometheus page each.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The engine's name in the results.
        type: str
        required: true
      url:
        description: The engine's Prometheus page, for example C(http://engine:8001/metrics).
        type: str
        required: true
      labels:
        description: Only the series with these labels (for example C(engine=engine-001)). Several matching series
          are summed.
        type: dict
      timeout:
        description: Seconds one read of the page may take.
        type: float
        default: 3.0
      # fragment: http_options.auth
      headers:
        description: Extra request headers. Put a secret in the token option, not here.
        type: dict
      token:
        description: A token sent in the header named by the token_header option, for example an admin token.
        type: str
      token_header:
        description: The header that carries the token. Default V(X-Admin-Token).
        type: str
      # end fragment
      # fragment: http_options.transport
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
          - An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
          - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
        type: str
      # end fragment
  window:
    description: Seconds to sample over.
    type: float
    default: 10
  interval:
    description: Seconds between two rounds of samples.
    type: float
    default: 1
  cpu_metric:
    description: The counter of CPU seconds the process used.
    type: str
    default: process_cpu_seconds_total
  memory_metric:
    description: The gauge of the process's resident memory in bytes.
    type: str
    default: process_resident_memory_bytes
  max_cpu_percent:
    description: CPU above this percentage of a core over the window is V(cpu_high) (seed 004, seed 002 80 %).
    type: float
    default: 80
  max_memory_bytes:
    description: Resident memory above this is V(memory_high). Unset, not checked.
    type: int
  max_memory_growth_bytes_per_second:
    description: Memory growing faster than this over the window, in most intervals, is V(memory_leak).
    type: float
    default: 1048576
  redis:
    description: The Redis server whose latency to sample (a C(PING) per round). Unset, not sampled.
    type: dict
    suboptions:
      host:
        description: Host name or address. Default V(127.0.0.1).
        type: str
      port:
        description: Port. Default V(6379).
        type: int
      # fragment: redis skip=host,port
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
      # end fragment
  concurrency:
    description: Pages read at once in one round.
    type: int
    default: 32
"""

EXAMPLES = r"""
- name: Profile every engine for 10 s, and Redis latency
  tradeops.remediation.performance_profile:
    targets: >-
      {{ ansible_play_hosts_all | map('extract', hostvars, 'tradeops_metrics') | list }}
    window: 10
    redis: "{{ tradeops_lab_redis }}"
  delegate_to: localhost
  run_once: true
  register: profile

- name: Restart the engines whose memory grows without bound
  ansible.builtin.debug:
    msg: "{{ profile.findings.memory_leak }}"
"""

RETURN = r"""
status:
  description: V(NO-GO) when an engine has a finding, else V(UNKNOWN) when one could not be read twice, else V(GO).
  returned: always
  type: str
  sample: NO-GO
findings:
  description: The engines with each finding.
  returned: always
  type: dict
  sample: {"cpu_high": ["engine-004"], "memory_leak": ["engine-007"], "memory_high": []}
unknown:
  description: The engines read fewer than two times.
  returned: always
  type: list
  elements: str
engines:
  description: One row per engine, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The engine.
      type: str
    status:
      description: V(GO), V(NO-GO) or V(UNKNOWN).
      type: str
    cpu_percent:
      description: CPU over the window, in percent of one core.
      type: float
    memory_bytes:
      description: Resident memory at the last sample.
      type: int
    memory_bytes_first:
      description: Resident memory at the first sample.
      type: int
    memory_growth_bytes_per_second:
      description: The growth of the resident memory over the window (least-squares slope).
      type: int
    samples:
      description: Rounds in which the page was read.
      type: int
    errors:
      description: The last read errors, if any.
      type: list
      elements: str
    findings:
      description: V(cpu_high), V(memory_leak), V(memory_high).
      type: list
      elements: str
redis_latency_ms:
  description: With O(redis), the PING round trips in milliseconds.
  returned: when O(redis) is set
  type: dict
  sample: {"server": "127.0.0.1:6379/0", "samples": 11, "min": 0.21, "avg": 0.35, "max": 0.9, "errors": []}
window:
  description: Seconds actually sampled.
  returned: always
  type: float
thresholds:
  description: The thresholds applied.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils import _redis
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._profile import (
    CPU_METRIC,
    MEMORY_METRIC,
    TARGET_ARGSPEC,
    ProfileService,
)

ARGUMENT_SPEC = dict(
    targets=dict(type="list", elements="dict", required=True, options=TARGET_ARGSPEC),
    window=dict(type="float", default=10),
    interval=dict(type="float", default=1),
    cpu_metric=dict(type="str", default=CPU_METRIC),
    memory_metric=dict(type="str", default=MEMORY_METRIC),
    max_cpu_percent=dict(type="float", default=80),
    max_memory_bytes=dict(type="int"),
    max_memory_growth_bytes_per_second=dict(type="float", default=1048576),
    redis=dict(type="dict", options=_redis.argspec()),
    concurrency=dict(type="int", default=32),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    try:
        service = ProfileService(
            p["targets"], window=p["window"], interval=p["interval"], cpu_metric=p["cpu_metric"],
            memory_metric=p["memory_metric"], max_cpu_percent=p["max_cpu_percent"],
            max_memory_bytes=p["max_memory_bytes"],
            max_memory_growth_bytes_per_second=p["max_memory_growth_bytes_per_second"],
            redis=p["redis"], concurrency=p["concurrency"],
        )
        result = service.run()
    except ValidationError as err:
        module.fail_json(msg="performance_profile: %s. Nothing was sampled: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="performance_profile: %s" % err)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
