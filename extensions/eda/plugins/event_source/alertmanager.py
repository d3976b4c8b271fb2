"""tradeops.remediation.alertmanager: an Event-Driven Ansible source for Alertmanager's webhook.

It listens for Alertmanager's ``webhook_configs`` POSTs and puts one event per alert on the rulebook's queue:

    {"alert": {"fingerprint", "status" (firing|resolved), "labels", "annotations", "startsAt", "endsAt",
               "generatorURL"},
     "alertmanager": {"receiver", "status", "groupKey", "externalURL", "groupLabels"},
     "tradeops": {"received_at": <epoch seconds>, "source": "tradeops.remediation.alertmanager"}}

Arguments (the source's ``args`` in the rulebook):

    host                 address to listen on (default 127.0.0.1)
    port                 port to listen on (required)
    path                 the webhook path (default /alerts)
    token / token_file   the bearer token Alertmanager sends (``http_config.authorization``); a file is re-read
                         when it changes, so a rotated token needs no restart
    username / password  or HTTP basic auth (``http_config.basic_auth``)
    max_body_bytes       a larger body is refused with 413 (default 1 MiB)
    journal              a JSON-lines file to which every accepted alert is appended (0600), with the time it
                         was received: the record of what arrived, mapped or not
    allow_unauthenticated  false (default): the source refuses to start without a token or basic auth

Every request that is not an authenticated, well-formed webhook is refused (401, 400, 405, 413) and counted;
``GET /metrics`` (no auth, counts only) serves the counters in Prometheus' text format. Strings in an alert
are made inert for Jinja (``{{``, ``{%`` and ``{#`` get a space inside): a label is data, never a template, in
the playbook it reaches.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import os
import time
from collections import Counter
from typing import Any

from aiohttp import web

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PATH = "/alerts"
DEFAULT_MAX_BODY = 1024 * 1024
SOURCE = "tradeops.remediation.alertmanager"
ALERT_KEYS = ("fingerprint", "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL")
GROUP_KEYS = ("receiver", "status", "groupKey", "externalURL", "groupLabels")
STATUSES = ("firing", "resolved")

log = logging.getLogger(__name__)


class SourceConfigError(ValueError):
    """The source's arguments are unusable (the message names the argument)."""


def inert(value: Any) -> Any:
    """``value`` with every string made inert for Jinja, recursively (keys too)."""
    if isinstance(value, str):
        return value.replace("{{", "{ {").replace("{%", "{ %").replace("{#", "{ #")
    if isinstance(value, dict):
        return {inert(k): inert(v) for k, v in value.items()}
    if isinstance(value, list):
        return [inert(v) for v in value]
    return value


def alert_events(payload: Any, received_at: float) -> list[dict[str, Any]]:
    """One event per alert of an Alertmanager webhook payload; ValueError if it is not one."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError("not an Alertmanager webhook payload: no 'alerts' list")
    group = {k: payload.get(k) for k in GROUP_KEYS}
    events = []
    for raw in payload["alerts"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("labels"), dict):
            raise ValueError("an alert without a labels mapping")
        if raw.get("status") not in STATUSES:
            raise ValueError(f"an alert with status {raw.get('status')!r} (expected firing or resolved)")
        if not raw.get("fingerprint"):
            raise ValueError("an alert without a fingerprint")
        alert = {k: raw.get(k) for k in ALERT_KEYS}
        alert["labels"] = dict(raw["labels"])
        alert["annotations"] = dict(raw.get("annotations") or {})
        events.append(inert({"alert": alert, "alertmanager": group,
                             "tradeops": {"received_at": received_at, "source": SOURCE}}))
    return events


class Auth:
    """Checks a request's Authorization header against a bearer token (or a token file) or basic auth."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.token = args.get("token") or None
        self.token_file = args.get("token_file") or None
        self.username = args.get("username") or None
        self.password = args.get("password") or None
        self._file_token: tuple[float, str] | None = None
        if bool(self.username) != bool(self.password):
            raise SourceConfigError("give both username and password for basic auth, or neither")
        if self.token_file and not os.path.isfile(self.token_file):
            raise SourceConfigError(f"token_file {self.token_file} does not exist")
        self.required = bool(self.token or self.token_file or self.username)
        if not self.required and not args.get("allow_unauthenticated"):
            raise SourceConfigError("set token, token_file or username/password (the webhook must be "
                                    "authenticated); allow_unauthenticated: true only for a trusted local test")

    def _bearer(self) -> str | None:
        if self.token:
            return str(self.token)
        if not self.token_file:
            return None
        mtime = os.stat(self.token_file).st_mtime
        if self._file_token is None or self._file_token[0] != mtime:
            with open(self.token_file, encoding="utf-8") as fh:
                self._file_token = (mtime, fh.read().strip())
        return self._file_token[1]

    def check(self, header: str | None) -> bool:
        if not self.required:
            return True
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            try:
                want = self._bearer()
            except OSError:
                return False
            return bool(want) and hmac.compare_digest(value.strip().encode(), want.encode())
        if scheme == "basic" and self.username:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), str(self.username).encode())
                    & hmac.compare_digest(password.encode(), str(self.password).encode()))
        return False


