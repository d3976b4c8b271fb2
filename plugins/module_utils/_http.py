# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP backend: its options, their validation, its client and its errors, written once.

Every HTTP call of the collection goes through here: the kill-switch methods and verify requests
of ``halt_trading``, the http and metric probes of ``health_check``, the test and revoke calls of
``rotate_secret``. Modelled on community.hashi_vault's option groups and community.docker's
``DOCKER_COMMON_ARGS``: a module composes its argument spec from :data:`TRANSPORT_ARGSPEC` and
:data:`AUTH_ARGSPEC` (:func:`argspec`), documented once in the ``tradeops.remediation.http_options`` doc
fragment (a unit test keeps the two in sync), validates them with :func:`http_options` and calls
through :func:`client`. Adding a transport option is one edit here and one in the fragment.

It uses only the standard library so that it is cheap to import in a module and safe to call
from many threads at once. Errors come out as :class:`BackendError` with a short, secret-free
message (the method, the URL without credentials and the status, never the headers).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl
import time

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.request import (
    HTTPHandler,
    HTTPSHandler,
    ProxyHandler,
    Request,
    build_opener,
)
from ansible.module_utils.six.moves.urllib.parse import urlsplit, urlunsplit

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import (
    DEFAULT_TOKEN_HEADER,
    Record,
    join,
    merge_token,
    missing,
)

MAX_BODY = 1024 * 1024
DEFAULT_TIMEOUT = 10.0

# --------------------------------------------------------------------------------------------
# Options. No defaults in the argument spec: inside a list of items of many types (probes,
# kill-switch methods) an argspec default would be set on every item; http_options() applies them.
# Keep in sync with plugins/doc_fragments/http_options.py (tests/unit/plugins/test_doc_fragments.py).
# --------------------------------------------------------------------------------------------
TRANSPORT_ARGSPEC = dict(
    validate_certs=dict(type="bool"),
    ca_path=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    proxy=dict(type="str"),
)

AUTH_ARGSPEC = dict(
    headers=dict(type="dict"),
    token=dict(type="str", no_log=True),
    token_header=dict(type="str", no_log=False),
)

GROUPS = {"transport": TRANSPORT_ARGSPEC, "auth": AUTH_ARGSPEC}


def argspec(*groups, **extra):
    """A fresh argument spec of the named option groups (``"transport"``, ``"auth"``) plus ``extra``.

    As community.hashi_vault's ``generate_argspec``: copies, so a module may adjust its own.
    """
    spec = {}
    for group in groups:
        for name, option in GROUPS[group].items():
            spec[name] = dict(option)
    spec.update(extra)
    return spec


class HttpOptions(Record):
    """The validated transport and auth options of one HTTP peer (:func:`http_options` builds it)."""

    __slots__ = ("headers", "validate_certs", "ca_path", "client_cert", "client_key", "proxy")
    DEFAULTS = {"validate_certs": True}

    def secrets(self):
        """Header values that carry credentials (the token), to keep out of any output."""
        return [v for k, v in (self.headers or {}).items()
                if k.lower() not in ("accept", "content-type", "user-agent")]


def _path_option(spec, option, where):
    value = spec.get(option)
    if missing(value):
        return None
    if not isinstance(value, str):
        raise ValidationError("%s must be a file path, got %r" % (join(where, option), value))
    return value


def http_options(spec, where="", token=None, token_header=None, prefix="", headers=True):
    """Validate and normalise the HTTP options of ``spec`` (a dict of the argspec groups' options).

    ``where`` is the option path of ``spec`` for messages (``targets[0] (engine-001): methods[0]``).
    The token (``spec['token']``, or ``token`` when given) is merged into the headers under
    ``token_header`` (``spec['token_header']``, default ``X-Admin-Token``) with ``prefix``.
    ``headers=False`` for a use that takes no headers option.
    """
    merged = {}
    if headers:
        raw = spec.get("headers")
        if raw is not None and not isinstance(raw, dict):
            raise ValidationError("%s must be a dict of header name to value" % join(where, "headers"))
        merged = dict((str(k), str(v)) for k, v in (raw or {}).items())
    if token is None:
        token = spec.get("token")
    if token_header is None:
        token_header = spec.get("token_header")
    merged = merge_token(merged, token, token_header, prefix, DEFAULT_TOKEN_HEADER)
    client_cert = _path_option(spec, "client_cert", where)
    client_key = _path_option(spec, "client_key", where)
    if client_key and not client_cert:
        raise ValidationError("%s needs %s (the certificate the key belongs to)"
                              % (join(where, "client_key"), join(where, "client_cert")))
    proxy = spec.get("proxy")
    if not missing(proxy):
        check_url(proxy, join(where, "proxy"))
    return HttpOptions(headers=merged, validate_certs=spec.get("validate_certs") is not False,
                       ca_path=_path_option(spec, "ca_path", where), client_cert=client_cert, client_key=client_key,
                       proxy=None if missing(proxy) else proxy)


