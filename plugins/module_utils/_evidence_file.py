# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An evidence file written before anything is changed: JSON, mode 0600, fsynced, renamed into place whole."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import tempfile

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError


def write_private_json(path, body, nothing_done):
    """Write ``body`` to ``path`` (0600, fsynced, atomic); returns the absolute path. A failure raises
    :class:`BackendError` saying ``nothing_done`` (what was therefore not changed)."""
    path = os.path.abspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".evidence-", suffix=".tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
    except (OSError, IOError, TypeError, ValueError) as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise BackendError("cannot write the evidence to %s (%s): %s" % (path, nothing_done, err))
    return path
