# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Incident notifications: one message to many channels, concurrently, each within its own deadline.

Channels: email (SMTP, ``smtplib``), a Slack incoming webhook, the PagerDuty Events API v2 (trigger,
acknowledge, resolve under one dedup key per incident) and a generic webhook signed with HMAC-SHA256.
The HTTP channels go through the collection's HTTP backend (``_http``: TLS, client certificates, proxy).

Why not community.general's ``mail``, ``slack`` and ``pagerduty_alert`` modules: the same sender must
run from a plain Python process (the status watcher that keeps sending updates while an incident
waits for approval, after the playbook ended), which cannot call a module; and the Slack and PagerDuty
modules post to their fixed public endpoints, with no URL a test (or a firm's egress proxy) can point
at a local receiver.

A channel that fails is retried on what may pass next time (a refused or dropped connection, a
timeout, HTTP 429 and 5xx, honouring Retry-After within the deadline; SMTP 4xx replies) and then
reported failed; nothing here raises for a channel. Only invalid options raise
:class:`ValidationError`, naming the option's path. No secret (a webhook URL, a routing key, an SMTP
password, a signing secret) appears in a result or a message.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import hashlib
import hmac
import json
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage

from ansible_collections.tradeops.remediation.plugins.module_utils import _http
from ansible_collections.tradeops.remediation.plugins.module_utils._deadline import Deadline, fan_out
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import BackendError, ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._validate import (
    Record,
    compose,
    join,
    missing,
    number,
    require,
)

TYPES = ("email", "slack", "pagerduty", "webhook")
KINDS = ("initial", "status", "escalation", "acknowledge", "resolution")
SEVERITIES = ("P0", "P1", "P2", "P3")
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
PAGERDUTY_SEVERITY = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
PAGERDUTY_ACTION = {"initial": "trigger", "status": "trigger", "escalation": "trigger",
                    "acknowledge": "acknowledge", "resolution": "resolve"}
SLACK_TEXT_MAX = 3000
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3

# The options of one channel: the common ones, each type's own, and the HTTP transport for the HTTP types.
# No defaults here (a list of channels of many types): channel() applies them.
COMMON_ARGSPEC = dict(
    name=dict(type="str", required=True),
    type=dict(type="str", required=True, choices=list(TYPES)),
    kinds=dict(type="list", elements="str", choices=list(KINDS)),
    timeout=dict(type="float"),
    retries=dict(type="int"),
)
EMAIL_ARGSPEC = dict(
    host=dict(type="str"),
    port=dict(type="int"),
    secure=dict(type="str", choices=["never", "starttls", "always"]),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    sender=dict(type="str"),
    to=dict(type="list", elements="str"),
    cc=dict(type="list", elements="str"),
    subject_prefix=dict(type="str"),
)
WEBHOOK_ARGSPEC = dict(
    url=dict(type="str", no_log=True),
    secret=dict(type="str", no_log=True),
    headers=dict(type="dict"),
)
PAGERDUTY_ARGSPEC = dict(
    routing_key=dict(type="str", no_log=True),
    source=dict(type="str"),
    component=dict(type="str"),
    group=dict(type="str"),
)
TYPE_OPTIONS = {
    "email": set(EMAIL_ARGSPEC),
    "slack": {"url"} | set(_http.TRANSPORT_ARGSPEC),
    "pagerduty": {"url"} | set(PAGERDUTY_ARGSPEC) | set(_http.TRANSPORT_ARGSPEC),
    "webhook": set(WEBHOOK_ARGSPEC) | set(_http.TRANSPORT_ARGSPEC),
}
REQUIRED = {"email": ("sender", "to"), "slack": ("url",), "pagerduty": ("routing_key",), "webhook": ("url",)}
SECRET_OPTIONS = ("password", "url", "routing_key", "secret")

CHANNEL_ARGSPEC = compose(COMMON_ARGSPEC, EMAIL_ARGSPEC, WEBHOOK_ARGSPEC, PAGERDUTY_ARGSPEC,
                          _http.argspec("transport"))
