"""playbooks/stream_backlog.yml against a real lab whose notification consumer is stuck and whose dead-letter stream
fills with a poison message and messages that failed while a channel was down (seed 004 P2).

Proof from outside: the lab's own ledger (every message produced is processed exactly once, or is the poison
message and parked), Redis's own view of the group (no pending, the stuck consumer gone), the parking stream, the
seed's admin API (`GET /admin/streams/pending`, `GET /admin/streams/dlq`, `POST /admin/streams/dlq/requeue`), the
record and the evidence file."""

from __future__ import annotations

import json
import stat
import urllib.request

import pytest

from tests.helpers.records import read_record
from tests.integration.lab.helpers import wait_until

pytestmark = pytest.mark.integration

INCIDENT = "stream-backlog"
STREAM, GROUP, DLQ = "notify.events", "notify", "notify.events.dlq"


def admin(lab, path, body=None):
    """Seed 004's curl, with the admin token, on the first engine (every engine serves the shared streams)."""
    engine = lab.lab.engine(lab.engines()[0])
    req = urllib.request.Request(engine["url"] + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"X-Admin-Token": lab.state["admin_token"], "X-Lab-Source": "management"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def test_stuck_consumer_claimed_dead_letters_requeued_once_poison_parked_and_nothing_lost_or_twice(
        lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    injected = lab.lab.inject("stream-poison")  # 1 poison, 3 that fail until requeued once
    wait_until(lambda: admin(lab, f"/admin/streams/dlq?stream={DLQ}")["count"] == 4, timeout=15.0,
               what="the four failed messages in the dead-letter stream")
    stuck = lab.lab.inject("stream-consumer-stuck")["consumer"]
    wait_until(lambda: admin(lab, f"/admin/streams/pending?stream={STREAM}&group={GROUP}")["pending"] >= 5,
               timeout=15.0, what="the stuck consumer's pending list to grow")
    args = ["-e", f"incident_report_dir={tmp_path}", "-e", "stream_backlog_claim_idle_seconds=2",
            "-e", "stream_backlog_drain_timeout=30"]
    wait_until(lambda: lab.lab.streams()[STREAM]["stuck"] == [stuck], timeout=5.0, what="the lab to report it stuck")

    # check mode: reads, moves nothing, replaces no consumer
    checked = lab.run_playbook("stream_backlog.yml", "--check", "-e", f"incident_report_dir={tmp_path / 'check'}",
                               "-e", "stream_backlog_claim_idle_seconds=2")
    assert checked.returncode == 0, checked.stdout[-6000:]
    assert admin(lab, f"/admin/streams/dlq?stream={DLQ}")["count"] == 4
    assert lab.lab.streams()[STREAM]["consumers"] == [stuck]

    # the stuck consumer's oldest message must be past the claim threshold for it to count as stuck
    def oldest_pending_s():
        rows = lab.lab.redis_client().xpending_range(STREAM, GROUP, "-", "+", 1)
        return rows[0]["time_since_delivered"] / 1000.0 if rows else 0.0
    wait_until(lambda: oldest_pending_s() >= 2.5, timeout=10.0, what="the stuck messages to be 2.5 s old")
    proc = lab.run_playbook("stream_backlog.yml", *args)
    assert proc.returncode == 0, proc.stdout[-8000:]
    assert f"consumers {stuck} STUCK" in proc.stdout

    # Redis: nothing pending, the stuck consumer replaced and forgotten, the dead-letter stream empty
    pending = admin(lab, f"/admin/streams/pending?stream={STREAM}&group={GROUP}")
    assert stuck not in [c["name"] for c in pending["consumers"]] and pending["consumers"]
    assert admin(lab, f"/admin/streams/dlq?stream={DLQ}")["count"] == 0
    # the poison message is parked with its reason; the three transient ones were processed after one requeue
    client = lab.lab.redis_client()
    parked = [f for _i, f in client.xrange(f"{DLQ}.parked")]
    assert [f["msg_id"] for f in parked] == injected["poison"]
    assert "after 1 requeue(s)" in parked[0]["parked_reason"] and "template field" in parked[0]["error"]

    # count in = count out, once the producers stop: every message processed exactly once, or parked
    lab.lab.pause_producers()
    wait_until(lambda: lab.lab.streams()[STREAM]["unprocessed"] == injected["poison"], timeout=15.0,
               what="every message but the poison one processed")
    ledger = lab.lab.streams()[STREAM]
    assert ledger["twice"] == [] and ledger["processed"] == ledger["produced"] - 1

    record = read_record(tmp_path, INCIDENT)
    [repair] = [a for a in record["actions"] if a["phase"] == "repair"]
    assert repair["outcome"] == "GO" and "requeued 4; parked 1" in repair["detail"], repair
    evidence = tmp_path / f"{INCIDENT}-lab-streams-streams.json"
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600
    assert len(json.loads(evidence.read_text())["dead_letters"][DLQ]) == 4
    assert lab.state["redis"]["password"] not in evidence.read_text() + proc.stdout


def test_the_seed_requeue_call_puts_a_dead_letter_back_once(lab_factory):
    lab = lab_factory(engines=1)
    lab.lab.inject("stream-poison", count=0)
    wait_until(lambda: admin(lab, f"/admin/streams/dlq?stream={DLQ}")["count"] == 1, timeout=15.0,
               what="the poison message dead-lettered")
    [entry] = admin(lab, f"/admin/streams/dlq?stream={DLQ}")["entries"]
    done = admin(lab, "/admin/streams/dlq/requeue", {"dlqStream": DLQ, "id": entry["id"]})
    assert done["requeued"] == entry["id"] and done["requeues"] == 1
    # it fails again and comes back, now carrying its requeue count
    [again] = wait_until(lambda: admin(lab, f"/admin/streams/dlq?stream={DLQ}")["entries"], timeout=15.0,
                         what="the poison message dead-lettered again")
    assert again["id"] != entry["id"] and again["fields"]["requeues"] == "1"
