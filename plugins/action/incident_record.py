# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Feeds the incident record (plugin_utils/incident.py): one event per call, on the controller.

Which record a call feeds is kept in this ``ansible-playbook`` process's own temp directory
(``C.DEFAULT_LOCAL_TMP``, as the health gate's record): the playbook's first task opens it, and every
role then feeds it without being told its path. In check mode the record stays in that temp directory
and nothing is written to the report directory.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident, incident_run

ARGSPEC = {
    "event": {"type": "str", "required": True, "choices": list(incident.EVENTS)},
    # open (and close, when no record is open yet)
    "id": {"type": "str"},
    "type": {"type": "str"},
    "severity": {"type": "str", "choices": list(incident.SEVERITIES)},
    "title": {"type": "str"},
    "dir": {"type": "path"},
    "trigger": {"type": "dict"},
    "detected_at": {"type": "str"},
    "continue_from": {"type": "dict"},
    # every other event
    "phase": {"type": "str"},
    "state": {"type": "str", "choices": ["halted", "resumed"]},
    "result": {"type": "dict"},
    "archives": {"type": "list", "elements": "dict", "default": []},
    "failures": {"type": "list", "elements": "dict", "default": []},
    "repairs": {"type": "list", "elements": "dict", "default": []},
    "name": {"type": "str"},
    "outcome": {"type": "str"},
    "detail": {"type": "str"},
    "reason": {"type": "str"},
    "kind": {"type": "str"},
    "results": {"type": "list", "elements": "dict", "default": []},
    "level": {"type": "int"},
    "channels": {"type": "list", "elements": "str", "default": []},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        # ActionBase's own validation: it raises AnsibleActionFail naming the bad option
        args = self.validate_argument_spec(argument_spec=ARGSPEC)[1]
        try:
            result.update(self._feed(args, bool(self._play_context.check_mode), task_vars or {}))
        except incident.RecordError as exc:
            raise AnsibleActionFail("incident_record %s: %s" % (args["event"], exc))
        return result

    @staticmethod
    def _open(args, check, task_vars):
        missing = [k for k in ("id", "type", "severity") if not args.get(k)]
        if missing:
            raise incident.RecordError("%s required to open the record" % ", ".join(missing))
        base = args.get("dir") or os.path.join(task_vars.get("playbook_dir", "."), "..", "reports")
        if check:  # check mode writes nothing outside this process's temp directory
            base = os.path.join(C.DEFAULT_LOCAL_TMP, "check-reports")
        path = incident.record_path(os.path.normpath(base), args["id"])
        with incident.locked(path):
            record, path = incident.open_record(
                os.path.dirname(path), args["id"], args["type"], args["severity"],
                playbook=str(task_vars.get("ansible_play_name") or ""), trigger=args.get("trigger"),
                detected_at=args.get("detected_at"), title=args.get("title"), continue_from=args.get("continue_from"))
            incident.save(record, path)
        incident_run.set_current(path)
        return path

    def _feed(self, args, check, task_vars):
        event = args["event"]
        path = incident_run.current_path()
        if event == "open" or (path is None and event == "close" and args.get("id")):
            path = self._open(args, check, task_vars)
            if event == "open":
                return {"changed": False, "incident_id": args["id"], "record_path": path}
        if path is None:
            return {"changed": False, "recorded": False,
                    "msg": "no incident record is open in this run (the playbook's first task opens it)"}
        out, record = incident.update(path, lambda record: self._apply(record, event, args))
        out.update(changed=False, incident_id=record["incident_id"], record_path=path)
        if event == "close":
            out["postmortem_path"] = incident.postmortem_path(path)
        return out

    @staticmethod
    def _apply(record, event, args):
        phase = args.get("phase") or event
        if event == "start":
            incident.start_phase(record, phase)
        elif event == "halt":
            incident.add_halt(record, phase, args.get("state") or "halted", args.get("result") or {})
        elif event == "venue":
            incident.add_venue(record, phase, args.get("result") or {})
        elif event == "triage":
            incident.set_triage(record, args.get("result") or {}, phase)
        elif event == "evidence":
            incident.add_evidence(record, args["archives"], args["failures"], phase)
        elif event == "repair":
            incident.add_repairs(record, args["repairs"], phase)
        elif event == "gate":
            incident.set_gate(record, args.get("result") or {}, phase)
        elif event == "resume":
            incident.set_resume(record, args.get("outcome") or "skipped_not_approved", phase)
        elif event == "action":
            incident.add_action(record, phase, args.get("name") or phase, args.get("outcome") or "done",
                                args.get("detail"))
        elif event == "failure":
            incident.set_failure(record, phase, args.get("reason") or "see the run output")
        elif event == "notification":
            incident.add_notifications(record, args.get("kind") or "status", args["results"])
        elif event == "escalation":
            incident.escalate(record, args.get("level") or 1, args.get("name") or "", args["channels"])
        elif event == "close":
            verdict = incident.finish(record)
            return {"verdict": verdict, "summary": incident.summary(record)}
        return {}