MESSAGE_ARGSPEC = dict(
    kind=dict(type="str", required=True, choices=list(KINDS)),
    incident_id=dict(type="str", required=True),
    dedup_key=dict(type="str", required=True, no_log=False),
    severity=dict(type="str", required=True, choices=list(SEVERITIES)),
    title=dict(type="str", required=True),
    text=dict(type="str", required=True),
    fields=dict(type="dict"),
    escalation_level=dict(type="int"),
    links=dict(type="list", elements="dict"),
)


class Channel(Record):
    """One validated channel."""

    __slots__ = ("name", "type", "kinds", "timeout", "retries", "host", "port", "secure", "username", "password",
                 "sender", "to", "cc", "subject_prefix", "url", "secret", "headers", "routing_key", "source",
                 "component", "group", "http")

    def secrets(self):
        values = [getattr(self, o) for o in SECRET_OPTIONS if not missing(getattr(self, o))]
        if self.url:
            values.append(_http.safe_url(self.url))
        return [str(v) for v in values if len(str(v)) >= 4]


class Transient(Exception):
    """May pass on a retry; ``after`` is the server's Retry-After, in seconds."""

    def __init__(self, message, after=None):
        Exception.__init__(self, message)
        self.after = after


class Permanent(Exception):
    """Will not pass on a retry (a refused payload, a bad credential, a server without STARTTLS)."""


def channel(spec, index):
    """Validate ``channels[index]`` into a :class:`Channel`; errors name the option's path."""
    if not isinstance(spec, dict):
        raise ValidationError("channels[%d] must be a dict" % index)
    name = spec.get("name")
    where = "channels[%d]%s: " % (index, " (%s)" % name if not missing(name) else "")
    require(spec, ("name", "type"), where, "every channel")
    kind = spec["type"]
    if kind not in TYPES:
        raise ValidationError("%stype must be one of %s, got %r" % (where, ", ".join(TYPES), kind))
    stray = sorted(o for o in spec if not missing(spec[o]) and o not in COMMON_ARGSPEC and o not in TYPE_OPTIONS[kind])
    if stray:
        raise ValidationError("%s%s does not apply to a %s channel" % (where, ", ".join(stray), kind))
    require(spec, REQUIRED[kind], where, "a %s channel" % kind)
    kinds = spec.get("kinds")
    if kinds is not None:
        bad = [k for k in kinds if k not in KINDS]
        if bad:
            raise ValidationError("%s must be among %s, got %s" % (join(where, "kinds"), ", ".join(KINDS), bad))
    values = dict(
        name=str(name), type=kind, kinds=list(kinds) if kinds is not None else list(KINDS),
        timeout=number(spec.get("timeout"), join(where, "timeout"), above=0, maximum=3600, default=DEFAULT_TIMEOUT),
        retries=int(number(spec.get("retries"), join(where, "retries"), integer=True, minimum=0, maximum=20,
                           default=DEFAULT_RETRIES)))
    if kind == "email":
        for option in ("to", "cc"):
            for i, address in enumerate(spec.get(option) or []):
                if not isinstance(address, str) or "@" not in address or any(c in address for c in "\r\n,"):
                    raise ValidationError("%s[%d] is not one e-mail address: %r" % (join(where, option), i, address))
        if "@" not in str(spec["sender"]) or any(c in str(spec["sender"]) for c in "\r\n"):
            raise ValidationError("%s is not an e-mail address" % join(where, "sender"))
        if not missing(spec.get("password")) and missing(spec.get("username")):
            raise ValidationError("%s needs %s" % (join(where, "password"), join(where, "username")))
        values.update(
            host=spec.get("host") or "localhost", secure=spec.get("secure") or "starttls",
            port=int(number(spec.get("port"), join(where, "port"), integer=True, minimum=1, maximum=65535,
                            default=465 if spec.get("secure") == "always" else 25)),
            username=spec.get("username"), password=spec.get("password"), sender=str(spec["sender"]),
            to=list(spec["to"]), cc=list(spec.get("cc") or []),
            subject_prefix="[tradeops]" if spec.get("subject_prefix") is None else spec["subject_prefix"])
        return Channel(**values)
    url = spec.get("url") if kind != "pagerduty" else (spec.get("url") or PAGERDUTY_URL)
    _http.check_url(url, join(where, "url"))
    values.update(url=url, http=_http.http_options(spec, where, headers=False))
    if kind == "webhook":
        headers = spec.get("headers") or {}
        if not isinstance(headers, dict):
            raise ValidationError("%s must be a dict of header name to value" % join(where, "headers"))
        values.update(secret=spec.get("secret"), headers=dict((str(k), str(v)) for k, v in headers.items()))
    if kind == "pagerduty":
        key = str(spec["routing_key"])
        if len(key) != 32:
            raise ValidationError("%s must be the 32-character integration key of a PagerDuty Events API v2 "
                                  "service" % join(where, "routing_key"))
        values.update(routing_key=key, source=spec.get("source") or "tradeops", component=spec.get("component"),
                      group=spec.get("group"))
    return Channel(**values)


