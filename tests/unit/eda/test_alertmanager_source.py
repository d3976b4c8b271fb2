"""The EDA source tradeops.remediation.alertmanager, served for real (aiohttp on the loopback) and called over HTTP:
one event per alert; anything unauthenticated, oversized or malformed refused and counted; labels inert for Jinja."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from ansible_collections.tradeops.remediation.extensions.eda.plugins.event_source import alertmanager as source

from tradeops.lab.procs import free_port

TOKEN = "s3cret-token-value"


def payload(*alerts, status="firing"):
    return {"version": "4", "status": status, "receiver": "tradeops-eda", "groupKey": "{}:{}",
            "externalURL": "http://127.0.0.1:9093", "groupLabels": {}, "alerts": list(alerts)}


def alert(fingerprint="f1", status="firing", **labels):
    return {"status": status, "fingerprint": fingerprint, "labels": {"alertname": "A", **labels},
            "annotations": {"summary": "s"}, "startsAt": "2026-12-04T18:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph"}


def serve(args, scenario):
    """Run the source's main() with ``args`` and ``scenario(session, url, queue)`` against it."""
    port = free_port()
    args = {"port": port, **args}

    async def go():
        queue: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(source.main(queue, args))
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for _ in range(100):
                try:
                    async with session.get(url + "/metrics") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.02)
            try:
                return await scenario(session, url, queue)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task

    return asyncio.run(go())


async def counters(session, url):
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return {line.split(" ")[0]: int(line.split(" ")[1]) for line in text.splitlines() if line.startswith("tradeops")}


def drain(queue):
    out = []
    while not queue.empty():
        out.append(queue.get_nowait())
    return out


def test_one_event_per_alert_with_fingerprint_labels_and_status_and_a_journal(tmp_path):
    journal = tmp_path / "alerts.jsonl"

    async def scenario(session, url, queue):
        body = payload(alert("f1", engine="engine-001"), alert("f2", status="resolved", engine="engine-002"))
        async with session.post(url + "/alerts", json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            assert await r.json() == {"accepted": 2}
        return drain(queue), await counters(session, url)

    events, counts = serve({"token": TOKEN, "journal": str(journal)}, scenario)
    assert [(e["alert"]["fingerprint"], e["alert"]["status"], e["alert"]["labels"]["engine"]) for e in events] == [
        ("f1", "firing", "engine-001"), ("f2", "resolved", "engine-002")]
    assert events[0]["alertmanager"]["receiver"] == "tradeops-eda"
    assert events[0]["tradeops"]["received_at"] > 0
    assert counts['tradeops_eda_webhook_requests_total{result="accepted"}'] == 1
    assert counts['tradeops_eda_alerts_total{status="firing"}'] == 1
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert [(x["fingerprint"], x["status"]) for x in lines] == [("f1", "firing"), ("f2", "resolved")]
    assert journal.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {base64.b64encode(TOKEN.encode()).decode()}",
                                    f"bearer{TOKEN}", "Token " + TOKEN])
def test_anything_but_the_token_is_refused_and_counted(header):
    async def scenario(session, url, queue):
        headers = {"Authorization": header} if header else {}
        async with session.post(url + "/alerts", json=payload(alert()), headers=headers) as r:
            status = r.status
        return status, drain(queue), await counters(session, url)

    status, events, counts = serve({"token": TOKEN}, scenario)
    assert status == 401
    assert events == []
    assert counts['tradeops_eda_webhook_requests_total{result="unauthorized"}'] == 1
    assert counts['tradeops_eda_webhook_requests_total{result="accepted"}'] == 0


def test_basic_auth_and_a_token_file_rotated_without_a_restart(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first\n")

    async def scenario(session, url, queue):
        results = []
        for token in ("first", "second"):
            async with session.post(url + "/alerts", json=payload(alert()),
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                results.append(r.status)
        token_file.write_text("second\n")
        import os
        os.utime(token_file, (1, 1))  # a new mtime, whatever the clock's resolution
        for token in ("first", "second"):
            async with session.post(url + "/alerts", json=payload(alert()),
                                    headers={"Authorization": f"Bearer {token}"}) as r:
                results.append(r.status)
        return results

    assert serve({"token_file": str(token_file)}, scenario) == [200, 401, 401, 200]

    async def basic(session, url, queue):
        out = []
        for pw in ("pw", "nope"):
            auth = {"Authorization": "Basic " + base64.b64encode(f"am:{pw}".encode()).decode()}
            async with session.post(url + "/alerts", json=payload(alert()), headers=auth) as r:
                out.append(r.status)
        return out

    assert serve({"username": "am", "password": "pw"}, basic) == [200, 401]


def test_oversized_malformed_and_non_post_requests_are_refused_and_counted():
    async def scenario(session, url, queue):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        statuses = []
        async with session.post(url + "/alerts", data=b"x" * 5000, headers=auth) as r:
            statuses.append(r.status)
        for body in (b"not json", json.dumps({"alerts": "x"}).encode(),
                     json.dumps(payload({"labels": {}, "status": "firing"})).encode(),
                     json.dumps(payload(alert(status="pending"))).encode()):
            async with session.post(url + "/alerts", data=body, headers=auth) as r:
                statuses.append(r.status)
        async with session.get(url + "/alerts", headers=auth) as r:
            statuses.append(r.status)
        return statuses, drain(queue), await counters(session, url)

    statuses, events, counts = serve({"token": TOKEN, "max_body_bytes": 4096}, scenario)
    assert statuses == [413, 400, 400, 400, 400, 405]
    assert events == []
    assert counts['tradeops_eda_webhook_requests_total{result="too_large"}'] == 1
    assert counts['tradeops_eda_webhook_requests_total{result="bad_request"}'] == 4


def test_labels_are_inert_for_jinja():
    events = source.alert_events(payload(alert(engine="{{ lookup('pipe', 'id') }}", x="{% raw %}{# c #}")), 1.0)
    labels = events[0]["alert"]["labels"]
    assert labels["engine"] == "{ { lookup('pipe', 'id') }}"
    assert "{%" not in labels["x"] and "{#" not in labels["x"]


def test_the_source_refuses_to_start_unauthenticated_or_half_configured(tmp_path):
    with pytest.raises(source.SourceConfigError, match="token, token_file or username/password"):
        source.Auth({})
    with pytest.raises(source.SourceConfigError, match="both username and password"):
        source.Auth({"username": "am"})
    with pytest.raises(source.SourceConfigError, match="token_file .* does not exist"):
        source.Auth({"token_file": str(tmp_path / "none")})
    with pytest.raises(source.SourceConfigError, match="max_body_bytes"):
        source.Webhook(asyncio.Queue(), {"token": "t", "max_body_bytes": 10})
    with pytest.raises(source.SourceConfigError, match="port is required"):
        asyncio.run(source.main(asyncio.Queue(), {"token": "t"}))
