# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one set of option checks every backend and module uses: numbers, required options, a token
merged into headers. Each raises :class:`ValidationError` with a message that names the option
(its whole path, for example ``targets[3] (engine-004): methods[0].port``).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError

DEFAULT_TOKEN_HEADER = "X-Admin-Token"


def missing(value):
    """Whether an option is unset: None or the empty string (a YAML key with nothing after it)."""
    return value is None or value == ""


def number(value, option, integer=False, minimum=None, maximum=None, above=None, default=None, between=False):
    """A finite number (or a whole number) within the given bounds; ``default`` when unset.

    Booleans, NaN and infinity are refused. With ``between`` (and both bounds) the message gives
    the range, "must be between 1 and 65535"; otherwise the bound that was missed, "must be at
    most 65535". ``option`` is the option's whole path, used as is in the message.
    """
    if missing(value):
        return default
    kind = "a whole number" if integer else "a number"
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        parsed = int(value) if integer else float(value)
        if integer and float(value) != parsed:
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError("%s must be %s, got %r" % (option, kind, value))
    if not integer and not math.isfinite(parsed):
        raise ValidationError("%s must be a finite number, got %s" % (option, value))
    if between and minimum is not None and maximum is not None and not minimum <= parsed <= maximum:
        raise ValidationError("%s must be between %s and %s, got %s" % (option, minimum, maximum, parsed))
    if above is not None and not parsed > above:
        raise ValidationError("%s must be greater than %s, got %s" % (option, above, value))
    if minimum is not None and parsed < minimum:
        raise ValidationError("%s must be at least %s, got %s" % (option, minimum, value))
    if maximum is not None and parsed > maximum:
        raise ValidationError("%s must be at most %s, got %s" % (option, maximum, value))
    return parsed


def whole(value, option, default, minimum, maximum):
    """A whole number within [minimum, maximum], ``default`` when unset: "must be between 1 and 65535"."""
    return number(value, option, integer=True, minimum=minimum, maximum=maximum, default=default, between=True)


def port(value, option, default=None, between=False):
    """A TCP port, 1 to 65535."""
    return number(value, option, integer=True, minimum=1, maximum=65535, default=default, between=between)


def require(spec, options, where, what):
    """Every option in ``options`` is set in ``spec``; else "<where>.<option> is required for <what>".

    ``where`` is the path of ``spec`` (``targets[0] (engine-001): methods[1]``); with an empty
    ``where`` the message starts with the option itself.
    """
    for option in options:
        if missing(spec.get(option)):
            raise ValidationError("%s is required for %s" % (join(where, option), what))


def join(where, option):
    """The path of ``option`` inside ``where``: ``where.option``, or just ``option``.

    A ``where`` that ends in ": " is a label rather than a path (``probes[1] (api): ``), and the
    option follows it as is: ``probes[1] (api): port``.
    """
    if not where:
        return option
    return where + option if where.endswith(": ") else "%s.%s" % (where, option)


def merge_token(headers, token, token_header=None, prefix="", default_header=DEFAULT_TOKEN_HEADER):
    """A copy of ``headers`` with ``token`` (prefixed, e.g. ``Bearer ``) under ``token_header``.

    The token is sent as a string whatever YAML made of it; with no token the headers are returned
    unchanged (copied). A header of the same name in ``headers`` is replaced by the token.
    """
    merged = dict(headers or {})
    if not missing(token):
        merged[token_header or default_header] = "%s%s" % (prefix or "", token)
    return merged


def compose(*specs):
    """One argument spec from several (a module's own options and its backends' groups).

    An option that two of them define must be defined the same way in both (``validate_certs`` of the
    HTTP and Kubernetes backends): a clash is a programming error, raised at import.
    """
    merged = {}
    for spec in specs:
        for name, option in spec.items():
            if name in merged and merged[name] != option:
                raise ValueError("option %s is defined twice, differently: %r and %r" % (name, merged[name], option))
            merged[name] = dict(option)
    return merged


class Record:
    """A typed record: its fields are its ``__slots__``, each set from the keyword argument of the same name,
    else from ``DEFAULTS``, else None. An unknown keyword is a programming error (TypeError)."""

    __slots__ = ()
    DEFAULTS = {}

    def __init__(self, **values):
        unknown = set(values) - set(self.__slots__)
        if unknown:
            raise TypeError("%s has no field %s" % (type(self).__name__, ", ".join(sorted(unknown))))
        for name in self.__slots__:
            setattr(self, name, values[name] if name in values else self.DEFAULTS.get(name))
