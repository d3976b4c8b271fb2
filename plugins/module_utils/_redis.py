# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Redis backend: its connection options, their validation, its client and its errors, written once.

Used by the redis kill-switch method of ``halt_trading`` and the redis probe of ``health_check``.
A module composes its argument spec from :data:`ARGSPEC` (documented once in the
``tradeops.remediation.redis`` doc fragment; a unit test keeps the two in sync), validates it with
:func:`redis_options` and talks to the server through :func:`call`, which opens a client bounded
by the caller's deadline, maps every redis-py error to :class:`BackendError` and closes it.
redis-py is imported lazily, so that a module that never talks to Redis does not need it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    MissingLibraryError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import Record, compose, join, missing, number, port

DEFAULT_HOST = "127.0.0.1"
PROBE_KEY_PREFIX = "tradeops:probe:"  # the redis probe's write: SET (30 s expiry) and DEL of a key of its own
DEFAULT_PORT = 6379
MAX_DB = 2 ** 31 - 1

# No defaults here (see _http.py); redis_options() applies them.
# Keep in sync with plugins/doc_fragments/redis.py (tests/unit/plugins/test_doc_fragments.py).
ARGSPEC = dict(
    host=dict(type="str"),
    port=dict(type="int"),
    db=dict(type="int"),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    tls=dict(type="bool"),
)


def argspec(**extra):
    """A fresh copy of :data:`ARGSPEC` plus ``extra``."""
    return compose(ARGSPEC, extra)


class RedisOptions(Record):
    """The validated connection options of one Redis server (:func:`redis_options` builds it)."""

    __slots__ = ("host", "port", "db", "username", "password", "tls")
    DEFAULTS = {"host": DEFAULT_HOST, "port": DEFAULT_PORT, "db": 0, "tls": False}

    def describe(self):
        """A secret-free name for the server: ``host:port/db``."""
        return "%s:%d/%d" % (self.host, self.port, self.db)


def redis_options(spec, where="", range_messages=True):
    """Validate and normalise the connection options of ``spec``; messages name ``where.option``.

    ``range_messages`` words a port or db out of range as "must be between 1 and 65535" (the
    kill-switch method's wording); without it, as the bound that was missed (the probe's).
    """
    host = spec.get("host")
    if not missing(host) and not isinstance(host, str):
        raise ValidationError("%s must be a host name or address, got %r" % (join(where, "host"), host))
    db = number(spec.get("db"), join(where, "db"), integer=True, minimum=0, maximum=MAX_DB, default=0,
                between=range_messages)
    return RedisOptions(
        host=host or DEFAULT_HOST,
        port=port(spec.get("port"), join(where, "port"), default=DEFAULT_PORT, between=range_messages),
        db=db,
        username=None if missing(spec.get("username")) else spec["username"],
        password=None if missing(spec.get("password")) else spec["password"],
        tls=bool(spec.get("tls")),
    )


def client(options, timeout, purpose="the redis backend"):
    """A redis-py client for ``options`` whose every socket operation times out after ``timeout``.

    No retries: redis-py's default retry makes a refused connection take seconds whatever the
    timeout, and the caller (the next method of a chain, the next probe round) must keep its share
    of the deadline.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise MissingLibraryError("redis", purpose)
    return redis.Redis(host=options.host, port=options.port, db=options.db, username=options.username,
                       password=options.password, ssl=options.tls, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


class Session(object):
    """Calls to one server over one client: a kill-switch method's read, SET and read-back of an engine share a
    connection (one connect and AUTH, not three). Its socket timeout is set by the first call's deadline; each
    later call still checks its own deadline before it starts. A redis-py error drops the client (the next call
    connects again). :meth:`close` when done."""

    def __init__(self, options, purpose="the redis backend"):
        self.options = options
        self.purpose = purpose
        self._client = None

    def call(self, deadline, fn):
        """``fn(client)`` bounded by ``deadline``; redis-py errors as :class:`BackendError`."""
        timeout = deadline.call_timeout()
        if self._client is None:
            self._client = client(self.options, timeout, self.purpose)
        import redis
        try:
            return fn(self._client)
        except redis.RedisError as err:
            self.close()
            message = str(err)
            if self.options.password:
                message = message.replace(self.options.password, "********")
            raise BackendError("redis %s:%d: %s" % (self.options.host, self.options.port, message))

    def close(self):
        conn, self._client = self._client, None
        if conn is not None:
            conn.close()


def call(options, deadline, fn, purpose="the redis backend"):
    """``fn(client)`` on a fresh client bounded by ``deadline``; redis-py errors as :class:`BackendError`."""
    session = Session(options, purpose)
    try:
        return session.call(deadline, fn)
    finally:
        session.close()


def write_check(client):
    """Whether the server takes a write: SET (30 s expiry) and DEL of a probe key of its own. A server out of
    memory under ``noeviction`` answers PING and refuses this. Returns ``(ok, error)``; other errors raise."""
    import uuid

    import redis
    key = PROBE_KEY_PREFIX + uuid.uuid4().hex
    try:
        client.set(key, "1", ex=30)
        client.delete(key)
    except redis.ResponseError as err:
        return False, str(err)
    return True, None
