# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Benchmark timing callback: appends one JSON line per play start, task start and host result to the file
named by $TRADEOPS_BENCH_TIMING (epoch seconds). Used by bench/ only, never by the collection:

    ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins ANSIBLE_CALLBACKS_ENABLED=bench_timing \
    TRADEOPS_BENCH_TIMING=/tmp/t.jsonl ansible-playbook ...
"""



DOCUMENTATION = """
name: bench_timing
type: aggregate
short_description: play and task timestamps for the benchmark harness
description: Appends JSON lines (playbook_start, play_start, task_start, result, end) to $TRADEOPS_BENCH_TIMING.
requirements: [enabled in configuration]
"""

import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from ansible.plugins.callback import CallbackBase  # noqa: E402


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ.get("TRADEOPS_BENCH_TIMING")
        self._play = None

    def _write(self, event, **data):
        if not self._path:
            return
        data.update(event=event, t=time.time(), play=self._play)
        with open(self._path, "a") as fh:
            fh.write(json.dumps(data) + "\n")

    def v2_playbook_on_start(self, playbook):
        self._write("playbook_start", playbook=playbook._file_name)

    def v2_playbook_on_play_start(self, play):
        self._play = play.get_name()
        self._write("play_start")

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._write("task_start", task=task.get_name())

    def _task_end(self, result, status):
        self._write("result", task=result._task.get_name(), host=result._host.get_name(), status=status)

    def v2_runner_on_ok(self, result):
        self._task_end(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._task_end(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._task_end(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._task_end(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._write("end")
