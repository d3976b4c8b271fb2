"""Admin tokens from the secrets file (rotation, revocation, SIGHUP), the leaked-secret fault and the lab
firewall, against the session's real lab. Every test puts the secrets file and firewall back as it found them.
"""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator

import pytest

from tradeops.cli import main
from tradeops.lab import Lab
from tradeops.lab.state import read_secrets_env, write_secrets_env

from .helpers import call, engine_view, scrape, wait_until

ORCH = "engine-002"  # orchestrate_api: /admin/orchestrate/*, /pnl/status
KILL = "engine-001"  # killswitch_api: /api/v1/emergency/*


@pytest.fixture
def original_token(lab: Lab) -> Iterator[str]:
    """The start token; the secrets file is restored (and reloaded) afterwards."""
    token = lab.admin_token()
    try:
        yield token
    finally:
        write_secrets_env(lab.secrets_path, {"ADMIN_TOKEN": token})
        lab.reload_secrets()


def pnl(lab: Lab, token: str | None, engine: str = ORCH) -> int:
    return call(lab, engine, "GET", "/pnl/status", token=token).status


def test_secrets_file_holds_the_state_token_and_admin_calls_need_it(lab: Lab, original_token: str) -> None:
    st = lab.state
    path = lab.secrets_path
    assert st["secrets_file"] == str(path) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secrets_env(path) == {"ADMIN_TOKEN": st["admin_token"]}
    assert st["control_token"] != st["admin_token"]  # the control API does not take the engines' token
    before = scrape(lab, ORCH)
    assert pnl(lab, original_token) == 200
    assert pnl(lab, None) == 401 and pnl(lab, "nope") == 401
    # The kill switch and its resume are admin calls too; status GETs and health stay open.
    assert call(lab, KILL, "POST", "/api/v1/emergency/resume").status == 401
    assert call(lab, KILL, "POST", "/api/v1/emergency/kill_switch", {"reason": "x", "user_id": "op"}).status == 401
    assert call(lab, KILL, "GET", "/api/v1/trading/status").json()["trading_active"] is True
    assert call(lab, KILL, "GET", "/health").status == 200
    after = scrape(lab, ORCH)
    assert after["auth_success_total"] - before["auth_success_total"] == 1
    assert after["auth_failures_total"] - before["auth_failures_total"] == 2
    assert engine_view(lab, ORCH)["auth"]["failures"] >= 2
    secrets = lab.secrets()
    assert list(secrets["accepted"]) == ["ADMIN_TOKEN"] and original_token not in json.dumps(secrets)


def test_rotation_with_previous_then_revocation_on_change_and_on_sighup(lab: Lab, original_token: str) -> None:
    new = "rotated-" + "a" * 40
    write_secrets_env(lab.secrets_path, {"ADMIN_TOKEN": new, "ADMIN_TOKEN_PREVIOUS": original_token})
    lab.reload_secrets()
    assert pnl(lab, new) == 200 and pnl(lab, original_token) == 200  # the cutover: both work
    assert call(lab, ORCH, "POST", "/admin/orchestrate/unhalt", token=new).status == 200

    # Revoke by editing the file only: refused within ~1 s, no restart, no signal.
    restarts = engine_view(lab, ORCH)["restarts"]
    write_secrets_env(lab.secrets_path, {"ADMIN_TOKEN": new})
    revoked = time.monotonic()
    wait_until(lambda: pnl(lab, original_token) == 401, timeout=1.5, what="the revoked token to get 401")
    assert time.monotonic() - revoked < 1.2
    assert pnl(lab, new) == 200
    assert engine_view(lab, ORCH)["restarts"] == restarts

    # Rotate again and revoke at once with SIGHUP: immediately effective.
    newer = "rotated-" + "b" * 40
    write_secrets_env(lab.secrets_path, {"ADMIN_TOKEN": newer})
    lab.reload_secrets()
    assert pnl(lab, new) == 401 and pnl(lab, newer) == 200
    assert call(lab, KILL, "POST", "/api/v1/emergency/resume", token=newer).status == 200

    # A broken file keeps the last good set (a credential is never lost to a bad write).
    lab.secrets_path.write_text("# nothing here\n")
    # admin calls re-read a changed file (a stat at most every 0.5 s): poll until it was read and refused
    wait_until(lambda: pnl(lab, newer) == 200 and lab.secrets()["error"], timeout=3, what="the broken file read")
    assert pnl(lab, newer) == 200


