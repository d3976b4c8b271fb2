# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One redaction helper for every module_utils class: secrets never reach a message or a result."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

REDACTED = "********"


def redact(text, values):
    """Replace every value in ``text`` (a str, or the str leaves of dicts and lists) by ``********``.

    Empty values are ignored (replacing "" would mangle every string), and longer values are
    replaced first, so a secret that contains another is not half-revealed.
    """
    values = [v for v in (values or []) if v]
    if not values or text is None:
        return text
    if isinstance(text, str):
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text
    if isinstance(text, dict):
        return dict((k, redact(v, values)) for k, v in text.items())
    if isinstance(text, (list, tuple)):
        return [redact(v, values) for v in text]
    return text
