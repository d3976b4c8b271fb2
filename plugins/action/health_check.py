# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the health_check module; when its task is the health gate, records the result for this run.

When the task runs on the controller with the controller's Python (the roles delegate it to localhost), the
module's code runs in this process instead of a new one (plugin_utils/in_process.py).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.tradeops.remediation.plugins.modules.health_check import ARGUMENT_SPEC, run
from ansible_collections.tradeops.remediation.plugins.plugin_utils import gate, in_process


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        result.update(in_process.run_action(self, task_vars, "tradeops.remediation.health_check", ARGUMENT_SPEC, run,
                                            error_prefix="health_check: "))
        if self._task.args.get("gate") and not self._play_context.check_mode:
            if result.get("status") == "GO" and not result.get("failed"):
                gate.write_record(result)
                result["gate_recorded"] = True
            else:
                gate.clear_record()
                result["gate_recorded"] = False
        return result
