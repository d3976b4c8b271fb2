"""The notification channels (module_utils/_notify.py) against real local receivers: an SMTP server and HTTP
receivers that check each payload against the service's documented schema."""

from __future__ import annotations

import json
import time
import warnings

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _notify
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError

from tests.helpers.http import hung_listener
from tests.helpers.modules import run_module
from tests.helpers.receivers import PagerDutyReceiver, SlackReceiver, SmtpReceiver, WebhookReceiver

ROUTING_KEY = "R0UT1NGKEYR0UT1NGKEYR0UT1NGKEY12"
SMTP_PASSWORD = "smtp-pw-5f3c9e"
HOOK_SECRET = "hook-secret-8c1d2a"


def msg(kind="initial", severity="P0", **extra):
    return {"kind": kind, "incident_id": "INC-42", "dedup_key": "tradeops-INC-42", "severity": severity,
            "title": "INCIDENT ALERT - P0 (SEV-1) INC-42: P0 outage", "text": "PRIORITY: CRITICAL (P0)\nIMPACT: 3 "
            "engine(s) halted and verified", "fields": {"impact": "3 engine(s) halted", "next_steps": "repair"},
            **extra}


@pytest.fixture
def receivers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # aiosmtpd: AUTH without TLS, on the loopback
        smtp = SmtpReceiver("tradeops", SMTP_PASSWORD)
    slack, pd, hook = SlackReceiver(), PagerDutyReceiver(), WebhookReceiver(HOOK_SECRET)
    yield {"smtp": smtp, "slack": slack, "pagerduty": pd, "webhook": hook}
    for r in (smtp, slack, pd, hook):
        r.close()


def channels(r, **override):
    chans = [
        {"name": "mail", "type": "email", "host": "127.0.0.1", "port": r["smtp"].port, "secure": "never",
         "username": "tradeops", "password": SMTP_PASSWORD, "sender": "tradeops@firm.test",
         "to": ["oncall@firm.test"], "timeout": 5},
        {"name": "slack", "type": "slack", "url": r["slack"].url, "timeout": 5},
        {"name": "pd", "type": "pagerduty", "url": r["pagerduty"].url, "routing_key": ROUTING_KEY, "timeout": 5},
        {"name": "hook", "type": "webhook", "url": r["webhook"].url, "secret": HOOK_SECRET, "timeout": 5},
    ]
    for c in chans:
        c.update(override.get(c["name"], {}))
    return chans


def test_one_notice_reaches_every_channel_in_its_documented_format(receivers):
    out = _notify.send(msg(), channels(receivers))
    assert out["sent"] == ["mail", "slack", "pd", "hook"] and out["not_sent"] == [] and out["changed"]
    mail = receivers["smtp"].wait_for(1)[0]
    assert mail["Subject"] == "[tradeops] [P0] INCIDENT ALERT - P0 (SEV-1) INC-42: P0 outage"
    assert mail["From"] == "tradeops@firm.test" and mail["To"] == "oncall@firm.test"
    assert "IMPACT: 3 engine(s) halted and verified" in mail.get_content()
    slack = receivers["slack"].wait_for(1)[0]
    assert slack["text"].startswith("INCIDENT ALERT") and slack["blocks"][0]["type"] == "header"
    event = receivers["pagerduty"].wait_for(1)[0]
    assert (event["event_action"], event["dedup_key"], event["payload"]["severity"]) == (
        "trigger", "tradeops-INC-42", "critical")
    assert event["payload"]["custom_details"]["impact"] == "3 engine(s) halted"
    hook = receivers["webhook"].wait_for(1)[0]
    assert hook["kind"] == "initial" and hook["incident_id"] == "INC-42"
    for r in receivers.values():
        assert not getattr(r, "rejected", []), r.rejected


def test_pagerduty_triggers_then_resolves_the_same_alert_and_maps_severity(receivers):
    chans = [c for c in channels(receivers) if c["name"] == "pd"]
    _notify.send(msg("initial", "P1"), chans)
    _notify.send(msg("acknowledge", "P1"), chans)
    _notify.send(msg("resolution", "P1"), chans)
    events = receivers["pagerduty"].wait_for(3)
    assert [e["event_action"] for e in events] == ["trigger", "acknowledge", "resolve"]
    assert {e["dedup_key"] for e in events} == {"tradeops-INC-42"}
    assert events[0]["payload"]["severity"] == "error" and "payload" not in events[2]


