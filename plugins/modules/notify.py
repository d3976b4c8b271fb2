#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: notify
short_description: Send one incident notice to many channels at once (email, Slack, PagerDuty, signed webhook)
version_added: 0.1.0
description:
  - Sends O(notice) to every channel of O(channels) B(concurrently), each within its own O(channels[].timeout),
    retrying what may pass next time (a refused or dropped connection, a timeout, HTTP 429 and 5xx with their
    C(Retry-After), SMTP 4xx replies) up to O(channels[].retries) times.
  - A channel that fails never fails the task; it is listed in RV(not_sent), with a warning. Only invalid options
    fail the task, naming the option, for example C(channels[2] (oncall-pd) routing_key is required).
  - Email goes over SMTP (STARTTLS by default; a server without STARTTLS is refused rather than sent to in clear).
    Slack gets an incoming-webhook payload (C(text) and Block Kit blocks). PagerDuty gets Events API v2 events
    (V(initial), V(status) and V(escalation) trigger, V(acknowledge) acknowledges, V(resolution) resolves), all
    under the notice's C(dedup_key), so one incident is one PagerDuty alert. The webhook gets the message as JSON,
    signed with HMAC-SHA256 over C(<timestamp>.<body>) (headers C(X-Tradeops-Timestamp), C(X-Tradeops-Signature)).
  - The incident playbooks do not call it directly; the C(notify) role renders the notices from the incident record
    (M(tradeops.remediation.incident_notify)). It is a module of its own so that any playbook can tell people.
  - Not C(community.general.mail), C(slack) or C(pagerduty_alert) - the same sender runs in the status watcher, a
    plain Python process that cannot call a module, and the Slack and PagerDuty modules post to fixed public
    endpoints that no test or egress proxy can be put in front of.