def channels(specs):
    """Every channel validated; two channels of one name are refused (results are reported by name)."""
    out = [channel(spec, i) for i, spec in enumerate(specs or [])]
    seen = set()
    for i, ch in enumerate(out):
        if ch.name in seen:
            raise ValidationError("channels[%d]: name %r is used by another channel" % (i, ch.name))
        seen.add(ch.name)
    return out


def message(spec):
    """Validate the message (its kind, severity and one-line title)."""
    if not isinstance(spec, dict):
        raise ValidationError("notice must be a dict")
    require(spec, ("kind", "incident_id", "dedup_key", "severity", "title", "text"), "notice", "every notice")
    if spec["kind"] not in KINDS:
        raise ValidationError("notice.kind must be one of %s, got %r" % (", ".join(KINDS), spec["kind"]))
    if spec["severity"] not in SEVERITIES:
        raise ValidationError("notice.severity must be one of %s, got %r" % (", ".join(SEVERITIES), spec["severity"]))
    if len(str(spec["dedup_key"])) > 255:
        raise ValidationError("notice.dedup_key must be at most 255 characters")
    out = dict(spec)
    out["title"] = " ".join(str(spec["title"]).split())
    out["fields"] = dict((str(k), str(v)) for k, v in (spec.get("fields") or {}).items())
    out["links"] = [dict(link) for link in spec.get("links") or [] if isinstance(link, dict) and link.get("href")]
    return out


# --------------------------------------------------------------------------------------------
# The senders: one per type, each raising Transient or Permanent
# --------------------------------------------------------------------------------------------
def _now():
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)


def _send_email(ch, msg, deadline):
    mail = EmailMessage()
    mail["From"] = ch.sender
    mail["To"] = ", ".join(ch.to)
    if ch.cc:
        mail["Cc"] = ", ".join(ch.cc)
    mail["Subject"] = " ".join(x for x in (ch.subject_prefix, "[%s]" % msg["severity"], msg["title"]) if x)[:900]
    mail["X-Tradeops-Incident"] = msg["incident_id"]
    mail["X-Tradeops-Kind"] = msg["kind"]
    body = msg["text"]
    if msg["fields"]:
        body += "\n\n" + "\n".join("%s: %s" % (k, v) for k, v in sorted(msg["fields"].items()))
    mail.set_content(body)
    timeout = deadline.call_timeout()
    context = ssl.create_default_context()
    try:
        if ch.secure == "always":
            server = smtplib.SMTP_SSL(ch.host, ch.port, timeout=timeout, context=context)
        else:
            server = smtplib.SMTP(ch.host, ch.port, timeout=timeout)
        try:
            server.ehlo()
            if ch.secure == "starttls":
                if not server.has_extn("starttls"):
                    raise Permanent("the SMTP server %s:%d offers no STARTTLS; not sending in clear (secure: never "
                                    "allows it)" % (ch.host, ch.port))
                server.starttls(context=context)
                server.ehlo()
            if ch.username:
                server.login(ch.username, ch.password or "")
            refused = server.send_message(mail)
        finally:
            try:
                server.quit()
            except (smtplib.SMTPException, OSError):
                server.close()
    except smtplib.SMTPAuthenticationError as err:
        raise Permanent("SMTP %s: authentication refused (%d)" % (ch.host, err.smtp_code))
    except smtplib.SMTPRecipientsRefused as err:
        codes = sorted(set(reply[0] for reply in err.recipients.values()))
        raise (Transient if all(400 <= c < 500 for c in codes) else Permanent)(
            "SMTP %s refused every recipient (%s)" % (ch.host, ", ".join(map(str, codes))))
    except smtplib.SMTPResponseException as err:
        text = "SMTP %s: %d %s" % (ch.host, err.smtp_code, _short(err.smtp_error))
        raise (Transient if 400 <= err.smtp_code < 500 else Permanent)(text)
    except (smtplib.SMTPException, socket.timeout, TimeoutError, OSError) as err:
        raise Transient("SMTP %s:%d: %s" % (ch.host, ch.port, err or type(err).__name__))
    if refused:
        raise Permanent("SMTP %s refused %s" % (ch.host, ", ".join(sorted(refused))))
    return "250"


