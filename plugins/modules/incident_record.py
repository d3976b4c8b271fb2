#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: incident_record
short_description: Feed the run's incident record (one event per call), on the controller
version_added: 0.1.0
description:
  - Every role of the collection feeds one incident record through this action. The playbook's first task
    opens it (V(open)), then each phase records what it did (a halt, the triage, the evidence, the repairs,
    the health gate, the resume, a failure, the notifications sent), and the report phase closes the run
    (V(close)), which computes the verdict once.
  - The record is JSON, versioned (C(schema_version)), checked by C(schemas/incident-record.schema.json), and
    written atomically after every event to C(<dir>/<id>.json), mode 0600, with the post-mortem draft
    (Markdown, with a Mermaid timeline) in the C(.md) beside it. A run that dies still leaves both.
  - Opening an id whose record is still open (not resolved) continues it (the resume run of an incident feeds
    the incident's record); opening an id whose record is resolved keeps that one as C(<id>-<start>.json) and
    starts a new record.
  - Which record a run feeds is kept in the C(ansible-playbook) process's own temporary directory, so tasks
    need not be told, and no variable can point a run at another record.
  - The record holds no secret; it is built only from the roles' results.
extends_documentation_fragment:
  - tradeops.remediation.attributes
attributes:
  check_mode:
    support: full
    details:
      - In check mode the record is kept in the process's temporary directory only; nothing is written to O(dir).
  diff_mode:
    support: none
  idempotent:
    support: none
    details:
      - Each call appends an event to the record; RV(ignore:changed) is always V(false) (the record is an
        artifact of the run, not a change to the trading system).
  action:
    description: Indicates this has a corresponding action plugin, so some parts of the options can be executed on the controller.
    support: full
    details:
      - Runs on the controller only.
options:
  event:
    description: What happened.
    type: str
    required: true
    choices: [open, start, halt, venue, triage, evidence, repair, gate, resume, action, failure, notification, escalation, close]
  id:
    description:
      - Incident id (letters, digits, C(.), C(_), C(-); at most 128; used as the file name). Required by V(open).
      - With V(close), used to open a record when none is open in the run.
    type: str
  type:
    description: Incident type (the playbook's name, for example V(p0_outage)). Required by V(open).
    type: str
  severity:
    description: Severity in the seeds' scale. Required by V(open).
    type: str
    choices: [P0, P1, P2, P3]
  title:
    description: One-line title of the incident.
    type: str
  dir:
    description: Directory for the record and the post-mortem draft (V(open)). Default C(<playbook_dir>/../reports).
    type: path
  trigger:
    description: What started the run, with at least C(source) (for example V(manual), V(alertmanager)); C(fired_at) gives the MTTD.
    type: dict
  detected_at:
    description: When the problem was detected (ISO 8601), for the MTTD; a trigger's C(fired_at) serves too.
    type: str
  continue_from:
    description:
      - With V(open), the record a previous job handed over, used when no record file of this id exists here.
      - An AWX workflow runs each job in a fresh container; the report role hands the record to the next node
        as the artifact C(tradeops_incident_record) (C(ansible.builtin.set_stats)), and the resume job continues it.
    type: dict
  phase:
    description: The phase the event belongs to (V(contain), V(assess), V(repair), ...). Default the event's name.
    type: str
  state:
    description: With V(halt), the state the halt_trading call set.
    type: str
    choices: [halted, resumed]
  result:
    description: With V(halt), V(triage) and V(gate), the registered result of halt_trading or health_check.
    type: dict
  archives:
    description: With V(evidence), the archives (C(host), C(path), C(sha256)).
    type: list
    elements: dict
    default: []
  failures:
    description: With V(evidence), the hosts without an archive.
    type: list
    elements: dict
    default: []
  repairs:
    description: With V(repair), C({target, action, outcome, detail}) per repaired component.
    type: list
    elements: dict
    default: []
  name:
    description: With V(action), what was done; with V(escalation), the level's name.
    type: str
  outcome:
    description: With V(action) and V(resume), its outcome (V(resumed), V(skipped_not_approved), V(done), ...).
    type: str
  detail:
    description: With V(action), one line of detail.
    type: str
  reason:
    description: With V(failure), why the run stopped.
    type: str
  kind:
    description: With V(notification), the kind of notice sent.
    type: str
  results:
    description: With V(notification), the notify module's per-channel results.
    type: list
    elements: dict
    default: []
  level:
    description: With V(escalation), the level reached.
    type: int
  channels:
    description: With V(escalation), the names of the channels of that level.
    type: list
    elements: str
    default: []
author:
  - tradeops SRE team (@tradeops)
"""

EXAMPLES = r"""
- name: Open the incident record (or continue this incident's open one)
  tradeops.remediation.incident_record:
    event: open
    id: "{{ p0_outage_incident_id | default('p0-outage') }}"
    type: p0_outage
    severity: P0
  run_once: true

- name: Record a step of a runbook
  tradeops.remediation.incident_record:
    event: action
    phase: repair
    name: database read-only
    outcome: done
  run_once: true

- name: Close the run and compute its verdict
  tradeops.remediation.incident_record:
    event: close
  run_once: true
  register: closed
"""

RETURN = r"""
incident_id:
  description: The incident's id.
  returned: when a record is open
  type: str
record_path:
  description: The record's path on the controller.
  returned: when a record is open
  type: str
verdict:
  description: The verdict of the run (V(close) only).
  returned: with event=close
  type: dict
  contains:
    outcome:
      description: V(resolved), V(halted_not_recovered), V(remediation_failed), V(canceled), V(bad_input) or V(checked).
      type: str
    exit_code:
      description: The exit code C(tradeops run) gives this outcome.
      type: int
    text:
      description: The verdict in words, as every report and notification shows it.
      type: str
    closed:
      description: Whether the incident is resolved (its record closed).
      type: bool
summary:
  description: Engines halted, resumed and not halted, repairs, what is still NO-GO (V(close) only).
  returned: with event=close
  type: dict
postmortem_path:
  description: The post-mortem draft's path (V(close) only).
  returned: with event=close
  type: str
recorded:
  description: V(false) when no record is open in the run (nothing was recorded).
  returned: when no record is open
  type: bool
"""
