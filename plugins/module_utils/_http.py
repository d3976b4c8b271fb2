# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small HTTP client for kill switches and probes: always a timeout, JSON in and out.

It uses only the standard library so that it is cheap to import in a module and safe to call
from many threads at once. Errors come out as :class:`BackendError` with a short, secret-free
message (the URL and the status, never the headers).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import socket
import ssl
import time

from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.six.moves.urllib.request import HTTPSHandler, Request, build_opener, HTTPHandler
from ansible.module_utils.six.moves.urllib.parse import urlsplit

from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError

MAX_BODY = 1024 * 1024


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


def _ssl_context(validate_certs, ca_path):
    if not validate_certs:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=ca_path) if ca_path else ssl.create_default_context()


def check_url(url, option):
    """Validate an http(s) URL option: the scheme, a host, and a parse that urllib accepts
    (``http://[::1`` is refused here, naming the option, not later as an internal error)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValidationError("%s must start with http:// or https://, got %r" % (option, url))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as err:
        raise ValidationError("%s is not a valid URL (%s): %r" % (option, err, url))
    if not parts.hostname:
        raise ValidationError("%s has no host: %r" % (option, url))
    return url


def request(url, method="GET", headers=None, body=None, timeout=10.0, validate_certs=True, ca_path=None):
    """Send one request and return an :class:`HttpResponse` for ANY status code.

    ``body`` may be bytes, a str, or a JSON-serialisable object (sent as application/json).
    Raises :class:`BackendError` on connection errors and timeouts.
    """
    if not url.startswith(("http://", "https://")):
        raise ValidationError("url %r must start with http:// or https://" % url)
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
    hdrs.update(headers or {})
    req = Request(url, data=data, headers=hdrs, method=method.upper())
    handlers = [HTTPHandler()]
    if url.startswith("https://"):
        handlers.append(HTTPSHandler(context=_ssl_context(validate_certs, ca_path)))
    opener = build_opener(*handlers)
    started = time.monotonic()
    try:
        try:
            resp = opener.open(req, timeout=timeout)
            status = resp.status
        except HTTPError as err:
            resp = err
            status = err.code
        payload = resp.read(MAX_BODY)
        resp.close()
    except (socket.timeout, TimeoutError):
        raise BackendError("%s %s: no answer within %.1fs" % (method.upper(), url, timeout))
    except URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise BackendError("%s %s: no answer within %.1fs" % (method.upper(), url, timeout))
        raise BackendError("%s %s: %s" % (method.upper(), url, reason))
    except (OSError, ValueError) as err:
        raise BackendError("%s %s: %s" % (method.upper(), url, err))
    return HttpResponse(status, payload, int((time.monotonic() - started) * 1000))


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