def _short(value):
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return " ".join(str(value).split())[:200]


def _post(ch, body, deadline, headers=None, ok=(200, 201, 202, 204)):
    raw = json.dumps(body, sort_keys=True).encode("utf-8")
    sent_headers = {"Content-Type": "application/json"}
    sent_headers.update(headers(raw) if callable(headers) else (headers or {}))
    try:
        resp = _http.client(ch.http).request(ch.url, "POST", raw, headers=sent_headers, deadline=deadline)
    except BackendError as err:
        raise Transient(str(err).replace(ch.url, "the %s URL" % ch.type).replace(
            _http.safe_url(ch.url), "the %s URL" % ch.type))
    if resp.status in ok:
        return str(resp.status)
    what = "HTTP %d from the %s endpoint: %s" % (resp.status, ch.type, resp.text(200))
    if resp.status == 429 or resp.status >= 500:
        raise Transient(what, _retry_after(resp))
    raise Permanent(what)


def _retry_after(resp):
    try:
        return float(json.loads(resp.body or b"{}").get("retry_after"))
    except (ValueError, TypeError, AttributeError):
        return None


def _send_slack(ch, msg, deadline):
    text = msg["text"]
    if len(text) > SLACK_TEXT_MAX - 10:
        text = text[:SLACK_TEXT_MAX - 12] + "\n..."
    blocks = [{"type": "header", "text": {"type": "plain_text", "text": msg["title"][:150]}},
              {"type": "section", "text": {"type": "mrkdwn", "text": "```%s```" % text.replace("```", "'''")}}]
    fields = [{"type": "mrkdwn", "text": ("*%s*\n%s" % (k.replace("_", " "), v))[:2000]}
              for k, v in sorted(msg["fields"].items())][:10]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    return _post(ch, {"text": msg["title"], "blocks": blocks}, deadline)


def _send_pagerduty(ch, msg, deadline):
    action = PAGERDUTY_ACTION[msg["kind"]]
    body = {"routing_key": ch.routing_key, "event_action": action, "dedup_key": msg["dedup_key"]}
    if action == "trigger":
        details = dict(msg["fields"])
        details["kind"] = msg["kind"]
        if msg.get("escalation_level"):
            details["escalation_level"] = msg["escalation_level"]
        payload = {"summary": msg["title"][:1024], "source": ch.source, "severity": PAGERDUTY_SEVERITY[msg["severity"]],
                   "timestamp": _now(), "class": msg["kind"], "custom_details": details}
        for option in ("component", "group"):
            if getattr(ch, option):
                payload[option] = getattr(ch, option)
        body["payload"] = payload
        if msg["links"]:
            body["links"] = [{"href": link["href"], "text": link.get("text") or link["href"]} for link in msg["links"]]
    return _post(ch, body, deadline)


