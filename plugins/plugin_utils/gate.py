# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health gate's record for this run, which no variable can supply.

Extra vars override every variable, ``set_fact`` and registered results included, so a resume that
trusted ``health_gate_passed`` could be forged with ``-e health_gate_passed=true``. Instead the
``health_check`` action plugin, when its task is the gate (``gate: true``) and the whole stack is GO,
writes a record into this ``ansible-playbook`` process's own controller temp directory
(``C.DEFAULT_LOCAL_TMP``: created with a random name when the process starts, removed when it
exits). The ``halt_trading`` action plugin reads it before any ``state: resumed`` and refuses the
targets the record does not show GO. A record exists only if a gate passed in this same run.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile
import time

from ansible import constants as C

RECORD_NAME = "tradeops-health-gate.json"


def record_path():
    return os.path.join(C.DEFAULT_LOCAL_TMP, RECORD_NAME)


def write_record(result):
    """Record a GO gate result: when, and the status of every component it probed."""
    components = {}
    for probe in result.get("probes") or []:
        component = probe.get("component") or probe.get("name")
        status = probe.get("status")
        if components.get(component) not in ("NO-GO", "UNKNOWN"):
            components[component] = status
    record = {"status": result.get("status"), "at": time.time(), "pid": os.getpid(), "components": components}
    directory = os.path.dirname(record_path())
    fd, tmp = tempfile.mkstemp(prefix=".gate-", dir=directory)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, record_path())
    return record


def clear_record():
    """A gate that does not pass closes it: a GO from earlier in the run no longer counts."""
    try:
        os.unlink(record_path())
    except FileNotFoundError:
        pass


def read_record():
    try:
        with open(record_path()) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def refused_targets(names):
    """The resume targets this run's gate does not cover with GO, each with why; [] when all are."""
    record = read_record()
    if record is None:
        return [(name, "no health gate passed in this ansible-playbook run") for name in names]
    if record.get("status") != "GO":
        return [(name, "the health gate of this run is %s" % record.get("status")) for name in names]
    components = record.get("components") or {}
    refused = []
    for name in names:
        status = components.get(name)
        if status != "GO":
            refused.append((name, "the health gate of this run did not probe it" if status is None
                            else "the health gate of this run found it %s" % status))
    return refused
