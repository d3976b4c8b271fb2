"""Live progress: plain lines off a terminal, a rich live view on one; both per phase and per host."""

from __future__ import annotations

import io

from rich.console import Console

from tests.unit.runner import events as ev
from tradeops.runner.progress import PlainProgress, RichProgress, summary_lines
from tradeops.runner.result import IncidentResult, phase_of, result_of, summarize


def tagged(events):
    for e in events:
        data = e.get("event_data") or {}
        e["tradeops"] = {"phase": phase_of(data.get("play")) if data.get("play") else None, "task": data.get("task"),
                         "host": data.get("host"), "result": result_of(e), "action": data.get("resolved_action")}
        yield e


def test_plain_progress_prints_each_phase_once_and_each_host_result():
    out = io.StringIO()
    progress = PlainProgress(out)
    events = ev.p0_success()
    events.insert(9, ev.play("repair"))  # a second serial batch of the repair play
    for e in tagged(events):
        assert progress(e) is True
    text = out.getvalue()
    phases = [line.split("phase ", 1)[1].split(":")[0] for line in text.splitlines() if "] phase " in line]
    assert phases == ["contain", "assess", "repair", "verify", "learn"]
    assert "kill switch: halted 2, already 0, failed 0, unverified 1 (engine-002)" in text
    assert "health: NO-GO, NO-GO: engine-002-health" in text
    assert any("repair" in line and "engine-002" in line and "changed" in line for line in text.splitlines())
    assert "Validating arguments" not in text  # noise is left out


def test_plain_progress_shows_failures():
    out = io.StringIO()
    progress = PlainProgress(out)
    for e in tagged(ev.p0_repair_fails()):
        progress(e)
    assert "FAILED: engine-003 is still NO-GO" in out.getvalue()


def test_rich_progress_renders_phases_and_hosts():
    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, force_terminal=True, width=160), title="tradeops run p0_outage")
    for e in tagged(ev.p0_success()):
        progress(e)
    progress.close()
    text = buf.getvalue()
    for phase in ("contain", "assess", "repair", "verify", "learn"):
        assert f"phase {phase}" in text
    assert "engine-002" in text and "kill switch" in text and "done" in text


def test_summary_lines():
    s = summarize(ev.p0_repair_fails(), status="failed", rc=2)
    r = IncidentResult(run_id="r1", incident="p0_outage", playbook="p.yml", status="failed", rc=2,
                       artifacts_path="/runs/r1/artifacts/r1", **s)
    text = "\n".join(summary_lines(r))
    assert "HALTED, NOT RECOVERED" in text and "halted (verified): 3/3" in text
    assert "still NO-GO: engine-003" in text and "exit code 2 (halted_not_recovered)" in text
    assert "report: none (the playbook's report phase did not run)" in text
