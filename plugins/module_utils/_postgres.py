# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shared PostgreSQL connection options and a bounded ``connect()``.

Modelled on community.postgresql ``module_utils/postgres.py``: one argspec
(:func:`postgres_connection_spec`), documented once in the ``tradeops.remediation.postgres`` doc
fragment, and one way to connect. Modules that talk to PostgreSQL at the top level
(pg_integrity) merge the spec into their argspec; health_check uses the same names inside each
postgres probe (:func:`probe_connection_spec`). psycopg2 is imported lazily so that a module
that never connects does not need it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import math

from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import check_timeout
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    ValidationError,
)

SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_PORT = 5432
DEFAULT_SSLMODE = "prefer"
DEFAULT_CONNECT_TIMEOUT = 5
APPLICATION_NAME = "tradeops.remediation"


def postgres_connection_spec():
    """The connection options, with their defaults, for a module's top-level argspec.

    Keep it in sync with ``plugins/doc_fragments/postgres.py`` (a unit test compares them).
    """
    return dict(
        login_host=dict(type="str"),
        login_port=dict(type="int", default=DEFAULT_PORT),
        login_db=dict(type="str"),
        login_user=dict(type="str"),
        login_password=dict(type="str", no_log=True),
        sslmode=dict(type="str", default=DEFAULT_SSLMODE, choices=list(SSLMODES)),
        connect_timeout=dict(type="int", default=DEFAULT_CONNECT_TIMEOUT),
    )


def probe_connection_spec():
    """The same options without defaults or choices, for suboptions shared with other probe types.

    Inside a list of probes of many types an argspec default would be set on every probe,
    http or disk alike; :func:`connection_kwargs` applies the same defaults when a value is None
    and checks ``sslmode`` itself, with a message that names the probe (Ansible's own choices
    check would only say "found in probes").
    """
    spec = {}
    for name, option in postgres_connection_spec().items():
        option = dict(option)
        option.pop("default", None)
        option.pop("choices", None)
        spec[name] = option
    return spec


def connection_kwargs(params, deadline=None, where="postgres", application_name=None):
    """psycopg2.connect() keyword arguments from the connection options (None = libpq default).

    The connect timeout is the smaller of ``connect_timeout`` and what is left of ``deadline``,
    rounded up to whole seconds (libpq counts whole seconds, and treats values below 2 as 2).
    ``application_name`` defaults to ``tradeops.remediation``; a module may name itself instead
    (pg_integrity uses ``tradeops.pg_integrity``) so that its sessions can be told apart.
    """
    port = params.get("login_port")
    port = DEFAULT_PORT if port is None else port
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ValidationError("%s: login_port must be a port number, got %r" % (where, port))
    if not 0 < port < 65536:
        raise ValidationError("%s: login_port must be between 1 and 65535, got %d" % (where, port))
    sslmode = params.get("sslmode") or DEFAULT_SSLMODE
    if sslmode not in SSLMODES:
        raise ValidationError("%s: sslmode must be one of %s, got %r" % (where, ", ".join(SSLMODES), sslmode))
    timeout = params.get("connect_timeout")
    timeout = DEFAULT_CONNECT_TIMEOUT if timeout is None else timeout
    timeout = check_timeout(timeout, "%s: connect_timeout" % where, minimum=1)
    if deadline is not None:
        timeout = min(timeout, deadline.call_timeout())
    kwargs = dict(port=port, sslmode=sslmode, connect_timeout=max(1, int(math.ceil(timeout))),
                  application_name=application_name or APPLICATION_NAME)
    for option, keyword in (("login_host", "host"), ("login_db", "dbname"), ("login_user", "user"),
                            ("login_password", "password")):
        if params.get(option) not in (None, ""):
            kwargs[keyword] = params[option]
    return kwargs


def describe(params):
    """A secret-free name for the server: ``user@host:port/db``."""
    return "%s%s:%s/%s" % (
        (params.get("login_user") + "@") if params.get("login_user") else "",
        params.get("login_host") or "(local socket)",
        params.get("login_port") or DEFAULT_PORT,
        params.get("login_db") or "(default db)",
    )


def connect(params, deadline=None, options=None, application_name=None):
    """Open a psycopg2 connection from the connection options, bounded by ``deadline``.

    ``options`` is passed to libpq as-is (for example ``-c statement_timeout=5000``);
    ``application_name`` replaces the default ``tradeops.remediation``. Raises
    :class:`MissingLibraryError` without psycopg2 and :class:`BackendError` (with a message
    that never contains the password) when the server cannot be reached or refuses us.
    """
    kwargs = connection_kwargs(params, deadline, application_name=application_name)
    if options:
        kwargs["options"] = options
    try:
        import psycopg2
    except ImportError:
        raise MissingLibraryError("psycopg2", "PostgreSQL connections")
    try:
        return psycopg2.connect(**kwargs)
    except psycopg2.Error as err:
        message = " ".join(str(err).split())
        password = params.get("login_password")
        if password:
            message = message.replace(password, "********")
        raise BackendError("postgres %s: %s" % (describe(params), message or type(err).__name__))
