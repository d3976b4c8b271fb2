# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which incident record this ``ansible-playbook`` process feeds.

The playbook's first task opens the record (``incident_record`` with ``event: open``); its path is
kept in this process's own controller temp directory (``C.DEFAULT_LOCAL_TMP``, created when the
process starts and removed when it exits, as the health gate's record), so every later task of the
run finds it without being told, and no other run can point this one elsewhere.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os

from ansible import constants as C

POINTER_NAME = "tradeops-incident.json"


def pointer_path():
    return os.path.join(C.DEFAULT_LOCAL_TMP, POINTER_NAME)


def current_path():
    """The path of the record this process feeds, or None."""
    try:
        with open(pointer_path(), encoding="utf-8") as fh:
            return json.load(fh)["path"]
    except (OSError, ValueError, KeyError):
        return None


def set_current(path):
    with open(pointer_path(), "w", encoding="utf-8") as fh:
        json.dump({"path": path}, fh)
