# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tells the people who must know, from the incident record: renders the notice with
``plugin_utils/incident.message``, sends it with the ``tradeops.remediation.notify`` module, records what
was sent in the record, escalates on no progress, and starts or stops the background status watcher.

A channel that fails, or a notification configuration that is wrong, never fails the remediation: the
task reports it (a warning, and ``not_sent`` names) and the record keeps it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident, incident_run, incident_watch

KINDS = ["initial", "status", "escalation", "acknowledge", "resolution", "final"]
ARGSPEC = {
    "event": {"type": "str", "required": True, "choices": KINDS},
    "channels": {"type": "list", "elements": "dict", "default": []},
    "escalation_matrix": {"type": "dict", "default": {}},
    "status_every": {"type": "float"},
    "escalate_after": {"type": "float"},
    "watch": {"type": "bool", "default": True},
    "watch_max_seconds": {"type": "float", "default": 86400.0},
    "report_link": {"type": "str", "default": ""},
    "concurrency": {"type": "int", "default": 8},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        # ActionBase's own validation: it raises AnsibleActionFail naming the bad option
        args = self.validate_argument_spec(argument_spec=ARGSPEC)[1]
        path = incident_run.current_path()
        if path is None:
            result.update(changed=False, skipped=True, msg="no incident record is open in this run: nothing to tell")
            return result
        if self._play_context.check_mode:
            result.update(changed=False, skipped=True, msg="check mode: no notification is sent")
            return result
        try:
            result.update(self._notify(args, path, task_vars))
        except incident.RecordError as exc:
            raise AnsibleActionFail("incident_notify: %s" % exc)
        return result

    def _send(self, message, channels, args, task_vars):
        """One call of the notify module; a module failure (bad channel options) becomes a recorded warning."""
        if not channels:
            return {"notifications": [], "sent": [], "not_sent": []}
        out = self._execute_module(module_name="tradeops.remediation.notify",
                                   module_args={"notice": message, "channels": channels,
                                                "concurrency": args["concurrency"]},
                                   task_vars=task_vars)
        out.pop("invocation", None)
        if out.get("failed"):
            error = str(out.get("msg") or "the notify module failed")
            return {"notifications": [{"name": "(configuration)", "type": "-", "kind": message["kind"],
                                       "status": "failed", "attempts": 0, "error": error}],
                    "sent": [], "not_sent": ["(configuration)"], "warnings": [error]}
        return out

    def _levels(self, args, severity):
        matrix = args["escalation_matrix"] or {}
        levels = matrix.get(severity) or []
        if not isinstance(levels, list):
            raise incident.RecordError("escalation_matrix.%s must be a list of levels ({name, channels})" % severity)
        return levels

    def _notify(self, args, path, task_vars):
        record = incident.load(path)
        severity = record["severity"]
        kind = args["event"]
        if kind == "final":
            kind = "resolution" if record.get("closed_at") else "status"
        warnings = []
        if kind == "resolution":
            # the watcher finishes its send in progress and stops: the resolution notice is the last message
            if not incident_watch.stop(path):
                warnings.append("the status watcher of %s did not stop" % record["incident_id"])
        message = incident.message(record, kind, args["report_link"] or None)
        out = self._send(message, args["channels"], args, task_vars)
        notifications = out.get("notifications") or []
        incident.update(path, lambda rec: incident.add_notifications(rec, kind, notifications))
        warnings += list(out.get("warnings") or [])
        result = {"changed": bool(out.get("sent")), "kind": kind, "notifications": notifications,
                  "sent": out.get("sent") or [], "not_sent": out.get("not_sent") or []}

        levels = self._levels(args, severity)
        defaults = incident.SEVERITIES[severity]
        every = args["status_every"] if args["status_every"] is not None else (defaults["update_minutes"] or 0) * 60
        after = (args["escalate_after"] if args["escalate_after"] is not None
                 else (defaults["escalate_minutes"] or 0) * 60)
        config = {"record_path": path, "channels": args["channels"], "escalation": levels, "status_every": every,
                  "escalate_after": after, "max_seconds": args["watch_max_seconds"],
                  "report_link": args["report_link"] or None, "concurrency": args["concurrency"]}
        if kind != "resolution":
            level = incident_watch.escalate_if_due(path, config, lambda m, c, **kw: self._send(m, c, args, task_vars))
            if level is not None:
                result["escalated_to"] = level
            if args["watch"] and (every or (after and levels)) and not incident.load(path).get("closed_at"):
                result["watcher_pid"] = incident_watch.start(config)
        if warnings:
            result["warnings"] = warnings
        result["record_path"] = path
        result["status_every"] = every
        result["escalate_after"] = after
        return result