def _send_webhook(ch, msg, deadline):
    body = dict(msg)
    body["sent_at"] = _now()

    def headers(raw):
        out = dict(ch.headers or {})
        if ch.secret:
            stamp = str(int(time.time()))
            digest = hmac.new(ch.secret.encode("utf-8"), stamp.encode("ascii") + b"." + raw, hashlib.sha256)
            out["X-Tradeops-Timestamp"] = stamp
            out["X-Tradeops-Signature"] = "sha256=" + digest.hexdigest()
        return out
    return _post(ch, body, deadline, headers)


SENDERS = {"email": _send_email, "slack": _send_slack, "pagerduty": _send_pagerduty, "webhook": _send_webhook}


def scrub(text, secrets):
    text = str(text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, "********")
    return text


def deliver(ch, msg, deadline, sleep=time.sleep):
    """Send to one channel with its retries, within ``deadline``; a result dict, never an exception."""
    started = time.monotonic()
    result = {"name": ch.name, "type": ch.type, "kind": msg["kind"], "status": "failed", "attempts": 0,
              "elapsed_ms": 0, "response": None, "error": None, "sent_at": None}
    if msg["kind"] not in ch.kinds:
        result.update(status="skipped", error="not subscribed to %s notices (kinds)" % msg["kind"])
        return result
    delay = 0.5
    for attempt in range(ch.retries + 1):
        result["attempts"] = attempt + 1
        try:
            result["response"] = SENDERS[ch.type](ch, msg, deadline)
            result.update(status="sent", error=None, sent_at=_now())
            break
        except Permanent as err:
            result["error"] = str(err)
            break
        except (Transient, BackendError) as err:  # BackendError: the deadline ran out inside a call
            result["error"] = str(err)
            wait = getattr(err, "after", None) or delay
            delay = min(delay * 2, 8.0)
            if attempt == ch.retries or deadline.remaining() <= wait:
                break
            sleep(wait)
    result["elapsed_ms"] = int((time.monotonic() - started) * 1000)
    if result["error"]:
        result["error"] = scrub(result["error"], ch.secrets())[:500]
    return result


def send(message_spec, channel_specs, concurrency=8, check_mode=False):
    """Send one message to every channel at once. Options are validated here (ValidationError); channel
    failures are results. Returns ``{notifications, sent, not_sent, changed, warnings}``."""
    msg = message(message_spec)
    chans = [c if isinstance(c, Channel) else None for c in channel_specs or []]
    if not all(chans):
        chans = channels(channel_specs)
    concurrency = int(number(concurrency, "concurrency", integer=True, minimum=1, maximum=64, default=8))
    if check_mode:
        results = [{"name": c.name, "type": c.type, "kind": msg["kind"],
                    "status": "would_send" if msg["kind"] in c.kinds else "skipped", "attempts": 0, "elapsed_ms": 0,
                    "response": None, "error": None, "sent_at": None} for c in chans]
    else:
        longest = max([c.timeout for c in chans] + [1.0])

        def work(ch, _deadline):
            return deliver(ch, msg, Deadline(ch.timeout))

        def on_error(ch, elapsed, exc):
            return {"name": ch.name, "type": ch.type, "kind": msg["kind"], "status": "failed", "attempts": 1,
                    "elapsed_ms": int((elapsed or 0) * 1000), "response": None, "sent_at": None,
                    "error": scrub("no answer within its timeout" if exc is None else "%s: %s" % (
                        type(exc).__name__, exc), ch.secrets())[:500]}
        results = fan_out(chans, work, concurrency, longest, on_error) if chans else []
    sent = [r["name"] for r in results if r["status"] == "sent"]
    not_sent = [r["name"] for r in results if r["status"] == "failed"]
    warnings = ["notify: channel %s (%s) failed after %d attempt(s): %s"
                % (r["name"], r["type"], r["attempts"], r["error"]) for r in results if r["status"] == "failed"]
    # not "failed": that key would fail the task, and a channel never does
    return {"notifications": results, "sent": sent, "not_sent": not_sent, "changed": bool(sent),
            "warnings": warnings}