def test_leaked_secret_client_fails_right_after_rotation_and_revocation(lab: Lab, original_token: str) -> None:
    engines = [ORCH, "engine-006"]
    res = lab.inject("leaked-secret", engines)
    record_path = lab.faults_dir / "leaked-secret.json"
    try:
        assert res["already"] is False and res["leaked"]["engines"] == engines
        wait_until(lambda: (lab.leaked() or {}).get("successes", 0) >= 4, timeout=3, what="leaked calls to succeed")
        new = "rotated-" + "c" * 40
        write_secrets_env(lab.secrets_path, {"ADMIN_TOKEN": new})
        lab.reload_secrets()
        revoked_at = time.time()
        wait_until(lambda: (lab.leaked() or {}).get("unauthorized", 0) >= 4, timeout=3, what="leaked calls to 401")
        # the record file is rewritten at most every 0.25 s: wait for the 401s to reach it
        wait_until(lambda: json.loads(record_path.read_text())["unauthorized"] >= 4, timeout=3,
                   what="the 401s in the record file")
        live = lab.leaked()
        assert live is not None
        on_disk = json.loads(record_path.read_text())
        for rec in (live, on_disk):
            assert rec["active"] is True and rec["token_fingerprint"].startswith("sha256:")
            assert rec["last_success_at"] < revoked_at + 0.05 <= rec["first_unauthorized_at"] + 0.3
            later = [r for r in rec["recent"] if r["at"] > revoked_at + 0.05]
            assert later and all(r["status"] == 401 for r in later)
        assert original_token not in record_path.read_text() and new not in record_path.read_text()
        assert pnl(lab, new) == 200  # the legitimate consumer works throughout
        assert scrape(lab, ORCH)["auth_failures_total"] >= 2
    finally:
        cleared = lab.inject("leaked-secret", clear=True)
    assert cleared["cleared"] is True
    assert json.loads(record_path.read_text())["active"] is False
    assert lab.leaked() is None
    calls = cleared["leaked"]["calls"]
    # stopped: watched for a second (five of its 0.2 s rounds), the record never grows
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert json.loads(record_path.read_text())["calls"] == calls
        time.sleep(0.1)


def test_firewall_blocks_public_allows_management_and_survives_a_restart(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    from tradeops.lab.procs import http_request

    name = "engine-003"
    spec = lab.engine(name)

    def get(source: str | None) -> int:
        headers = {"X-Lab-Source": source} if source else {}
        return http_request(spec["host"], spec["port"], "GET", "/health", headers=headers, timeout=3).status

    d = str(lab.lab_dir)
    try:
        assert main(["lab", "firewall", name, "--enable", "--allow", "ops", "--dir", d]) == 0
        assert "on, allow management,ops" in capsys.readouterr().out
        assert get(None) == 403 and get("public") == 403
        assert get("management") == 200 and get("ops") == 200
        assert get("engine-004") == 403
        assert get("public") == 403 and call(lab, "engine-004", "GET", "/health").status == 200  # others unaffected
        view = engine_view(lab, name)["firewall"]
        assert view["enabled"] is True and view["allow"] == ["management", "ops"] and view["blocked"] >= 4
        assert scrape_with(lab, name)["firewall_enabled"] == 1

        [restarted] = lab.restart([name])  # the control API (management path) works throughout
        assert restarted["firewall"]["enabled"] is True
        assert get(None) == 403 and get("management") == 200
        assert main(["lab", "status", "--dir", d]) == 0
        assert "on(allow management,ops)" in capsys.readouterr().out

        lab.firewall([name], enabled=True, allow=[])  # management stays allowed whatever the list says
        assert get("management") == 200 and get("ops") == 403
    finally:
        assert main(["lab", "firewall", name, "--disable", "--dir", d]) == 0
    assert get(None) == 200
    assert main(["lab", "firewall", name, "--dir", d]) == 3  # --enable or --disable is required
    assert main(["lab", "firewall", "--enable", "--dir", d]) == 3


def scrape_with(lab: Lab, engine: str) -> dict[str, float]:
    """/metrics from the management source (the firewall would refuse a public scrape)."""
    from tradeops.lab.procs import http_request

    spec = lab.engine(engine)
    res = http_request(spec["host"], spec["port"], "GET", "/metrics", headers={"X-Lab-Source": "management"})
    assert res.status == 200
    return {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in res.text.splitlines()
        if line and not line.startswith("#") and "{" in line and "le=" not in line and "code=" not in line
    }
