"""The P0 drill tells people: the initial alert after the halt, status updates while the incident is open (the
approval wait included), the resolution notice last, to every channel's real local receiver; its record validates
and its post-mortem draft's Mermaid timeline parses."""

from __future__ import annotations

import io
import json
import time
import warnings

import pytest

from tests.helpers.mermaid import blocks, parse
from tests.helpers.receivers import PagerDutyReceiver, SlackReceiver, SmtpReceiver, WebhookReceiver
from tests.helpers.records import validate
from tradeops.drill import run_p0_drill

pytestmark = pytest.mark.integration

ROUTING_KEY = "DR1LLR0UT1NGKEYDR1LLR0UT1NGKEY00"
SMTP_PASSWORD = "drill-smtp-pw-71c2"
HOOK_SECRET = "drill-hook-secret-0e9f"


@pytest.fixture
def receivers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # aiosmtpd: AUTH without TLS, on the loopback
        smtp = SmtpReceiver("tradeops", SMTP_PASSWORD)
    out = {"email": smtp, "slack": SlackReceiver(), "pagerduty": PagerDutyReceiver(),
           "webhook": WebhookReceiver(HOOK_SECRET)}
    yield out
    for r in out.values():
        r.close()


def in_order(kinds):
    """initial first, at least one status update, the resolution notice last and once."""
    assert kinds[0] == "initial" and kinds[-1] == "resolution", kinds
    assert kinds.count("initial") == 1 and kinds.count("resolution") == 1, kinds
    assert "status" in kinds[1:-1] and set(kinds[1:-1]) <= {"status"}, kinds


def test_the_drill_notifies_every_channel_in_order_and_writes_a_valid_record(receivers, tmp_path):
    r = receivers
    channels = [
        {"name": "oncall-mail", "type": "email", "host": "127.0.0.1", "port": r["email"].port, "secure": "never",
         "username": "tradeops", "password": SMTP_PASSWORD, "sender": "tradeops@firm.test",
         "to": ["trading-oncall@firm.test"]},
        {"name": "trading-critical", "type": "slack", "url": r["slack"].url},
        {"name": "pagerduty", "type": "pagerduty", "url": r["pagerduty"].url, "routing_key": ROUTING_KEY},
        {"name": "audit-hook", "type": "webhook", "url": r["webhook"].url, "secret": HOOK_SECRET},
    ]
    out = io.StringIO()
    outcome = run_p0_drill(engines=4, faults={"engine-002": ["crash"]}, root=None, lab_dir=tmp_path / "lab",
                           reports_dir=tmp_path / "reports", out=out,
                           extra_vars={"notify_channels": channels, "notify_status_every": 2,
                                       "notify_escalate_after": 0, "halt_trading_quiesce_seconds": 1,
                                       "health_gate_stable_for": 1})
    assert outcome.ok, outcome.problems + [out.getvalue()[-4000:]]
    incident = outcome.report["incident"]
    record_path = tmp_path / "reports" / f"{incident}.json"
    record = validate(json.loads(record_path.read_text()))
    assert record["verdict"]["text"] == "RESOLVED: trading resumed, verified" and record["closed_at"]
    assert len(record["runs"]) == 2  # the p0 run and the approved resume run, one incident

    # the status watcher stopped before the resolution notice went out, and sends nothing more
    pid_file = record_path.with_suffix(".watch.pid")
    deadline = time.monotonic() + 10
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_file.exists()
    counts = {name: len(getattr(rec, "received", None) or rec.messages) for name, rec in r.items()}
    window = time.monotonic() + 2 * 2 + 0.5  # two more cadences
    while time.monotonic() < window:
        assert counts == {name: len(getattr(rec, "received", None) or rec.messages) for name, rec in r.items()}
        time.sleep(0.2)

    # every channel got the same story, in order, and nothing it refused
    in_order([p["kind"] for p in r["webhook"].received])
    events = r["pagerduty"].received
    assert events[0]["event_action"] == "trigger" and events[-1]["event_action"] == "resolve"
    assert {e["event_action"] for e in events[1:-1]} == {"trigger"}
    assert {e["dedup_key"] for e in events} == {f"tradeops-{incident}"}
    assert {e["payload"]["severity"] for e in events if "payload" in e} == {"critical"}
    titles = [p["text"] for p in r["slack"].received]
    assert titles[0].startswith("INCIDENT ALERT - P0 (SEV-1)") and titles[-1].startswith("INCIDENT RESOLVED - P0")
    assert all(t.startswith("INCIDENT UPDATE - P0") for t in titles[1:-1]) and len(titles) >= 3
    subjects = [m["Subject"] for m in r["email"].messages]
    assert subjects[0].startswith("[tradeops] [P0] INCIDENT ALERT") and "INCIDENT RESOLVED" in subjects[-1]
    resolution = r["email"].messages[-1].get_content()
    assert "RESOLVED: trading resumed, verified" in resolution and "Duration:" in resolution
    assert all(not getattr(rec, "rejected", []) for rec in r.values())
    # the initial alert went out after the verified halt, never before it
    contained = next(h for h in record["halts"] if h["phase"] == "contain")
    first = min(n["at"] for n in record["notifications"] if n["kind"] == "initial")
    assert first > contained["at"]
    assert {(n["kind"], n["status"]) for n in record["notifications"]} >= {
        ("initial", "sent"), ("status", "sent"), ("resolution", "sent")}

    # the post-mortem draft renders: Mermaid reads its timeline, halt and resume marked
    draft = record_path.with_suffix(".md").read_text()
    gantt = parse(blocks(draft)[0])
    assert {t["task"] for t in gantt["tasks"] if t["milestone"]} == {"halt verified", "trading resumed"}
    assert "contain" in [t["task"] for t in gantt["tasks"]]
    # and no secret anywhere in what the drill left
    for path in (tmp_path / "reports").rglob("*"):
        if path.is_file() and not path.name.endswith(".tar.gz"):
            data = path.read_bytes()
            for secret in (SMTP_PASSWORD, ROUTING_KEY, HOOK_SECRET, r["slack"].path):
                assert secret.encode() not in data, (path, secret)
