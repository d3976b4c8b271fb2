# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a fleet-wide module's service in the controller process that would have started it.

The kill switch is one call for the whole fleet, delegated to the controller (``delegate_to: localhost``).
Shipping it as a module costs the halt, before the first engine is reached: building the AnsiballZ payload
(about 0.4 s), a new Python process importing Ansible's module code, every target's options serialised
to JSON and parsed back (0.5 MB at 1,000 engines), and the result the same way back. When the task
runs on the controller anyway, with the controller's own Python, the action plugin runs the same
service here instead: the same argument spec validates the same arguments, the same function does the
work, and every ``no_log`` value is removed from the result exactly as ``AnsibleModule.exit_json`` would.

Anything else (another host, another connection, another interpreter) runs the module as before. The
variable ``tradeops_run_on_controller: false`` makes every task run its module.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import sys
from collections.abc import Mapping, Sequence, Set

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.common.parameters import remove_values
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.parsing.convert_bool import boolean

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError

LOCAL_CONNECTIONS = ("local", "ansible.builtin.local")
SWITCH_VAR = "tradeops_run_on_controller"


def _same_python(interpreter):
    try:
        return os.path.realpath(str(interpreter)) == os.path.realpath(sys.executable)
    except (OSError, ValueError):
        return False


def runs_on_controller(action, task_vars):
    """Whether ``action``'s module would run on this controller, with this Python: then it can run here."""
    task_vars = task_vars or {}
    if not boolean(task_vars.get(SWITCH_VAR, True), strict=False):
        return False
    if getattr(action._connection, "transport", None) not in LOCAL_CONNECTIONS:
        return False
    host_vars = task_vars
    delegate_to = action._task.delegate_to
    if delegate_to:
        host_vars = (task_vars.get("ansible_delegated_vars") or {}).get(delegate_to) or {}
    interpreter = host_vars.get("ansible_python_interpreter")
    if interpreter is None:
        return False  # Ansible would discover one, which may not be this Python
    try:
        interpreter = action._templar.template(interpreter)
    except Exception:  # noqa: BLE001 - an interpreter we cannot resolve is not ours: run the module
        return False
    return _same_python(interpreter)


NO_LOG_MARK = "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"


class _UnknownType(Exception):
    pass


class _NoLogValues:
    """Ansible's ``remove_values``, with the same result, and a fast way past every value that holds none of them.

    ``remove_values`` tries every ``no_log`` value on every string of the result: a fleet call's result with 1,000
    accounts (2,000 keys and secrets) costs a second of CPU that way. Here each string is first searched for any
    ``no_log`` value at once (an index of their first ``k`` characters, ``k`` the shortest value's length); only a
    string that holds one is handed to ``remove_values``, which masks it as it always would. A string that holds
    none is left as it is by ``remove_values`` too (no replacement can start). Anything but plain data (a type
    ``remove_values`` treats specially) sends the whole result to ``remove_values``.
    """

    def __init__(self, values):
        self.values = sorted(set(values), key=len, reverse=True)
        self.exact = frozenset(self.values)
        self.k = len(self.values[-1])
        self.index = {}
        for value in self.values:
            self.index.setdefault(value[:self.k], []).append(value)

    def holds(self, text):
        k, index = self.k, self.index
        for i in range(len(text) - k + 1):
            candidates = index.get(text[i:i + k])
            if candidates and any(text.startswith(c, i) for c in candidates):
                return True
        return False

    def clean(self, value):
        if isinstance(value, (str, bytes)):
            text = value if isinstance(value, str) else to_text(value, errors="surrogate_or_strict")
            if text in self.exact:
                return NO_LOG_MARK
            return remove_values(value, self.values) if self.holds(text) else value
        if value is True or value is False or value is None:
            return value
        if isinstance(value, Sequence):
            return [self.clean(v) for v in value]
        if isinstance(value, Set):
            return set(self.clean(v) for v in value)
        if isinstance(value, Mapping):
            return dict((k, self.clean(v)) for k, v in value.items())
        if isinstance(value, (int, float)):
            return NO_LOG_MARK if self.holds(to_native(value)) else value
        raise _UnknownType(type(value))


def without_no_log(value, no_log_values):
    """``remove_values(value, no_log_values)``, faster on a large result (:class:`_NoLogValues`)."""
    values = [to_native(v, errors="surrogate_or_strict") for v in no_log_values]
    if not values or "" in values:
        return remove_values(value, values)
    try:
        return _NoLogValues(values).clean(value)
    except _UnknownType:
        return remove_values(value, values)


def run_service(argument_spec, run, args, check_mode=False, diff=False, error_prefix=""):
    """Validate ``args`` against ``argument_spec`` and call ``run(params, check_mode, diff)``.

    ``run`` returns ``(result, warnings, failure message or None)`` and raises TradeopsError when the
    call as a whole is invalid. Returns the task result, with every ``no_log`` value removed.
    """
    validated = ArgumentSpecValidator(argument_spec).validate(dict(args))
    no_log_values = set(validated._no_log_values)
    if validated.error_messages:
        return without_no_log({"failed": True, "changed": False,
                              "msg": "%s%s" % (error_prefix, "; ".join(validated.error_messages))}, no_log_values)
    warnings = [w["warning"] if isinstance(w, dict) else str(w) for w in validated._warnings]
    try:
        result, run_warnings, message = run(validated.validated_parameters, check_mode, diff)
    except TradeopsError as err:
        result, run_warnings, message = {"changed": False}, [], "%s%s" % (error_prefix, err)
    out = dict(result)
    out.setdefault("changed", False)
    if message:
        out["failed"] = True
        out["msg"] = message
    warnings.extend(run_warnings)
    if warnings:
        out["warnings"] = warnings
    # as AnsibleModule.exit_json reports them (no_log values removed below): what the call was given
    out.setdefault("invocation", {"module_args": validated.validated_parameters})
    return without_no_log(out, no_log_values)


def run_action(action, task_vars, module_name, argument_spec, run, error_prefix=""):
    """The task result of ``module_name``: from ``run`` in this process when the task runs on the controller
    with its Python (:func:`runs_on_controller`), else from the module, as Ansible would run it."""
    if runs_on_controller(action, task_vars):
        result = run_service(argument_spec, run, action._task.args, check_mode=action._play_context.check_mode,
                             diff=bool(action._task.diff), error_prefix=error_prefix)
        result["ran_on_controller"] = True
        return result
    return action._execute_module(module_name=module_name, module_args=dict(action._task.args), task_vars=task_vars)