class Webhook:
    """The aiohttp application: POST <path> with auth -> events on the queue; GET /metrics -> counters."""

    def __init__(self, queue: asyncio.Queue, args: dict[str, Any]) -> None:
        self.queue = queue
        self.auth = Auth(args)
        self.path = str(args.get("path") or DEFAULT_PATH)
        self.max_body = int(args.get("max_body_bytes") or DEFAULT_MAX_BODY)
        if self.max_body < 1024:
            raise SourceConfigError(f"max_body_bytes must be at least 1024, got {self.max_body}")
        self.journal = args.get("journal") or None
        self.counts: Counter[str] = Counter()
        self.alerts: Counter[str] = Counter()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", self.path, self.receive)
        app.router.add_get("/metrics", self.metrics)
        return app

    def _refuse(self, reason: str, status: int, text: str) -> web.Response:
        self.counts[reason] += 1
        log.warning("refused a webhook request: %s (%d)", text, status)
        return web.Response(status=status, text=text + "\n")

    async def receive(self, request: web.Request) -> web.Response:
        if request.method != "POST":
            return self._refuse("method", 405, "POST only")
        if not self.auth.check(request.headers.get("Authorization")):
            return self._refuse("unauthorized", 401, "unauthorized")
        if request.content_length is not None and request.content_length > self.max_body:
            return self._refuse("too_large", 413, f"body larger than {self.max_body} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse("too_large", 413, f"body larger than {self.max_body} bytes")
        received_at = time.time()
        try:
            events = alert_events(json.loads(body.decode("utf-8")), received_at)
        except (UnicodeDecodeError, ValueError) as exc:
            return self._refuse("bad_request", 400, f"bad payload: {exc}")
        self.counts["accepted"] += 1
        self._write_journal(events)
        for event in events:
            self.alerts[event["alert"]["status"]] += 1
            await self.queue.put(event)
        return web.json_response({"accepted": len(events)})

    def _write_journal(self, events: list[dict[str, Any]]) -> None:
        if not self.journal:
            return
        lines = "".join(json.dumps({"received_at": e["tradeops"]["received_at"],
                                    "fingerprint": e["alert"]["fingerprint"], "status": e["alert"]["status"],
                                    "alertname": e["alert"]["labels"].get("alertname"),
                                    "labels": e["alert"]["labels"], "startsAt": e["alert"]["startsAt"]},
                                   sort_keys=True) + "\n" for e in events)
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            fh.write(lines)

    async def metrics(self, request: web.Request) -> web.Response:
        lines = ["# HELP tradeops_eda_webhook_requests_total Webhook requests, by result.",
                 "# TYPE tradeops_eda_webhook_requests_total counter"]
        for result in ("accepted", "unauthorized", "bad_request", "too_large", "method"):
            lines.append(f'tradeops_eda_webhook_requests_total{{result="{result}"}} {self.counts[result]}')
        lines += ["# HELP tradeops_eda_alerts_total Alerts put on the rulebook's queue, by status.",
                  "# TYPE tradeops_eda_alerts_total counter"]
        for status in STATUSES:
            lines.append(f'tradeops_eda_alerts_total{{status="{status}"}} {self.alerts[status]}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def main(queue: asyncio.Queue, args: dict[str, Any]) -> None:
    """The source's entry point (ansible-rulebook calls it): serve until cancelled."""
    if not args.get("port"):
        raise SourceConfigError("port is required")
    hook = Webhook(queue, args)
    runner = web.AppRunner(hook.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, str(args.get("host") or DEFAULT_HOST), int(args["port"]))
    await site.start()
    log.info("listening for Alertmanager on %s:%s%s", args.get("host") or DEFAULT_HOST, args["port"], hook.path)
    try:
        await asyncio.Future()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    # Try it by hand: python alertmanager.py PORT TOKEN, then POST an Alertmanager payload.
    import sys

    class _Print(asyncio.Queue):
        async def put(self, item: Any) -> None:
            print(json.dumps(item), flush=True)

    asyncio.run(main(_Print(), {"port": int(sys.argv[1]), "token": sys.argv[2]}))