def check_url(url, option):
    """Validate an http(s) URL option: the scheme, a host, and a parse that urllib accepts
    (``http://[::1`` is refused here, naming the option, not later as an internal error)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValidationError("%s must start with http:// or https://, got %r" % (option, safe_url(url)))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as err:
        raise ValidationError("%s is not a valid URL (%s): %r" % (option, err, safe_url(url)))
    if not parts.hostname:
        raise ValidationError("%s has no host: %r" % (option, safe_url(url)))
    return url


def safe_url(url):
    """``url`` without a password in its user info (``https://user:********@host/``), for messages."""
    if not isinstance(url, str) or "@" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":********@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------
class HttpResponse:
    def __init__(self, status, body, latency_ms):
        self.status = status
        self.body = body
        self.latency_ms = latency_ms

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8") or "null")
        except ValueError:
            raise BackendError("expected a JSON body, got %r" % self.body[:80])

    def text(self, limit=200):
        return self.body[:limit].decode("utf-8", "replace")


def _ssl_context(options):
    if not options.validate_certs:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif options.ca_path:
        ctx = ssl.create_default_context(cafile=options.ca_path)
    else:
        ctx = ssl.create_default_context()
    if options.client_cert:
        ctx.load_cert_chain(options.client_cert, options.client_key)
    return ctx


# plain-http openers by proxy (None: the environment's), shared by every client of the process (see HttpClient._open)
_HTTP_OPENERS = {}


class HttpClient:
    """Sends requests to one peer with its :class:`HttpOptions`; safe to share between threads."""

    def __init__(self, options):
        self.options = options
        self._openers = {}

    def _open(self, req, timeout):
        # Built on first use, per scheme: a plain http peer never pays for loading CA certificates, and a
        # bad certificate file fails this peer's request (a BackendError in its result), not the
        # validation of every target. Two threads may both build one: harmless.
        scheme = req.type
        # A plain-http opener depends on the proxy alone, so the process shares one per proxy: building one
        # reads the environment's proxy settings (0.6 ms), and a 1,000-engine halt has 1,500 clients.
        openers = _HTTP_OPENERS if scheme == "http" else self._openers
        key = self.options.proxy if scheme == "http" else scheme
        opener = openers.get(key)
        if opener is None:
            handlers = [HTTPHandler()]
            if self.options.proxy:
                handlers.append(ProxyHandler({"http": self.options.proxy, "https": self.options.proxy}))
            if scheme == "https":
                try:
                    handlers.append(HTTPSHandler(context=_ssl_context(self.options)))
                except (OSError, ssl.SSLError) as err:
                    what = self.options.client_cert or self.options.ca_path
                    raise BackendError("cannot load the TLS files (%s): %s" % (what, err))
            opener = openers[key] = build_opener(*handlers)
        return opener.open(req, timeout=timeout)

    def request(self, url, method="GET", body=None, timeout=DEFAULT_TIMEOUT, headers=None, deadline=None, cap=None):
        """Send one request and return an :class:`HttpResponse` for ANY status code.

        ``body`` may be bytes, a str, or a JSON-serialisable object (sent as application/json). The
        timeout is what is left of ``deadline`` (capped at ``cap``) when one is given. Raises
        :class:`BackendError` on connection errors and timeouts.
        """
        if deadline is not None:
            timeout = deadline.call_timeout(cap)
        method = method.upper()
        if not url.startswith(("http://", "https://")):
            raise ValidationError("url %r must start with http:// or https://" % safe_url(url))
        hdrs = {"Accept": "application/json", "User-Agent": "tradeops.remediation"}
        data = None
        if body is not None:
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode("utf-8")
            else:
                data = json.dumps(body).encode("utf-8")
                hdrs["Content-Type"] = "application/json"
        hdrs.update(self.options.headers or {})
        hdrs.update(headers or {})
        req = Request(url, data=data, headers=hdrs, method=method)
        what = "%s %s" % (method, safe_url(url))
        started = time.monotonic()
        try:
            try:
                resp = self._open(req, timeout)
                status = resp.status
            except HTTPError as err:
                resp = err
                status = err.code
            payload = resp.read(MAX_BODY)
            resp.close()
        except (socket.timeout, TimeoutError):
            raise BackendError("%s: no answer within %.1fs" % (what, timeout))
        except URLError as err:
            reason = err.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise BackendError("%s: no answer within %.1fs" % (what, timeout))
            raise BackendError("%s: %s" % (what, reason))
        except (OSError, ValueError) as err:
            raise BackendError("%s: %s" % (what, err))
        return HttpResponse(status, payload, int((time.monotonic() - started) * 1000))


def client(options):
    """The one way to build an HTTP client from validated :class:`HttpOptions`."""
    return HttpClient(options)


def request(url, method="GET", headers=None, body=None, timeout=DEFAULT_TIMEOUT, validate_certs=True, ca_path=None):
    """One request without a long-lived client (see :meth:`HttpClient.request`)."""
    options = HttpOptions(headers=dict(headers or {}), validate_certs=validate_certs is not False, ca_path=ca_path)
    return client(options).request(url, method, body, timeout)


_MISSING = object()


def json_field(document, path):
    """Return the value at a dotted ``path`` (``a.b.0.c``) in a JSON document, or raise KeyError."""
    value = document
    if path in (None, ""):
        return value
    for part in str(path).split("."):
        if isinstance(value, list):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                raise KeyError(path)
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


def values_match(actual, expected):
    """JSON-aware equality: 'false' from YAML matches false, '0' matches 0."""
    if actual == expected:
        return True
    if isinstance(actual, bool) or isinstance(expected, bool) or actual is None or expected is None:
        return json.dumps(actual).lower() == str(expected).lower() or str(actual).lower() == str(expected).lower()
    return str(actual) == str(expected)