def test_the_receivers_refuse_a_malformed_payload(receivers):
    """The checks are real: a payload outside the documented schema is refused, and reported failed."""
    import urllib.error
    import urllib.request

    bad = json.dumps({"routing_key": "short", "event_action": "trigger"}).encode()
    req = urllib.request.Request(receivers["pagerduty"].url, data=bad, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 400 and json.loads(err.value.read())["status"] == "invalid event"
    assert receivers["pagerduty"].received == [] and len(receivers["pagerduty"].rejected) == 1
    long_header = dict(msg(), title="x" * 200)
    out = _notify.send(long_header, [c for c in channels(receivers) if c["name"] == "slack"])
    assert out["sent"] == ["slack"]  # the sender keeps Slack's 150-character header limit


def test_a_wrong_webhook_secret_is_refused_and_not_retried(receivers):
    out = _notify.send(msg(), channels(receivers, hook={"secret": "not-the-secret"})[3:])
    result = out["notifications"][0]
    assert (result["status"], result["attempts"]) == ("failed", 1) and "HTTP 401" in result["error"]
    assert receivers["webhook"].received == [] and receivers["webhook"].rejected[0]["errors"] == ["signature"]


def test_transient_failures_are_retried_until_they_pass(receivers):
    receivers["slack"].fail_next(2, 503)
    receivers["pagerduty"].fail_next(1, 429)
    receivers["smtp"].fail_next(1)
    out = _notify.send(msg(), channels(receivers)[:3])
    by = {r["name"]: r for r in out["notifications"]}
    assert out["sent"] == ["mail", "slack", "pd"]
    assert (by["slack"]["attempts"], by["pd"]["attempts"], by["mail"]["attempts"]) == (3, 2, 2)


def test_a_dead_or_hung_channel_fails_within_its_timeout_and_the_others_are_sent(receivers):
    hung = hung_listener()
    dead_port = hung_listener()
    dead = dead_port.getsockname()[1]
    dead_port.close()
    try:
        chans = channels(receivers) + [
            {"name": "dead", "type": "webhook", "url": f"http://127.0.0.1:{dead}/x", "timeout": 1.5, "retries": 10},
            {"name": "hung", "type": "slack", "url": f"http://127.0.0.1:{hung.getsockname()[1]}/s", "timeout": 1.5},
        ]
        started = time.monotonic()
        out = _notify.send(msg(), chans)
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert out["sent"] == ["mail", "slack", "pd", "hook"] and out["not_sent"] == ["dead", "hung"]
    assert elapsed < 1.5 + 1.0, elapsed
    by = {r["name"]: r for r in out["notifications"]}
    assert by["dead"]["attempts"] > 1 and "Connection refused" in by["dead"]["error"]
    assert "no answer" in by["hung"]["error"] and len(out["warnings"]) == 2


def test_starttls_is_required_by_default_and_nothing_goes_in_clear(receivers):
    chans = channels(receivers, mail={"secure": "starttls"})[:1]
    out = _notify.send(msg(), chans)
    result = out["notifications"][0]
    assert result["status"] == "failed" and "offers no STARTTLS" in result["error"] and result["attempts"] == 1
    assert receivers["smtp"].messages == []


def test_no_secret_appears_in_any_result(receivers):
    wrong = channels(receivers, mail={"password": SMTP_PASSWORD + "-wrong"})
    receivers["slack"].close()  # the Slack URL (its path is the secret) now refuses connections
    out = _notify.send(msg(), wrong)
    text = json.dumps(out)
    assert set(out["not_sent"]) == {"mail", "slack"}, out
    for secret in (SMTP_PASSWORD, ROUTING_KEY, HOOK_SECRET, "XXXXXXXXXXXXXXXXXXXXXXXX", receivers["slack"].url):
        assert secret not in text


def test_check_mode_sends_nothing(receivers):
    out = _notify.send(msg(), channels(receivers), check_mode=True)
    assert {r["status"] for r in out["notifications"]} == {"would_send"} and not out["changed"]
    assert receivers["smtp"].messages == [] and receivers["slack"].requests == 0
    assert receivers["pagerduty"].requests == 0 and receivers["webhook"].requests == 0


def test_a_channel_not_subscribed_to_a_kind_skips_it(receivers):
    chans = channels(receivers, pd={"kinds": ["initial", "resolution"]})
    out = _notify.send(msg("status"), chans)
    by = {r["name"]: r["status"] for r in out["notifications"]}
    assert by == {"mail": "sent", "slack": "sent", "pd": "skipped", "hook": "sent"}
    assert receivers["pagerduty"].requests == 0


@pytest.mark.parametrize("change, error", [
    ({"routing_key": "short"}, r"channels\[2\] \(pd\): routing_key must be the 32-character"),
    ({"routing_key": None}, r"channels\[2\] \(pd\): routing_key is required for a pagerduty channel"),
    ({"sender": "x"}, r"channels\[2\] \(pd\): sender does not apply to a pagerduty channel"),
    ({"timeout": float("nan")}, r"channels\[2\] \(pd\): timeout must be a finite number"),
    ({"url": "ftp://x"}, r"channels\[2\] \(pd\): url must start with http"),
])
def test_bad_options_name_the_channel_and_option(receivers, change, error):
    with pytest.raises(ValidationError, match=error):
        _notify.send(msg(), channels(receivers, pd=change))


def test_the_module_reports_per_channel_and_never_fails_for_a_channel(receivers, capsys):
    from ansible_collections.tradeops.remediation.plugins.modules import notify

    receivers["webhook"].close()
    result = run_module(notify, capsys, {"notice": msg(), "channels": channels(receivers)})
    assert not result.get("failed"), result
    assert result["sent"] == ["mail", "slack", "pd"] and result["not_sent"] == ["hook"]
    assert "notify: channel hook (webhook) failed after" in result["_raw"]
    assert SMTP_PASSWORD not in json.dumps(result) and ROUTING_KEY not in json.dumps(result)
    bad = run_module(notify, capsys, {"notice": msg(), "channels": channels(receivers, pd={"routing_key": "short"})})
    assert bad["failed"] and bad["msg"].startswith("notify: channels[2] (pd): routing_key") and \
        "Nothing was sent" in bad["msg"]
