"""Run a module's main() in-process with patched arguments (as community.hashi_vault's tests do)."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args


def run_module(module, capsys, args: dict) -> dict:
    """The module's exit_json/fail_json document, plus ``_rc`` (its exit code) and ``_raw`` (all it printed)."""
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exc:
            module.main()
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    out["_rc"] = exc.value.code
    out["_raw"] = captured.out + captured.err
    return out
