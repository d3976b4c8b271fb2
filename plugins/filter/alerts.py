# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""alert_run: the automatic run an Alertmanager alert (an Event-Driven Ansible event) asks for, or why none.

The event is the one the ``tradeops.remediation.alertmanager`` source emits. The alert's ``tradeops_playbook``
label names the incident; it must be a plain incident name (letters, digits, ``_``), never a path. The run is
``<command> run <incident> --automatic [--allow-repair]``: the runner's policy chooses the phases (containment
and diagnosis; repair only for the incidents in ``allow_repair``; never resume) and refuses an incident that is
not one. The alert reaches the run as data only: ``incident_trigger`` (alert name, fingerprint, labels,
severity, summary) and ``incident_detected_at`` (when the alert started); no label becomes a variable.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import re

from ansible.errors import AnsibleFilterError

INCIDENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def alert_run(event, command, allow_repair=None):
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        raise AnsibleFilterError("alert_run: command must be a non-empty list of strings (argv), e.g. ['tradeops']")
    alert = (event or {}).get("alert") if isinstance(event, dict) else None
    if not isinstance(alert, dict) or not isinstance(alert.get("labels"), dict):
        return {"incident": None, "argv": [], "refused": "not an alert event from tradeops.remediation.alertmanager"}
    labels = alert["labels"]
    name = labels.get("alertname") or "?"
    if alert.get("status") != "firing":
        return {"incident": None, "argv": [], "refused": "%s is %s: a resolved alert starts nothing" % (
            name, alert.get("status"))}
    incident = labels.get("tradeops_playbook")
    if not incident:
        return {"incident": None, "argv": [], "refused": "%s names no incident playbook (label tradeops_playbook)" % name}
    if not isinstance(incident, str) or not INCIDENT_RE.match(incident):
        return {"incident": None, "argv": [],
                "refused": "%s: tradeops_playbook %r is not an incident name" % (name, incident)}
    trigger = {
        "source": "alertmanager",
        "alert": name,
        "fingerprint": alert.get("fingerprint"),
        "severity": labels.get("severity"),
        "labels": labels,
        "summary": (alert.get("annotations") or {}).get("summary"),
    }
    extra = {"incident_trigger": trigger}
    if alert.get("startsAt"):
        extra["incident_detected_at"] = alert["startsAt"]
    argv = list(command) + ["run", incident, "--automatic"]
    if incident in (allow_repair or []):
        argv.append("--allow-repair")
    argv += ["--progress", "plain", "-e", json.dumps(extra, sort_keys=True)]
    return {"incident": incident, "argv": argv, "refused": None, "repair": incident in (allow_repair or [])}


class FilterModule(object):
    def filters(self):
        return {"alert_run": alert_run}
