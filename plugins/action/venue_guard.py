# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Runs the venue_guard module. When the task runs on the controller with the controller's Python (the
venue_guard role delegates it to localhost), the module's code runs in this process instead of a new one
(plugin_utils/in_process.py)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.plugins.action import ActionBase

from ansible_collections.tradeops.remediation.plugins.modules.venue_guard import ARGUMENT_SPEC, run
from ansible_collections.tradeops.remediation.plugins.plugin_utils import in_process


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        result.update(in_process.run_action(self, task_vars, "tradeops.remediation.venue_guard", ARGUMENT_SPEC, run,
                                            error_prefix="venue_guard: "))
        return result
