# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The venue backend (an exchange account, through ccxt): its options, their validation, its client and
its errors, written once.

A module composes its argument spec from :data:`ACCOUNT_ARGSPEC` (documented once in the
``tradeops.remediation.venue`` doc fragment; a unit test keeps the two in sync), validates each account
with :func:`account_options` and talks to the exchange through :class:`VenueClient`, which bounds every
request by the caller's deadline, retries what the exchange says may pass (its rate-limit answers, 5xx,
timeouts, a nonce race) with backoff inside that deadline, and maps every ccxt error to the collection's
exception family with the account's key and secret kept out of the message. ccxt is imported lazily, so
that a module that never talks to a venue does not need it.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import (
    BackendError,
    DeadlineExceeded,
    MissingLibraryError,
    ValidationError,
)
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import Record, compose, join, missing

DEFAULT_EXCHANGE = "kraken"
DEFAULT_QUOTE = "USD"
BACKOFF_START = 0.25
BACKOFF_MAX = 2.0

# Keep in sync with plugins/doc_fragments/venue.py (tests/unit/plugins/test_doc_fragments.py).
ACCOUNT_ARGSPEC = dict(
    name=dict(type="str"),
    exchange=dict(type="str"),
    api_key=dict(type="str", no_log=True),
    secret=dict(type="str", no_log=True),
    password=dict(type="str", no_log=True),
    url=dict(type="str"),
    account_id=dict(type="int"),
    quote=dict(type="str"),
)


def argspec(**extra):
    """A fresh copy of :data:`ACCOUNT_ARGSPEC` plus ``extra``."""
    return compose(ACCOUNT_ARGSPEC, extra)


class VenueAuthError(BackendError):
    """The exchange refused the account's credentials (a wrong or revoked key): retrying will not help."""


class RateLimited(BackendError):
    """The exchange's own rate-limit answer; retried with backoff inside the deadline."""


class VenueAccount(Record):
    """One validated exchange account (:func:`account_options` builds it)."""

    __slots__ = ("name", "exchange", "api_key", "secret", "password", "url", "account_id", "quote")
    DEFAULTS = {"exchange": DEFAULT_EXCHANGE, "quote": DEFAULT_QUOTE}

    def describe(self):
        """A secret-free name: ``name (exchange)``."""
        return "%s (%s)" % (self.name, self.exchange)

    def secrets(self):
        return [s for s in (self.api_key, self.secret, self.password) if s]


def _ccxt():
    try:
        import ccxt
    except ImportError:
        raise MissingLibraryError("ccxt", "exchange (venue) actions")
    return ccxt


def account_options(spec, where):
    """Validate and normalise one account of ``spec``; messages name ``where.option``."""
    if not isinstance(spec, dict):
        raise ValidationError("%s must be a dict" % where)
    unknown = sorted(set(spec) - set(ACCOUNT_ARGSPEC))
    if unknown:
        raise ValidationError("%s: unknown option(s) %s" % (where, ", ".join(unknown)))
    for option in ("name", "api_key", "secret"):
        if missing(spec.get(option)):
            raise ValidationError("%s is required" % join(where, option))
    exchange = spec.get("exchange") or DEFAULT_EXCHANGE
    if exchange not in _ccxt().exchanges:
        raise ValidationError("%s: %r is not an exchange ccxt knows" % (join(where, "exchange"), exchange))
    url = spec.get("url")
    if url and not (url.startswith("http://") or url.startswith("https://")):
        raise ValidationError("%s must be an http:// or https:// URL, got %r" % (join(where, "url"), url))
    values = dict((k, spec[k]) for k in VenueAccount.__slots__ if not missing(spec.get(k)))
    values["exchange"] = exchange
    if url:
        values["url"] = url.rstrip("/")
    return VenueAccount(**values)


def accounts_options(specs, option="accounts"):
    """Validate a list of accounts; names must be unique."""
    if not specs:
        raise ValidationError("%s must name at least one exchange account" % option)
    out, seen = [], set()
    for i, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        account = account_options(spec, "%s[%d]%s" % (option, i, " (%s)" % name if name else ""))
        if account.name in seen:
            raise ValidationError("%s: the account name %r is used twice" % (option, account.name))
        seen.add(account.name)
        out.append(account)
    return out


