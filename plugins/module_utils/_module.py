# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boundary of a module whose work is one function, ``run(params, check_mode, diff)``.

``run`` returns ``(result, warnings, failure message or None)`` and raises TradeopsError when the call as a
whole is invalid. The module's ``main()`` and its action plugin's controller-side run
(plugins/plugin_utils/in_process.py) both call the same ``run``; this is the module's side.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import TradeopsError


def run_module(argument_spec, run, error_prefix):
    """Validate the arguments, call ``run``, and exit: the result, its warnings, and ``fail_json`` with the
    result when there is a failure message."""
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    try:
        result, warnings, message = run(module.params, module.check_mode, module._diff)
    except TradeopsError as err:
        module.fail_json(msg="%s%s" % (error_prefix, err))
    for warning in warnings:
        module.warn(warning)
    if message:
        result["msg"] = message
        module.fail_json(**result)
    module.exit_json(**result)
