"""Real local receivers for the notification channels: an SMTP server (aiosmtpd) and HTTP receivers that
check every payload against the service's documented schema, answering as the service does.

- :class:`SmtpReceiver`: aiosmtpd's ``Controller`` on 127.0.0.1 (optionally with AUTH, optionally failing the
  next N messages with ``451``); ``messages`` are parsed ``email.message.EmailMessage`` objects.
- :class:`SlackReceiver`: an incoming webhook (``text`` required; Block Kit header/section limits).
- :class:`PagerDutyReceiver`: the Events API v2 ``/v2/enqueue`` (202 ``Event processed`` or 400 ``invalid event``,
  the bodies PagerDuty documents).
- :class:`WebhookReceiver`: checks the HMAC-SHA256 signature (401 on a bad one).

Each HTTP receiver keeps ``received`` (valid payloads, in order), ``rejected`` (invalid ones, with the errors) and
can be told to fail the next N requests (``fail_next(n, status)``).
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import json
import socket
import threading
import time

import jsonschema
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.helpers.http import JsonHandler, LocalServer

# https://developer.pagerduty.com/docs/events-api-v2/trigger-events/ (and acknowledge / resolve)
PAGERDUTY_EVENT = {
    "type": "object",
    "required": ["routing_key", "event_action"],
    "properties": {
        "routing_key": {"type": "string", "minLength": 32, "maxLength": 32},
        "event_action": {"enum": ["trigger", "acknowledge", "resolve"]},
        "dedup_key": {"type": "string", "maxLength": 255},
        "payload": {
            "type": "object",
            "required": ["summary", "source", "severity"],
            "properties": {
                "summary": {"type": "string", "minLength": 1, "maxLength": 1024},
                "source": {"type": "string", "minLength": 1},
                "severity": {"enum": ["critical", "error", "warning", "info"]},
                "timestamp": {"type": "string",
                              "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
                "component": {"type": "string"}, "group": {"type": "string"}, "class": {"type": "string"},
                "custom_details": {"type": "object"},
            },
        },
        "links": {"type": "array", "items": {"type": "object", "required": ["href"]}},
        "images": {"type": "array"},
        "client": {"type": "string"}, "client_url": {"type": "string"},
    },
    "additionalProperties": False,
    "if": {"properties": {"event_action": {"const": "trigger"}}},
    "then": {"required": ["payload"]},
    "else": {"required": ["dedup_key"]},
}

_TEXT = {"type": "object", "required": ["type", "text"],
         "properties": {"type": {"enum": ["plain_text", "mrkdwn"]}, "text": {"type": "string", "minLength": 1}}}
# https://api.slack.com/messaging/webhooks and https://api.slack.com/reference/block-kit/blocks
SLACK_MESSAGE = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "minLength": 1},
        "blocks": {"type": "array", "maxItems": 50, "items": {"oneOf": [
            {"type": "object", "required": ["type", "text"], "additionalProperties": False,
             "properties": {"type": {"const": "header"}, "block_id": {"type": "string"},
                            "text": {"type": "object", "required": ["type", "text"],
                                     "properties": {"type": {"const": "plain_text"},
                                                    "text": {"type": "string", "minLength": 1, "maxLength": 150}}}}},
            {"type": "object", "required": ["type"], "additionalProperties": False,
             "anyOf": [{"required": ["text"]}, {"required": ["fields"]}],
             "properties": {"type": {"const": "section"}, "block_id": {"type": "string"},
                            "text": {**_TEXT, "properties": {**_TEXT["properties"],
                                                             "text": {"type": "string", "minLength": 1,
                                                                      "maxLength": 3000}}},
                            "fields": {"type": "array", "maxItems": 10,
                                       "items": {**_TEXT, "properties": {**_TEXT["properties"],
                                                                         "text": {"type": "string", "minLength": 1,
                                                                                  "maxLength": 2000}}}}}},
        ]}},
    },
}


class _Receiver:
    """Shared by the HTTP receivers: records, failure injection, a deadline-bound wait."""

    path = "/"
    schema: dict = {}

    def __init__(self):
        self.received: list[dict] = []
        self.rejected: list[dict] = []
        self.requests = 0
        self._fail: list[int] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(JsonHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                receiver._post(self)

        self.server = LocalServer(Handler)
        self.url = self.server.url + self.path

    def fail_next(self, n: int, status: int = 503):
        with self.lock:
            self._fail.extend([status] * n)

    def _post(self, handler):
        body = handler.read_body()
        with self.lock:
            self.requests += 1
            status = self._fail.pop(0) if self._fail else None
        if status is not None:
            handler.reply(status, {"status": "error", "message": "injected failure"})
            return
        try:
            payload = json.loads(body)
        except ValueError:
            self._reject(handler, ["the body is not JSON"], None)
            return
        errors = [f"{e.json_path}: {e.message}" for e in jsonschema.Draft202012Validator(self.schema).iter_errors(
            payload)] + self.check(handler, body, payload)
        if errors:
            self._reject(handler, errors, payload)
            return
        with self.lock:
            self.received.append(payload)
        self.accept(handler, payload)

    def check(self, handler, body, payload) -> list[str]:
        return []

    def _reject(self, handler, errors, payload):
        with self.lock:
            self.rejected.append({"errors": errors, "payload": payload})
        self.refuse(handler, errors)

    def refuse(self, handler, errors):
        handler.reply(400, {"errors": errors})

    def accept(self, handler, payload):
        handler.reply(200, {"ok": True})

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"{type(self).__name__}: {len(self.received)} payload(s) within {timeout}s, "
                             f"expected {count}; rejected: {self.rejected}")

    def close(self):
        self.server.close()


class SlackReceiver(_Receiver):
    path = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"
    schema = SLACK_MESSAGE

    def accept(self, handler, payload):
        handler.reply(200, b"ok", content_type="text/plain")

    def refuse(self, handler, errors):
        handler.reply(400, b"invalid_blocks", content_type="text/plain")


class PagerDutyReceiver(_Receiver):
    path = "/v2/enqueue"
    schema = PAGERDUTY_EVENT

    def accept(self, handler, payload):
        handler.reply(202, {"status": "success", "message": "Event processed",
                            "dedup_key": payload.get("dedup_key")})

    def refuse(self, handler, errors):
        handler.reply(400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors})


class WebhookReceiver(_Receiver):
    path = "/hooks/tradeops"
    schema = {"type": "object", "required": ["kind", "incident_id", "dedup_key", "severity", "title", "text",
                                             "sent_at"]}

    def __init__(self, secret: str | None = None):
        self.secret = secret
        super().__init__()

    def check(self, handler, body, payload):
        if self.secret is None:
            return []
        stamp = handler.headers.get("X-Tradeops-Timestamp") or ""
        given = handler.headers.get("X-Tradeops-Signature") or ""
        want = "sha256=" + hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not stamp.isdigit() or abs(time.time() - int(stamp)) > 300 or not hmac.compare_digest(given, want):
            return ["signature"]
        return []

    def refuse(self, handler, errors):
        handler.reply(401 if errors == ["signature"] else 400, {"errors": errors})


class _Collect:
    def __init__(self, receiver):
        self.receiver = receiver

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        with self.receiver.lock:
            if self.receiver._fail:
                self.receiver._fail.pop(0)
                return "451 4.3.0 injected temporary failure"
            msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.receiver.messages.append(msg)
            self.receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class SmtpReceiver:
    """A real SMTP server on 127.0.0.1 (aiosmtpd), optionally requiring AUTH with ``username``/``password``."""

    def __init__(self, username: str | None = None, password: str | None = None):
        self.messages: list = []
        self.envelopes: list = []
        self._fail: list[int] = []
        self.lock = threading.Lock()
        kwargs = {}
        if username is not None:
            def authenticate(server, session, envelope, mechanism, auth_data):
                ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == username \
                    and auth_data.password.decode() == password
                return AuthResult(success=ok)
            kwargs = {"authenticator": authenticate, "auth_require_tls": False, "auth_required": True}
        # aiosmtpd checks its own server by connecting to the port it was given: give it a free one
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()

    def fail_next(self, n: int):
        with self.lock:
            self._fail.extend([451] * n)

    def wait_for(self, count: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        raise AssertionError(f"SMTP: {len(self.messages)} message(s) within {timeout}s, expected {count}")

    def close(self):
        self.controller.stop()