class MarketCache:
    """Markets are loaded once per exchange and URL, then shared by every account's client.

    Loading markets also leaves indexes in the client's ``options`` (Kraken's ``marketsByAltname``, by which
    an order's pair is resolved to its symbol): they are shared too, or orders would come back without one.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._markets = {}

    def apply(self, client, deadline):
        key = (client.account.exchange, client.account.url)
        with self._lock:
            if key not in self._markets:
                ex = client.exchange
                client.call(deadline, "load markets", ex.load_markets)
                self._markets[key] = (ex.markets, ex.currencies, dict(ex.options))
                return
        markets, currencies, options = self._markets[key]
        client.exchange.set_markets(markets, currencies)
        client.exchange.options.update(options)


class ClientPool:
    """One ccxt client per worker thread and (exchange, URL), lent to one account at a time.

    Building a ccxt client costs more CPU than an account's calls (Kraken's: about 1.4 ms, and a fresh
    HTTP connection per account); at 1,000 accounts that is seconds of a GIL-bound fan-out. A thread's
    client is lent with the account's credentials set and given back with them cleared, so a client
    holds one account's key at a time, and only while that account's work runs in its own thread.
    :meth:`close` closes every client's HTTP session.
    """

    CREDENTIALS = ("apiKey", "secret", "password")

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all = []

    def lend(self, account, request_timeout):
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        key = (account.exchange, account.url)
        exchange = clients.get(key)
        if exchange is None:
            exchange = clients[key] = new_exchange(account, request_timeout)
            with self._lock:
                self._all.append(exchange)
        else:
            exchange.apiKey, exchange.secret, exchange.password = account.api_key, account.secret, account.password
        return exchange

    def give_back(self, exchange):
        for attr in self.CREDENTIALS:
            setattr(exchange, attr, None)

    def close(self):
        with self._lock:
            clients, self._all = self._all, []
        for exchange in clients:
            session = getattr(exchange, "session", None)
            if session is not None:
                session.close()


def new_exchange(account, request_timeout):
    """A ccxt client for ``account``, its requests to ``account.url`` when one is set."""
    ccxt = _ccxt()
    config = {"apiKey": account.api_key, "secret": account.secret, "enableRateLimit": False,
              "timeout": int(float(request_timeout) * 1000)}
    if account.password:
        config["password"] = account.password
    exchange = getattr(ccxt, account.exchange)(config)
    if account.url:
        api = exchange.urls.get("api")
        if isinstance(api, dict):
            exchange.urls["api"] = dict((k, account.url) for k, v in api.items() if isinstance(v, str))
        else:
            exchange.urls["api"] = account.url
    return exchange


class VenueClient:
    """A ccxt client for one account; every call bounded by a deadline, its errors mapped.

    With a :class:`ClientPool`, the ccxt client is the worker thread's, lent for this account: call
    :meth:`close` when the account's work is done (it clears the credentials).
    """

    def __init__(self, account, request_timeout, markets=None, pool=None):
        self.account = account
        self.request_timeout = float(request_timeout)
        self.pool = pool
        if pool is not None:
            self.exchange = pool.lend(account, request_timeout)
        else:
            self.exchange = new_exchange(account, request_timeout)
        self.markets = markets
        self.requests = 0
        self.retries = 0
        # a lent client keeps the markets it was given for an earlier account of the same exchange and URL
        self._loaded = bool(self.exchange.markets)

    def close(self):
        if self.pool is not None and self.exchange is not None:
            self.pool.give_back(self.exchange)
        self.exchange = None

    def ready(self, deadline):
        if not self._loaded:
            if self.markets is not None:
                self.markets.apply(self, deadline)
            else:
                self.call(deadline, "load markets", self.exchange.load_markets)
            self._loaded = True

    def redact(self, text):
        for secret in self.account.secrets():
            text = text.replace(secret, "********")
        return text

    def call(self, deadline, what, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` with its timeout from ``deadline``; transient errors retried with
        backoff until the deadline; every error mapped to :class:`BackendError` (or a subclass)."""
        ccxt = _ccxt()
        delay = BACKOFF_START
        while True:
            try:
                self.exchange.timeout = int(deadline.call_timeout(self.request_timeout) * 1000)
            except DeadlineExceeded:
                raise DeadlineExceeded("%s: %s: the deadline of %.1fs ran out"
                                       % (self.account.name, what, deadline.seconds))
            self.requests += 1
            try:
                return fn(*args, **kwargs)
            except (ccxt.AuthenticationError, ccxt.PermissionDenied, ccxt.AccountSuspended) as err:
                raise VenueAuthError(self._message(what, err, "the exchange refused the API key (wrong, "
                                                              "revoked or without permission); check %s's key"
                                                   % self.account.name))
            except ccxt.InvalidNonce as err:
                error = BackendError(self._message(what, err))
            except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as err:
                error = RateLimited(self._message(what, err, "rate limited by the exchange"))
            except (ccxt.NetworkError, ccxt.ExchangeNotAvailable, ccxt.OnMaintenance) as err:
                error = BackendError(self._message(what, err))
            except ccxt.BaseError as err:
                raise BackendError(self._message(what, err))
            if deadline.remaining() <= delay:
                raise error
            self.retries += 1
            time.sleep(delay)
            delay = min(BACKOFF_MAX, delay * 2)

    def _message(self, what, err, reason=None):
        detail = " ".join(str(err).split())[:300]
        text = "%s: %s failed (%s): %s" % (self.account.describe(), what, type(err).__name__, detail)
        if reason:
            text += " - " + reason
        return self.redact(text)