author:
  - tradeops SRE team (@tradeops)
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - Check mode sends nothing and reports each channel as V(would_send) (or V(skipped)).
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Every call sends the notice again.
options:
  notice:
    description: The notice (not C(message), a name Ansible reserves).
    type: dict
    required: true
    suboptions:
      kind:
        description: Which notice.
        type: str
        required: true
        choices: [initial, status, escalation, acknowledge, resolution]
      incident_id:
        description: The incident's id.
        type: str
        required: true
      dedup_key:
        description: One key per incident (PagerDuty's C(dedup_key); at most 255 characters).
        type: str
        required: true
      severity:
        description: The seeds' severity; PagerDuty gets V(critical), V(error), V(warning) and V(info) for P0 to P3.
        type: str
        required: true
        choices: [P0, P1, P2, P3]
      title:
        description: One line.
        type: str
        required: true
      text:
        description: The notice's text.
        type: str
        required: true
      fields:
        description: Named values (impact, actions, next steps, duration, ...) shown as fields where a channel can.
        type: dict
      escalation_level:
        description: The escalation level, for an V(escalation) notice.
        type: int
      links:
        description: Links (C(href), C(text)) for PagerDuty.
        type: list
        elements: dict
  channels:
    description: Where to send it.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The channel's name, unique; results are reported by it.
        type: str
        required: true
      type:
        description: The kind of channel.
        type: str
        required: true
        choices: [email, slack, pagerduty, webhook]
      kinds:
        description: The notices this channel gets. Default all of them.
        type: list
        elements: str
        choices: [initial, status, escalation, acknowledge, resolution]
      timeout:
        description: Seconds for this channel, retries included. Default V(10).
        type: float
      retries:
        description: Retries after a failure that may pass next time. Default V(3).
        type: int
      host:
        description: (email) The SMTP server. Default V(localhost).
        type: str
      port:
        description: (email) Its port. Default V(25), V(465) with O(channels[].secure=always).
        type: int
      secure:
        description:
          - (email) V(starttls) (the default) upgrades the connection and refuses a server that cannot;
            V(always) is SMTP over TLS; V(never) sends in clear.
        type: str
        choices: [never, starttls, always]
      username:
        description: (email) The SMTP user.
        type: str
      password:
        description: (email) The SMTP password.
        type: str
      sender:
        description: (email) The From address. Required for email.
        type: str
      to:
        description: (email) The recipients. Required for email.
        type: list
        elements: str
      cc:
        description: (email) Copy recipients.
        type: list
        elements: str
      subject_prefix:
        description: (email) Before the severity and title in the subject. Default V([tradeops]).
        type: str
      url:
        description:
          - (slack, webhook) The webhook URL; for Slack it is the secret. Required for slack and webhook.
          - (pagerduty) The Events API v2 endpoint. Default V(https://events.pagerduty.com/v2/enqueue).
        type: str
      secret:
        description: (webhook) The HMAC-SHA256 signing secret.
        type: str
      headers:
        description: (webhook) Extra HTTP headers.
        type: dict
      routing_key:
        description: (pagerduty) The 32-character integration key of an Events API v2 service. Required for pagerduty.
        type: str
      source:
        description: (pagerduty) The event's C(payload.source). Default V(tradeops).
        type: str
      component:
        description: (pagerduty) The event's C(payload.component).
        type: str
      group:
        description: (pagerduty) The event's C(payload.group).
        type: str
      # fragment: http_options.transport prefix="(HTTP channels)"
      validate_certs:
        description: (HTTP channels) Validate the server's TLS certificate and host name. Default V(true).
        type: bool
      ca_path:
        description: (HTTP channels) A CA bundle (PEM) to validate the server's TLS certificate with, instead of the system's.
        type: path
      client_cert:
        description:
          - (HTTP channels) A client certificate (PEM) to present to the server (mutual TLS). It may hold the private key too.
        type: path
      client_key:
        description:
          - (HTTP channels) The private key (PEM, unencrypted) of the client certificate, when it is not in the certificate file.
        type: path
      proxy:
        description:
          - (HTTP channels) An HTTP proxy to send the requests through, for example C(http://proxy.internal:3128). HTTPS goes through it with C(CONNECT).
          - Without it, the proxy environment variables of the module's host apply (C(https_proxy), C(no_proxy)).
        type: str
      # end fragment
  concurrency:
    description: Channels sent to at once.
    type: int
    default: 8
"""

EXAMPLES = r"""
- name: Tell the on-call engineers
  tradeops.remediation.notify:
    notice:
      kind: initial
      incident_id: INC-1234
      dedup_key: tradeops-INC-1234
      severity: P0
      title: "INCIDENT ALERT - P0: every engine halted"
      text: "PRIORITY: CRITICAL (P0)\nIMPACT: 20 engine(s) halted and verified"
    channels:
      - name: oncall-mail
        type: email
        host: smtp.internal
        port: 587
        username: tradeops
        password: "{{ vault_smtp_password }}"
        sender: tradeops@firm.internal
        to: [trading-oncall@firm.internal]
      - name: pagerduty
        type: pagerduty
        routing_key: "{{ vault_pagerduty_routing_key }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
notifications:
  description: One result per channel, in O(channels) order. No secret appears in it.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The channel.
      type: str
    type:
      description: Its type.
      type: str
    kind:
      description: The notice.
      type: str
    status:
      description: V(sent), V(failed), V(skipped) (not subscribed to this kind) or V(would_send) (check mode).
      type: str
    attempts:
      description: Attempts made.
      type: int
    elapsed_ms:
      description: Time spent on this channel.
      type: int
    response:
      description: The HTTP status or SMTP code of the success.
      type: str
    error:
      description: Why it failed.
      type: str
    sent_at:
      description: When it was sent (UTC, ISO 8601).
      type: str
sent:
  description: Channels the notice reached.
  returned: always
  type: list
  elements: str
not_sent:
  description: Channels that failed after their retries (not C(failed), which would fail the task).
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils import _notify
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError, ValidationError

ARGUMENT_SPEC = dict(
    notice=dict(type="dict", required=True, options=_notify.MESSAGE_ARGSPEC),
    channels=dict(type="list", elements="dict", required=True, options=_notify.CHANNEL_ARGSPEC),
    concurrency=dict(type="int", default=8),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    p = module.params
    try:
        result = _notify.send(p["notice"], p["channels"], concurrency=p["concurrency"], check_mode=module.check_mode)
    except ValidationError as err:
        module.fail_json(msg="notify: %s. Nothing was sent: fix the options and re-run." % err)
    except TradeopsError as err:
        module.fail_json(msg="notify: %s" % err)
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
