# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The modules whose action plugin runs their code on the controller (plugins/plugin_utils/in_process.py)
    DOCUMENTATION = r"""
options: {}
notes:
  - When the task runs on the controller (a local connection, such as a task delegated to C(localhost)) with
    the controller's own Python, the action plugin runs the module's code in the controller's worker process,
    with the same argument validation and the same removal of C(no_log) values from the result, instead of
    building a payload and starting a new Python process (about 0.5 s saved, more with many targets). The
    result then has C(ran_on_controller=true). Set the variable C(tradeops_run_on_controller=false) to
    always run the module.
"""
