"""The status watcher of an open incident (plugin_utils/incident_watch.py): status updates on the cadence, escalation
after the time without progress, and the stop before the resolution notice; against real local receivers."""

from __future__ import annotations

import json
import threading
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.module_utils import _notify
from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident, incident_watch

from tests.helpers.receivers import PagerDutyReceiver, WebhookReceiver
from tests.integration.lab.helpers import wait_until

ROUTING_KEY = "W4TCHERR0UT1NGKEYW4TCHERR0UT1NG0"


@pytest.fixture
def hooks():
    primary, lead, cto = WebhookReceiver(), WebhookReceiver(), PagerDutyReceiver()
    yield primary, lead, cto
    for r in (primary, lead, cto):
        r.close()


def open_record(tmp_path, severity="P0"):
    record, path = incident.open_record(str(tmp_path), "inc-w", "p0_outage", severity)
    incident.add_halt(record, "contain", "halted", {"halted": ["engine-001"], "elapsed_ms": 50,
                                                     "targets": [{"name": "engine-001", "status": "halted"}]})
    incident.save(record, path)
    return path


def config(path, primary, **extra):
    return {"record_path": path, "channels": [{"name": "primary", "type": "webhook", "url": primary.url,
                                               "timeout": 3}], "status_every": 0, "escalate_after": 0,
            "max_seconds": 30, "concurrency": 4, **extra}


def kinds(path):
    return [(n["kind"], n["channel"]) for n in incident.load(path)["notifications"]]


def test_status_updates_on_the_cadence_until_the_incident_is_resolved(tmp_path, hooks):
    primary, _, _ = hooks
    path = open_record(tmp_path)
    stop = threading.Event()
    worker = threading.Thread(target=incident_watch.watch, args=(config(path, primary, status_every=0.5),
                                                                 _notify.send), kwargs={"stopping": stop.is_set})
    worker.start()
    try:
        updates = primary.wait_for(2, timeout=10)
        assert [u["kind"] for u in updates[:2]] == ["status", "status"]
        assert incident.seconds_between(updates[0]["sent_at"], updates[1]["sent_at"]) >= 0.45
        # the record is written after each send: wait for it to show both, not only the receiver
        def recorded():
            notes = incident.load(path)["notifications"]
            return notes if len(notes) >= 2 else None

        notes = wait_until(recorded, timeout=10, what="two notifications recorded")
        sent = [incident.parse_time(n["at"]) for n in notes]
        assert (sent[1] - sent[0]).total_seconds() >= 0.45
        # resolved: the watcher sees the closed record and stops by itself
        incident.update(path, lambda r: r.update(closed_at=incident.iso()))
        worker.join(timeout=5)
        assert not worker.is_alive()
    finally:
        stop.set()
        worker.join(timeout=5)
    assert all(k == ("status", "primary") for k in kinds(path))


def test_no_progress_escalates_one_level_per_period_up_to_the_matrix(tmp_path, hooks):
    primary, lead, cto = hooks
    path = open_record(tmp_path)
    levels = [{"name": "Lead Engineer", "channels": [{"name": "lead", "type": "webhook", "url": lead.url}]},
              {"name": "CTO", "channels": [{"name": "cto", "type": "pagerduty", "url": cto.url,
                                            "routing_key": ROUTING_KEY}]}]
    cfg = config(path, primary, escalate_after=0.6, escalation=levels)
    stop = threading.Event()
    worker = threading.Thread(target=incident_watch.watch, args=(cfg, _notify.send), kwargs={"stopping": stop.is_set})
    worker.start()
    try:
        first = lead.wait_for(1, timeout=10)[0]
        assert first["kind"] == "escalation" and first["escalation_level"] == 1
        assert "ESCALATED to level 1 (Lead Engineer): no progress for" in first["text"]
        page = cto.wait_for(1, timeout=10)[0]
        assert page["event_action"] == "trigger" and page["payload"]["custom_details"]["escalation_level"] == 2
        # the matrix has two levels: nothing further, however long it waits (watched over two more periods)
        deadline = time.monotonic() + 1.3
        while time.monotonic() < deadline:
            assert len(lead.received) == 1 and len(cto.received) == 1
            time.sleep(0.1)
    finally:
        stop.set()
        worker.join(timeout=5)
    record = incident.load(path)
    assert [h["level"] for h in record["escalation"]["history"]] == [1, 2] and record["escalation"]["level"] == 2
    assert primary.received == []  # the primary channel is not re-paged by an escalation


def test_progress_restarts_the_escalation_clock(tmp_path, hooks):
    primary, lead, _ = hooks
    path = open_record(tmp_path)
    levels = [{"name": "Lead Engineer", "channels": [{"name": "lead", "type": "webhook", "url": lead.url}]}]
    cfg = config(path, primary, escalate_after=1.0, escalation=levels)
    # a repair lands every 0.3 s: never 1 s without progress
    assert incident_watch.escalate_if_due(path, cfg, _notify.send) is None
    for _ in range(6):
        incident.update(path, lambda r: incident.add_action(r, "repair", "restart", "done"))
        assert incident_watch.escalate_if_due(path, cfg, _notify.send) is None
        time.sleep(0.3)
    assert lead.requests == 0


def test_the_background_watcher_keeps_its_secrets_in_memory_and_stops_before_the_resolution(tmp_path, hooks):
    primary, _, _ = hooks
    secret = "hmac-secret-only-in-memory-3b7e"
    path = open_record(tmp_path)
    cfg = config(path, primary, status_every=0.4)
    cfg["channels"][0]["secret"] = secret
    pid = incident_watch.start(cfg)
    try:
        assert incident_watch.running(path) == pid
        assert incident_watch.start(cfg) == pid  # one watcher per incident
        primary.wait_for(1, timeout=15)
    finally:
        assert incident_watch.stop(path, wait=15)
    assert incident_watch.running(path) is None
    count = len(primary.received)
    # stopped for good: no update arrives over three more periods
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        assert len(primary.received) == count
        time.sleep(0.1)
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file
    assert json.dumps(incident.load(path)).count(secret) == 0
