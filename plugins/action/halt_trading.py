# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the halt_trading module. A resume (state: resumed) goes through only for the targets that the
health gate of this same ansible-playbook run found GO (see plugin_utils/gate.py); no variable can
stand in for that record. Halting is never held back.

When the task runs on the controller with the controller's Python (``delegate_to: localhost``, as the
halt_trading role does), the module's own function runs here, in this process, instead of a new one:
no payload to build, no interpreter to start, no 1,000 targets through JSON twice (plugin_utils/in_process.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.tradeops.remediation.plugins.module_utils._killswitch import halt_argspec, run_halt
from ansible_collections.tradeops.remediation.plugins.plugin_utils import gate, in_process


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = self._task.args
        targets = args.get("targets")
        if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets)):
            # Ansible's own conversion says only "dictionary requested, could not parse JSON or key=value"
            bad = targets if not isinstance(targets, list) else next(t for t in targets if not isinstance(t, dict))
            result.update(failed=True, changed=False, msg=(
                "halt_trading: targets must be a list of targets, each a dict with name and methods; got %s %s. "
                "Build them with the tradeops.remediation.killswitch_targets filter, or see the module's EXAMPLES."
                % ("a string" if isinstance(bad, str) else "a " + type(bad).__name__, repr(str(bad))[:80])))
            return result
        if args.get("state") == "resumed" and not self._play_context.check_mode:
            targets = args.get("targets") or []
            names = [t.get("name") if isinstance(t, dict) else t for t in targets]
            refused = gate.refused_targets(names)
            if refused:
                result.update(
                    failed=True, changed=False, state="resumed", targets=[], resumed=[], already_resumed=[],
                    failed_targets=[name for name, _why in refused], unverified=[], gate_refused=True,
                    msg="Refusing to resume: %s. Trading stays halted. Run the health gate in the same run first "
                        "(playbooks/resume_trading.yml does)." % "; ".join("%s: %s" % r for r in refused))
                return result
        result.update(in_process.run_action(self, task_vars, "tradeops.remediation.halt_trading", halt_argspec(),
                                            run_halt, error_prefix="halt_trading: "))
        return result
