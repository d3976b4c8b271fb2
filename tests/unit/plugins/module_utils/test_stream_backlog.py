"""stream_backlog against a real redis-server: a stuck consumer's messages claimed for a live one and the stuck one
forgotten only once it holds nothing; dead letters requeued once and parked the second time, even when the
application drops the requeue count; evidence first; check mode moves nothing; options named in errors."""

from __future__ import annotations

import json
import os
import stat
import time

import pytest
import redis
from ansible_collections.tradeops.remediation.plugins.module_utils._errors import ValidationError
from ansible_collections.tradeops.remediation.plugins.module_utils._streams import StreamBacklogService

PASSWORD = "pw-canary-77"


@pytest.fixture
def client(redis_server):
    conn = redis.Redis(port=redis_server, password=PASSWORD, decode_responses=True, socket_timeout=5)
    conn.flushdb()  # this test's own server, not anyone's data
    yield conn
    conn.close()


def service(port, check_mode=False, **params):
    base = {"port": port, "password": PASSWORD, "claim_idle_seconds": 0.5, "timeout": 20,
            "streams": [{"name": "ev", "group": "g", "dlq": "ev.dlq"}]}
    return StreamBacklogService(dict(base, **params), check_mode=check_mode)


def wait_stuck(port, consumer, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        snap = service(port).run()["streams"][0]
        if consumer in snap["stuck"]:
            return snap
        assert time.monotonic() < deadline, f"{consumer} never counted as stuck: {snap}"
        time.sleep(0.1)


def poll(client, consumer):
    """What a live consumer does: a blocking read for new messages (there are none), which Redis counts as seen."""
    assert client.xreadgroup("g", consumer, {"ev": ">"}, count=1, block=10) == []


def test_a_stuck_consumers_messages_go_to_a_live_one_and_it_is_forgotten_once_empty(redis_server, client):
    client.xgroup_create("ev", "g", id="0", mkstream=True)
    ids = [client.xadd("ev", {"n": str(i)}) for i in range(5)]
    client.xreadgroup("g", "old", {"ev": ">"}, count=10)  # read, never acknowledged
    snap = wait_stuck(redis_server, "old")
    client.xgroup_createconsumer("ev", "g", "new")  # a live consumer: it polls for new messages
    poll(client, "new")
    result = service(redis_server).run()
    assert result["status"] == "NO-GO" and any("consumer old is stuck: 5 pending" in p for p in result["problems"])
    assert snap["pending"] == 5

    poll(client, "new")
    checked = service(redis_server, check_mode=True, claim=True, forget=["old"]).run()
    assert checked["changed"] and checked["claimed"][0]["would"] and not checked["forgotten"], checked
    assert client.xpending("ev", "g")["consumers"] == [{"name": "old", "pending": 5}]

    poll(client, "new")
    done = service(redis_server, claim=True, forget=["old"]).run()
    assert done["changed"] and done["claimed"] == [{"stream": "ev", "from": "old", "to": "new", "count": 5}]
    assert done["forgotten"] == [{"stream": "ev", "consumer": "old"}]
    assert [c["name"] for c in client.xinfo_consumers("ev", "g")] == ["new"]
    own = client.xreadgroup("g", "new", {"ev": "0"})  # what "new" finds in its own pending list
    assert [i for i, _f in own[0][1]] == ids


def test_a_consumer_that_still_holds_messages_is_never_forgotten(redis_server, client):
    client.xgroup_create("ev", "g", id="0", mkstream=True)
    client.xadd("ev", {"n": "1"})
    client.xreadgroup("g", "old", {"ev": ">"})
    result = service(redis_server, forget=["old"]).run()  # no claim: it keeps its message
    assert result["kept_consumers"][0]["consumer"] == "old" and not result["forgotten"]
    assert client.xpending("ev", "g")["pending"] == 1


def test_dead_letters_are_requeued_once_then_parked_even_if_the_app_drops_the_count(redis_server, client, tmp_path):
    client.xgroup_create("ev", "g", id="$", mkstream=True)
    client.xgroup_createconsumer("ev", "g", "live")
    flaky = client.xadd("ev.dlq", {"msg_id": "a", "original_stream": "ev", "error": "503"})
    twice = client.xadd("ev.dlq", {"msg_id": "b", "original_stream": "ev", "error": "bad", "requeues": "1"})
    evidence = tmp_path / "dlq.json"

    checked = service(redis_server, check_mode=True, requeue=True).run()
    assert [(r["id"], r["would"]) for r in checked["requeued"]] == [(flaky, True)]
    assert [p["id"] for p in checked["parked"]] == [twice] and client.xlen("ev.dlq") == 2

    done = service(redis_server, requeue=True, evidence_path=str(evidence)).run()
    assert [r["id"] for r in done["requeued"]] == [flaky] and [p["id"] for p in done["parked"]] == [twice]
    assert client.xlen("ev.dlq") == 0
    [(_i, back)] = client.xrange("ev")
    assert back == {"msg_id": "a", "requeues": "1"}  # the message itself, its bookkeeping dropped
    [(_i, parked)] = client.xrange("ev.dlq.parked")
    assert parked["msg_id"] == "b" and "after 1 requeue(s)" in parked["parked_reason"]
    # the evidence holds the dead letters as they were, privately
    assert stat.S_IMODE(os.stat(evidence).st_mode) == 0o600
    body = json.loads(evidence.read_text())
    assert [e["id"] for e in body["dead_letters"]["ev.dlq"]] == [flaky, twice]

    # the application dead-letters "a" again and drops its requeue count: the ledger still knows
    client.xadd("ev.dlq", {"msg_id": "a", "original_stream": "ev", "error": "503 again"})
    again = service(redis_server, requeue=True).run()
    assert not again["requeued"] and [p["error"] for p in again["parked"]] == ["503 again"]
    assert client.xlen("ev") == 1 and client.xlen("ev.dlq.parked") == 2


@pytest.mark.parametrize("params, message", [
    ({"streams": []}, "streams: name at least one stream"),
    ({"streams": [{"name": "ev"}]}, r"streams\[0\].group is required"),
    ({"streams": [{"name": "ev", "group": "g", "queue": "x"}]}, r"streams\[0\]: unknown option\(s\) queue"),
    ({"streams": [{"name": "ev", "group": "g", "dlq": "d", "parked": "d"}]}, r"streams\[0\].parked must differ"),
    ({"max_requeues": -1}, "max_requeues must be at least 0"),
    ({"drain_timeout": 30, "timeout": 20}, "drain_timeout .* must be shorter than timeout"),
    ({"evidence_path": "/nonexistent-dir/x.json"}, "evidence_path: the directory"),
])
def test_bad_options_name_the_option(params, message):
    base = {"streams": [{"name": "ev", "group": "g"}], "timeout": 20}
    with pytest.raises(ValidationError, match=message):
        StreamBacklogService(dict(base, **params))
