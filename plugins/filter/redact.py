# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that find what a run must redact: the secret values it knows, and a pattern check."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible_collections.tradeops.remediation.plugins.module_utils._redact import (
    MIN_VALUE_LENGTH,
    looks_secret,
    secret_values,
)

# Magic variables whose values are names of things, never secrets (groups: {secret_hosts: [host names]}).
_SKIP = frozenset(("groups", "group_names", "omit", "hostvars", "inventory_hostname", "inventory_hostname_short"))


def _template_text(value):
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def _raw_vars(hostvars, host):
    raw_get = getattr(hostvars, "raw_get", None)
    if raw_get is not None:
        data = raw_get(host)
        return data if isinstance(data, dict) else {}
    try:
        return hostvars[host]
    except KeyError:
        return {}


def known_secret_values(hostvars, hosts=None, pattern=None, min_length=MIN_VALUE_LENGTH, extra=None):
    """Every secret value the run knows, as a sorted list of unique strings.

    For each host of ``hosts`` (default: every host of ``hostvars``), the values of its variables
    (inventory, group and host vars, extra vars, facts) that are under a name that looks secret at
    any depth of nested dicts and lists: kill-switch ``token``s, DB ``login_password``s, Redis
    ``password``s, ``*_pw``, ``secret_id``, ... (see ``_redact.secret_values``), plus every
    vault-encrypted value and the values in ``extra``. A variable is templated only when a secret
    in it is a template (``"{{ lookup(...) }}"``), so large inventories stay cheap. Values shorter
    than ``min_length`` are left out (they would mangle every line they occur in).
    """
    words = pattern or None
    found = set()
    memo = {}  # every host holds the same fleet-wide results: each is walked once, not once per host
    for host in (list(hosts) if hosts is not None else list(hostvars)):
        raw = _raw_vars(hostvars, host)
        for name in list(raw):
            if name in _SKIP:
                continue
            values = secret_values({name: raw[name]}, words=words, min_length=1, memo=memo)
            if any(_template_text(v) for v in values):
                try:
                    values = secret_values({name: hostvars[host][name]}, words=words, min_length=1)
                except Exception:  # noqa: BLE001 - an undefined or failing template holds no value to redact
                    pass
            found.update(str(v) for v in values if not _template_text(v))
    found.update(secret_values(extra or [], words=words, min_length=1, secret=True))
    return sorted(v for v in found if len(v) >= int(min_length))


def redact_pattern_error(pattern):
    """'' when ``pattern`` (secret words for names) is a valid regular expression, else why not."""
    try:
        re.compile(str(pattern))
        looks_secret("x", str(pattern))
    except re.error as exc:
        return str(exc)
    if re.fullmatch(str(pattern), ""):
        return "it matches the empty string, so every name would look secret"
    return ""


class FilterModule(object):
    def filters(self):
        return {
            "known_secret_values": known_secret_values,
            "redact_pattern_error": redact_pattern_error,
        }
