# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scope of an incident: which engines a halt, a gate, a venue action or a resume acts on.

A scope is ``all`` (every host of the play), or a list (or comma-separated string) of inventory host
names and inventory group names: one engine, a group (``strategy_momentum``, ``desk_a``, ``venue_kraken``)
or several. It only ever narrows the play's hosts: a name outside the play is an error, never a silent
widening or an empty scope.

``scope_plan`` is the blast-radius check of a scoped incident playbook: the scope it found, the engines
outside it, and whether the scope is too large for a scoped fix (then the playbook escalates to the P0
outage playbook instead of improvising).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError
from ansible.module_utils.six import string_types

ALL = "all"


def _names(scope, what):
    if scope is None:
        return None
    if isinstance(scope, string_types):
        scope = scope.strip()
        if scope in ("", ALL):
            return None
        return [part.strip() for part in scope.split(",") if part.strip()]
    if isinstance(scope, (list, tuple)):
        names = []
        for item in scope:
            if not isinstance(item, string_types) or not item.strip():
                raise AnsibleFilterError("%s: every entry of the scope must be a host or group name, got %r"
                                         % (what, item))
            names.append(item.strip())
        if ALL in names:
            return None
        return names
    raise AnsibleFilterError("%s: the scope must be 'all' or a list of host and group names, got %s"
                             % (what, type(scope).__name__))


def scope_hosts(hosts, scope, groups=None):
    """The play's ``hosts`` that ``scope`` names (directly or through a group), in the play's order.

    ``scope``: ``all`` (or empty) for every host; else host and group names. A name that is neither a play
    host nor a group holding one is an error naming it: a typo must not halt nothing and report success.
    """
    hosts = list(hosts or [])
    names = _names(scope, "scope_hosts")
    if names is None:
        return hosts
    groups = groups or {}
    play = set(hosts)
    wanted = set()
    unknown = []
    for name in names:
        if name in play:
            wanted.add(name)
        elif name in groups and play.intersection(groups[name] or []):
            wanted.update(play.intersection(groups[name]))
        else:
            unknown.append(name)
    if unknown:
        raise AnsibleFilterError(
            "scope_hosts: %s %s neither a host of this play nor a group holding one (the scope names engines "
            "or inventory groups such as strategy_momentum; 'all' is every engine)"
            % (", ".join(sorted(unknown)), "is" if len(unknown) == 1 else "are"))
    return [h for h in hosts if h in wanted]


def scope_plan(fleet, affected, max_ratio, min_fleet=1):
    """The blast-radius decision of a scoped playbook.

    ``fleet``: every engine; ``affected``: the engines found failing (names outside the fleet, such as shared
    components, are reported in ``shared`` and are not in the scope). Returns ``scope`` (the affected engines
    in fleet order), ``outside``, ``ratio``, ``shared``, and ``escalate`` with ``reason`` when the scope is more
    than ``max_ratio`` of the fleet or a shared component is failing: a scoped fix cannot help then.
    """
    try:
        max_ratio = float(max_ratio)
    except (TypeError, ValueError):
        raise AnsibleFilterError("scope_plan: max_ratio must be a number between 0 and 1, got %r" % (max_ratio,))
    if not 0 < max_ratio <= 1:
        raise AnsibleFilterError("scope_plan: max_ratio must be above 0 and at most 1, got %r" % (max_ratio,))
    fleet = list(fleet or [])
    failing = set(affected or [])
    scope = [h for h in fleet if h in failing]
    shared = sorted(failing.difference(fleet))
    ratio = (float(len(scope)) / len(fleet)) if fleet else 0.0
    plan = {"scope": scope, "outside": [h for h in fleet if h not in failing], "ratio": round(ratio, 4),
            "shared": shared, "max_ratio": max_ratio, "escalate": False, "reason": ""}
    if shared:
        plan.update(escalate=True, reason="shared component(s) failing: %s; restarting engines cannot fix them"
                    % ", ".join(shared))
    elif len(fleet) >= int(min_fleet) and ratio > max_ratio:
        plan.update(escalate=True, reason="%d of %d engines failing (%.0f%%), above the %.0f%% a scoped fix may "
                    "halt" % (len(scope), len(fleet), ratio * 100, max_ratio * 100))
    return plan


def host_representatives(hosts, hostvars):
    """One inventory host per machine (``ansible_host``, else the inventory name), in order: where a task that
    measures the machine itself (memory, load, disk) runs once, however many engines the machine serves."""
    seen, out = set(), []
    for host in hosts or []:
        try:
            machine = hostvars[host].get("ansible_host") or host
        except KeyError:
            raise AnsibleFilterError("host_representatives: host %r is not in hostvars" % (host,))
        if machine not in seen:
            seen.add(machine)
            out.append(host)
    return out


def stopped_with_halt(rows):
    """The engines outside a scoped halt that stopped trading with it, from the outside-scope proof's rows
    (``name``, ``orders_before``, ``orders_after``, ``gap_before``: seconds from its last order to the halt,
    ``silent_after``: seconds since the halt). An engine stopped with the halt when it wrote orders before it,
    none after, and its last order is more recent than the silence since: at its own rate an order was due. One
    that had stopped earlier by itself (a self-halt, a crash) has a gap longer than the silence, and is not
    blamed on the halt."""
    out = []
    for row in rows or []:
        try:
            before, after = int(row.get("orders_before") or 0), int(row.get("orders_after") or 0)
            gap, silent = row.get("gap_before"), row.get("silent_after")
        except (AttributeError, TypeError, ValueError):
            raise AnsibleFilterError("stopped_with_halt: expected the outside-scope proof's rows, got %r" % (row,))
        if before > 0 and after == 0 and gap is not None and silent is not None and float(gap) < float(silent):
            out.append(row)
    return out


class FilterModule(object):
    def filters(self):
        return {"scope_hosts": scope_hosts, "scope_plan": scope_plan, "host_representatives": host_representatives,
                "stopped_with_halt": stopped_with_halt}
