"""playbooks/security_breach.yml and rotate_secrets.yml with real ansible-playbook against a lab
whose engines authenticate admin calls with the token in the lab's secrets file."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import datetime

import pytest

from tests.helpers.records import read_record

pytestmark = pytest.mark.integration


def current_token(lab):
    for line in (lab.dir / "secrets.env").read_text().splitlines():
        if line.startswith("ADMIN_TOKEN="):
            return line.split("=", 1)[1]
    raise AssertionError("no ADMIN_TOKEN in the lab's secrets file")


def admin_status(engine, token, source="management"):
    req = urllib.request.Request(f"http://{engine['host']}:{engine['port']}/pnl/status",
                                 headers={"X-Admin-Token": token, "X-Lab-Source": source})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def redis(lab, db):
    import redis as redis_lib

    rd = lab.state["redis"]
    return redis_lib.Redis(host=rd["host"], port=rd["port"], password=rd["password"], db=db, socket_timeout=3)


def test_security_breach_rotates_revokes_isolates_and_keeps_trading_halted(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    old = current_token(lab)
    lab.lab.inject("leaked-secret")
    redis(lab, 1).set("session:abc", "user-1")
    started = time.time()
    proc = lab.run_playbook("security_breach.yml", "-vvv", "-e", f"incident_report_dir={tmp_path}",
                            "-e", f"evidence_dest={tmp_path}/evidence", "-e", "health_gate_stable_for=1",
                            "-e", "halt_trading_quiesce_seconds=1")
    assert proc.returncode == 0, proc.stdout[-5000:]
    new = current_token(lab)
    assert new != old
    for engine in lab.state["engines"]:
        assert admin_status(engine, old) == 401, engine["name"]
        assert admin_status(engine, new) == 200, engine["name"]
        # isolated: a public caller is refused even with the new token
        assert admin_status(engine, new, source="public") == 403
    # trading stayed halted throughout: no order from the end of the contain phase until now (the role's own
    # proof covers each engine's verified halt up to there); not a fixed delay after start, which a loaded
    # machine can exceed
    report = read_record(tmp_path, "security-breach")
    contained = [h for h in report["halts"] if h["phase"] == "contain"][0]
    contained_at = datetime.fromisoformat(contained["at"].replace("Z", "+00:00")).timestamp()
    assert started < contained_at < time.time()
    for name in lab.engines():
        assert lab.orders_between(name, contained_at, time.time()) == 0, name
    assert all(not e["trading_active"] for e in lab.lab.engines())
    # the leaked token's rogue client is refused after the rotation
    first = lab.lab.leaked()
    assert first["successes"] > 0, "the rogue client did get through before the response"
    # at least two more rounds of calls on every engine, within a deadline: none gets through
    more = 2 * len(lab.engines())
    deadline = time.monotonic() + 10
    while (leaked := lab.lab.leaked())["calls"] < first["calls"] + more and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leaked["calls"] >= first["calls"] + more, (first["calls"], leaked["calls"])
    assert leaked["successes"] == first["successes"]
    assert all(e["last_status"] in (401, 403) for e in leaked["per_engine"].values()), leaked["per_engine"]
    # sessions invalidated in their own database only; the halt keys in db 0 survive
    assert redis(lab, 1).dbsize() == 0
    assert redis(lab, 0).keys("emergency_halt*"), "FLUSHALL would have removed the halt keys"
    # evidence checksums verify, and no secret (old or new) appears in -vvv output or the report
    import hashlib
    for sha in (tmp_path / "evidence").glob("*.sha256"):
        digest, name = sha.read_text().split()
        assert hashlib.sha256((sha.parent / name).read_bytes()).hexdigest() == digest
    report = (tmp_path / "security-breach.json").read_text() + (tmp_path / "security-breach.md").read_text()
    for secret in (old, new):
        assert secret not in proc.stdout and secret not in report
