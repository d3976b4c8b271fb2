"""Engine restarts and the faults a restart does (not) repair, against the session's real lab.

A restart is a process restart of one engine: it fixes crash and hang and the leak-like error-rate and
latency, drops in-memory halts, and re-reads the durable halt sources (EMERGENCY_STOP file, redis keys) on
its first tick, so a flagged engine comes back halted; disk-pressure, unrecoverable and the dependency faults
survive it. Halts are proven from PostgreSQL.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tradeops.cli import main
from tradeops.lab import Lab, LabError, LabInputError
from tradeops.lab.engines import BALLAST_BYTES, remove_ballast, write_ballast
from tradeops.lab.metrics import RateWindow
from tradeops.lab.procs import port_refuses

from .helpers import SETTLE, assert_trading, call, engine_view, health, restarts, scrape

STOPPED = {"trading_active": False, "mode": "emergency_stopped"}


# -- restart -------------------------------------------------------------------------------------------------


def test_restart_brings_a_crashed_engine_back_on_the_same_port(lab: Lab) -> None:
    name = "engine-006"
    port = lab.engine(name)["port"]
    before = restarts(lab)
    lab.inject("crash", [name])
    assert port_refuses("127.0.0.1", port)
    started = time.time()
    [view] = lab.restart([name])
    assert view["name"] == name and view["port"] == port and view["listening"] is True
    assert view["faults"] == [] and view["started_at"] >= started
    assert view["restarts"] == before[name] + 1
    assert call(lab, name, "GET", "/health").status == 200
    assert_trading(lab, name, started)
    assert restarts(lab) == {**before, name: before[name] + 1}  # only the restarted engine counts one


def test_restart_answers_again_after_a_hang(lab: Lab) -> None:
    name = "engine-007"
    lab.inject("hang", [name])
    try:
        with pytest.raises(TimeoutError):
            call(lab, name, "GET", "/health", timeout=0.5)
        restarted = time.time()
        [view] = lab.restart([name])
    finally:
        lab.inject("hang", [name], clear=True)  # a no-op once the restart fixed it
    assert view["faults"] == [] and view["listening"] is True
    assert call(lab, name, "GET", "/health", timeout=2.0).status == 200
    assert_trading(lab, name, restarted)


def test_restart_keeps_durable_halts_and_drops_api_halts(lab: Lab) -> None:
    """The file flag (engine-004) and the redis key (engine-003) outlive a restart; the kill switch
    (engine-001, held in memory) does not. The flagged engines write no order across the restart."""
    flag = Path(lab.engine("engine-004")["dir"]) / "EMERGENCY_STOP"
    r = lab.redis_client()
    durable = ["engine-003", "engine-004"]
    flag.touch()
    r.set("emergency_halt:engine-003", "true", ex=60)
    kill = call(
        lab,
        "engine-001",
        "POST",
        "/api/v1/emergency/kill_switch",
        {"reason": "drill", "user_id": "op"},
        token=lab.admin_token(),
    )
    assert kill.status == 200
    try:
        for name in [*durable, "engine-001"]:
            assert call(lab, name, "GET", "/api/v1/trading/status").json() == STOPPED
        verified = time.time()
        before = restarts(lab)
        views = {v["name"]: v for v in lab.restart(["engine-001", *durable])}
        assert views["engine-004"]["halted"] is True and views["engine-004"]["halt_source"] == "file"
        assert views["engine-003"]["halted"] is True and views["engine-003"]["halt_source"] == "redis"
        assert views["engine-001"]["halted"] is False  # the kill switch lived in the old process
        for name in durable:
            assert call(lab, name, "GET", "/api/v1/trading/status").json() == STOPPED
        assert_trading(lab, "engine-001", verified)

        assert_trading(lab, "engine-002", verified + SETTLE)  # the writer flushed well past `verified`
        assert lab.orders_after(verified, durable) == dict.fromkeys(durable, 0)
        for name in durable:  # the new trading loop ran, and saw the halt afresh
            view = engine_view(lab, name)
            assert view["halted_at"] is not None and view["halted_at"] > verified
            assert view["restarts"] == before[name] + 1
        assert restarts(lab) == {**before, **{n: before[n] + 1 for n in ["engine-001", *durable]}}
    finally:
        flag.unlink(missing_ok=True)
        r.delete("emergency_halt:engine-003")
        call(lab, "engine-001", "POST", "/api/v1/emergency/resume", token=lab.admin_token())
    resumed = time.time()
    for name in durable:
        assert_trading(lab, name, resumed)


def test_restart_rejects_bad_input(lab: Lab) -> None:
    with pytest.raises(LabInputError):
        lab.restart([])
    with pytest.raises(LabInputError):
        lab.restart(["engine-999"])
    with pytest.raises(LabInputError):
        lab.control("POST", "/lab/engines/restart", {"engines": ["engine-999"]})
    with pytest.raises(LabInputError):
        lab.control("POST", "/lab/engines/restart", {"engines": []})
    with pytest.raises(LabInputError):
        lab.control("POST", "/lab/engines/restart")  # no body
    with pytest.raises(LabInputError):
        lab.restart_command("engine-999")


def test_cli_restart_and_the_restart_argv_for_ansible(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    name, d = "engine-008", str(lab.lab_dir)
    before = restarts(lab)[name]
    assert main(["lab", "restart", name, "--dir", d, "--json"]) == 0
    [view] = json.loads(capsys.readouterr().out)
    assert view["name"] == name and view["restarts"] == before + 1
    assert main(["lab", "restart", name, "--dir", d]) == 0
    assert "restarted 1 engine(s)" in capsys.readouterr().out
    assert main(["lab", "restart", "--dir", d]) == 3
    assert main(["lab", "restart", "engine-999", "--dir", d]) == 3
    capsys.readouterr()

    # What the inventory hands to ansible.builtin.command: no shell, no PYTHONPATH, any cwd.
    argv = json.loads(lab.state_path.read_text())["restart_argv"]
    assert Path(argv[0]).is_absolute() and argv[-2:] == ["--dir", d]
    assert lab.restart_command(name) == [*argv, name]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    proc = subprocess.run([*argv, name], env=env, cwd="/", capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{name}: port {lab.engine(name)['port']}" in proc.stdout
    assert restarts(lab)[name] == before + 3

    assert main(["lab", "status", "--dir", d, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    entry = next(e for e in status["engines"] if e["name"] == name)
    assert entry["restarts"] == before + 3 and entry["started_at"] > status["started_at"]
    assert main(["lab", "status", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert "RESTARTS" in out and "STARTED" in out


# -- faults a restart does not fix ---------------------------------------------------------------------------


def test_disk_pressure_is_no_go_survives_restart_and_clears(lab: Lab) -> None:
    name, other = "engine-002", "engine-001"
    ballast = lab.lab_dir / "ballast" / "disk-pressure.bin"
    assert not ballast.exists()
    lab.inject("disk-pressure", [name])
    try:
        assert ballast.stat().st_size == BALLAST_BYTES == 64 * 1024 * 1024
        detail = health(lab, name)
        assert detail["trading_status"] == "NO-GO" and detail["components"]["disk"] == "error"
        assert health(lab, other)["trading_status"] == "GO" and health(lab, other)["components"]["disk"] == "ok"
        assert scrape(lab, name)["disk_pressure"] == 1 and scrape(lab, other)["disk_pressure"] == 0

        [view] = lab.restart([name])  # the disk is still full
        assert view["faults"] == ["disk-pressure"] and ballast.exists()
        assert health(lab, name)["trading_status"] == "NO-GO"

        lab.inject("disk-pressure", ["*"])  # every engine
        assert all(health(lab, n)["components"]["disk"] == "error" for n in (name, other, "engine-008"))
        lab.inject("disk-pressure", [name], clear=True)
        assert ballast.exists()  # the others still have it
        assert health(lab, name)["trading_status"] == "GO"
    finally:
        lab.inject("disk-pressure", ["*"], clear=True)
    assert not ballast.exists() and not ballast.parent.exists()
    for n in (name, other):
        detail = health(lab, n)
        assert detail["trading_status"] == "GO" and detail["components"]["disk"] == "ok"
        assert scrape(lab, n)["disk_pressure"] == 0


@pytest.mark.parametrize("fault, survives", [("error-rate", False), ("dependency-errors", True)])
def test_a_restart_clears_leak_like_errors_but_not_a_dependencys(lab: Lab, fault: str, survives: bool) -> None:
    name = "engine-004"
    log = Path(lab.engine(name)["dir"]) / "engine.log"
    before = engine_view(lab, name)["errors_total"]  # counters persist across faults and restarts
    lab.inject(fault, [name])
    try:
        deadline = time.monotonic() + 10
        while engine_view(lab, name)["errors_total"] == before:  # every 5th order attempt fails
            assert time.monotonic() < deadline, "no order was rejected under the fault"
            time.sleep(0.1)
        cause = "dependency error" if survives else "internal error"
        assert f"order rejected: {cause}" in log.read_text()  # what the on-call engineer greps for
        [view] = lab.restart([name])
        assert view["faults"] == ([fault] if survives else [])
        # a dependency's failure shows in the health check, even while the engine attempts no order
        assert health(lab, name)["components"]["pricing_feed"] == ("error" if survives else "ok")
        errors = engine_view(lab, name)["errors_total"]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            now = engine_view(lab, name)["errors_total"]
            if survives and now > errors:
                break
            assert survives or now == errors, f"{name} still rejects orders after the restart cleared {fault}"
            time.sleep(0.2)
        else:
            assert not survives, f"{name} rejected no order for 2 s although {fault} survived the restart"
    finally:
        lab.inject(fault, [name], clear=True)


def test_unrecoverable_survives_restart_until_cleared(lab: Lab) -> None:
    name = "engine-005"
    lab.inject("unrecoverable", [name])
    try:
        detail = health(lab, name)
        assert detail["trading_status"] == "NO-GO" and detail["components"]["engine"] == "error"
        [view] = lab.restart([name])
        assert view["faults"] == ["unrecoverable"]
        detail = health(lab, name)
        assert detail["trading_status"] == "NO-GO" and detail["components"]["engine"] == "error"
    finally:
        lab.inject("unrecoverable", [name], clear=True)
    detail = health(lab, name)
    assert detail["trading_status"] == "GO" and detail["components"]["engine"] == "ok"


def test_each_engine_logs_to_its_own_file(lab: Lab) -> None:
    name = "engine-003"
    spec = lab.engine(name)
    lab.inject("latency", [name])
    lab.inject("latency", [name], clear=True)
    lab.restart([name])
    path = Path(spec["dir"]) / "engine.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"started on 127.0.0.1:{spec['port']}" in text
    assert "fault latency injected" in text and "fault latency cleared" in text
    assert f"restarted on port {spec['port']}" in text
    assert "engine-005" not in text  # its own events only
    st = lab.state
    secrets = [st["admin_token"], st["postgres"]["password"], st["redis"]["password"]]
    for log in [*(lab.lab_dir / "engines").glob("*/engine.log"), lab.lab_dir / "engines.log"]:
        content = log.read_text()
        assert not any(secret in content for secret in secrets), f"a secret leaked into {log}"


# -- pieces without a lab ------------------------------------------------------------------------------------


def test_rate_window_forgets_old_errors() -> None:
    window = RateWindow(5.0, 0.25)
    for i in range(40):  # 4 s at 10 attempts/s, every 5th fails
        window.record(1000.0 + i / 10, error=i % 5 == 4)
    assert window.rate(1004.0) == pytest.approx(0.2)
    assert 0.0 < window.rate(1007.0) < 1.0  # only the attempts of the last 5 s are left
    assert window.rate(1009.0) == 0.0  # nothing recorded for 5 s: everything expired
    window.record(1010.0, error=True)
    assert window.rate(1010.0) == 1.0
    window.clear()
    assert window.rate(1010.0) == 0.0


def test_ballast_stays_inside_the_lab_dir(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    path = write_ballast(lab_dir, size=3 * 1024 + 5, chunk=1024)
    assert path == lab_dir / "ballast" / "disk-pressure.bin" and path.stat().st_size == 3 * 1024 + 5
    remove_ballast(lab_dir)
    assert not (lab_dir / "ballast").exists()
    remove_ballast(lab_dir)  # idempotent

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, lab_dir / "ballast")
    with pytest.raises(LabError, match="not a plain directory"):
        write_ballast(lab_dir, size=1024)
    assert list(outside.iterdir()) == []
    os.unlink(lab_dir / "ballast")
    (lab_dir / "ballast").mkdir()
    os.symlink(outside / "target", lab_dir / "ballast" / "disk-pressure.bin")
    with pytest.raises(LabError, match="cannot create"):
        write_ballast(lab_dir, size=1024)
    assert list(outside.iterdir()) == []
