# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test callback: one JSON line per task start, Ansible's implicit tasks included (the meta ``role_complete`` that
ends every role run, per host), written to the file named by $TRADEOPS_TEST_TASK_STARTS. Used by the tests only:

    ANSIBLE_CALLBACK_PLUGINS=tests/helpers/callback_plugins ANSIBLE_CALLBACKS_ENABLED=task_starts \
    TRADEOPS_TEST_TASK_STARTS=/tmp/starts.jsonl ansible-playbook ...
"""

DOCUMENTATION = """
name: task_starts
type: aggregate
short_description: every task start, implicit ones included, for the tests
description: >-
  Appends one JSON line (name, action, role, implicit, meta, at: epoch seconds) per task start to
  $TRADEOPS_TEST_TASK_STARTS.
requirements: [enabled in configuration]
"""

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from ansible.plugins.callback import CallbackBase  # noqa: E402


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_starts"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        # the implicit tasks are what this callback is for: Ansible sends them only to callbacks that ask
        self.wants_implicit_tasks = True

    def v2_playbook_on_task_start(self, task, is_conditional):
        path = os.environ.get("TRADEOPS_TEST_TASK_STARTS")
        if not path:
            return
        meta = task.args.get("_raw_params") if task.action in ("meta", "ansible.builtin.meta") else None
        line = {"name": task.get_name(), "action": task.action, "role": task._role.get_name() if task._role else None,
                "implicit": bool(task.implicit), "meta": meta, "at": time.time()}
        with open(path, "a") as fh:
            fh.write(json.dumps(line) + "\n")
