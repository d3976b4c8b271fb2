# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One exception family for every tradeops module_utils class.

Modules catch :class:`TradeopsError` at the boundary and call ``fail_json`` with its message,
which always says what to do next. Nothing below the module raises ``fail_json`` itself.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class TradeopsError(Exception):
    """Base class for every error raised by tradeops module_utils."""


class ValidationError(TradeopsError):
    """The module input is wrong. The message names the target and the option."""


class BackendError(TradeopsError):
    """A kill-switch, probe or store backend failed (network error, bad status, timeout)."""


class DeadlineExceeded(BackendError):
    """The per-target deadline ran out before the backend answered."""


class MissingLibraryError(TradeopsError):
    """A Python library a backend needs is not installed where the module runs."""

    def __init__(self, library, purpose):
        self.library = library
        super(MissingLibraryError, self).__init__(
            "the Python library '%s' is required for %s but is not installed for the interpreter "
            "running the module; install it (pip install %s) or set ansible_python_interpreter"
            % (library, purpose, library)
        )
