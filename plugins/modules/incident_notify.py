#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: incident_notify
short_description: Tell the people who must know about the run's incident, from its record
version_added: 0.1.0
description:
  - Renders a notice from the incident record in the seeds' templates (initial alert, status update,
    escalation, resolution notice; impact, actions taken, next steps, duration), sends it to every channel
    with M(tradeops.remediation.notify), and records in the incident record what was sent.
  - V(final) sends the resolution notice when the incident is resolved (its record closed), else a status
    update (for example trading halted, awaiting the approval to resume).
  - After a notice of an open incident it starts, unless one runs, a background watcher that sends status
    updates every O(status_every) seconds and escalates to the next level of O(escalation_matrix) after each
    O(escalate_after) seconds without progress, for as long as the incident stays open (the approval wait
    included), at most O(watch_max_seconds). The resolution notice stops it first, so it is the last message.
  - A channel that fails, or channel options that are wrong, never fail the task; they are reported in
    RV(not_sent) and as warnings, and recorded.
  - The channels' secrets reach the watcher on its stdin only; they are written nowhere.
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode sends nothing and starts no watcher.
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Each call sends a notice.
  action:
    description: Indicates this has a corresponding action plugin, so some parts of the options can be executed on the controller.
    support: full
    details:
      - Runs on the controller; the notify module runs where the task is delegated (localhost).
options:
  event:
    description: The notice to send.
    type: str
    required: true
    choices: [initial, status, escalation, acknowledge, resolution, final]
  channels:
    description: The channels, as M(tradeops.remediation.notify) takes them (email, slack, pagerduty, webhook).
    type: list
    elements: dict
    default: []
  escalation_matrix:
    description:
      - Per severity (V(P0) to V(P3)), the levels to escalate to, in order, each C({name, channels}) with
        C(channels) as in O(channels). Seed 002's matrix is, for a SEV-1, the lead engineer after 15 min and
        the CTO/risk officer after 30 min.
    type: dict
    default: {}
  status_every:
    description:
      - Seconds between status updates while the incident is open. V(0) sends none.
      - Default by severity, from the seeds - P0 900 (seed 000), P1 1800 (seed 002), P2 and P3 none.
    type: float
  escalate_after:
    description:
      - Seconds without progress before escalating one level. V(0) never escalates.
      - Default by severity, from seed 003 - P0 900, P1 1800, P2 and P3 never.
    type: float
  watch:
    description: Start the background watcher for status updates and escalation.
    type: bool
    default: true
  watch_max_seconds:
    description: The watcher stops after this long even if the incident is still open.
    type: float
    default: 86400.0
  report_link:
    description: A link to the report shown in the notices.
    type: str
    default: ""
  concurrency:
    description: Channels sent to at once.
    type: int
    default: 8
author:
  - tradeops SRE team (@tradeops)
"""

EXAMPLES = r"""
- name: Initial alert right after the halt is verified
  tradeops.remediation.incident_notify:
    event: initial
    channels: "{{ notify_channels }}"
    escalation_matrix: "{{ notify_escalation_matrix }}"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
kind:
  description: The notice sent (V(final) resolved to V(resolution) or V(status)).
  returned: when a record is open
  type: str
notifications:
  description: Per channel, the notify module's result (status, attempts, error), without secrets.
  returned: when a record is open
  type: list
  elements: dict
sent:
  description: Channels the notice reached.
  returned: when a record is open
  type: list
  elements: str
not_sent:
  description: Channels that failed after their retries.
  returned: when a record is open
  type: list
  elements: str
escalated_to:
  description: The escalation level this call escalated to.
  returned: when it escalated
  type: int
watcher_pid:
  description: The pid of the background status watcher.
  returned: when one runs
  type: int
"""
