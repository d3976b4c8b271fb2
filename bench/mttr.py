"""P0 drill MTTR: the real drill (``tradeops.drill.run_p0_drill``, what ``make drill`` runs) on a 20-engine
lab with 3 engines crashed and 1 hung, timed phase by phase.

The drill brings the lab up with the faults active (its fault time), waits 1 s, runs ``ansible-playbook
playbooks/p0_outage.yml``, checks PostgreSQL, then runs the approved resume. Its MTTR is fault to all GO:
the incident record's ``gate.at`` (the gate passed) minus the fault time. The phases come from the
``bench_timing`` callback (``bench/callback_plugins``), enabled for these runs only: each tagged play
(contain, assess, evidence, repair, verify, resume, report) lasts from its start to the next play's start.
``verify_to_gate_open`` is the verify play up to the gate passing. The drill's verdict must be PASS.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import BENCH, ROOT, loadavg, log, summary

from tradeops.drill import run_p0_drill

FAULTS = {"engine-005": ["crash"], "engine-010": ["crash"], "engine-015": ["crash"], "engine-007": ["hang"]}
PHASES = ("contain", "assess", "evidence", "repair", "verify", "resume", "report")
PLAY_PHASE = re.compile(r"\|\s*\d+\s+([a-z]+)")


def _phase_of(play: str | None) -> str | None:
    m = PLAY_PHASE.search(play or "")
    if not m:
        return None
    word = m.group(1)
    return "report" if word == "learn" else word


def phase_times(timing_file: Path, fault_at: float, gate_at: float | None) -> dict[str, Any]:
    """Seconds per phase of the FIRST playbook in the timing file (p0_outage.yml; the drill's resume run
    comes after it). A play with ``serial`` starts once per batch: its batches add up."""
    events = []
    for line in timing_file.read_text().splitlines():
        if line.strip():
            event = json.loads(line)
            events.append(event)
            if event["event"] == "end":
                break
    starts = [(_phase_of(e["play"]) or e["play"], e["t"]) for e in events if e["event"] == "play_start"]
    out: dict[str, Any] = {}
    if not starts:
        return out
    end = events[-1]["t"]
    out["fault_to_first_play"] = round(starts[0][1] - fault_at, 3)
    for i, (name, at) in enumerate(starts):
        nxt = starts[i + 1][1] if i + 1 < len(starts) else end
        out[name] = round(out.get(name, 0.0) + nxt - at, 3)
    verify = next((at for name, at in starts if name == "verify"), None)
    if verify is not None and gate_at is not None:
        out["verify_to_gate_open"] = round(gate_at - verify, 3)
    out["playbook_end_after_fault"] = round(end - fault_at, 3)
    return out


def run_mttr(runs: int, work: Path, engines: int = 20) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "engines": engines, "faults": FAULTS,
                           "loadavg_start": loadavg(), "runs": []}
    saved = {k: os.environ.get(k) for k in ("ANSIBLE_CALLBACK_PLUGINS", "ANSIBLE_CALLBACKS_ENABLED",
                                            "TRADEOPS_BENCH_TIMING", "ANSIBLE_CONFIG")}
    try:
        for i in range(runs):
            with tempfile.TemporaryDirectory(prefix="mttr-", dir=work) as tmp:
                timing = Path(tmp) / "timing.jsonl"
                os.environ.update(ANSIBLE_CALLBACK_PLUGINS=str(BENCH / "callback_plugins"),
                                  ANSIBLE_CALLBACKS_ENABLED="bench_timing", TRADEOPS_BENCH_TIMING=str(timing),
                                  ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
                buf = io.StringIO()
                started = time.time()
                outcome = run_p0_drill(engines=engines, faults=FAULTS, root=ROOT, lab_dir=Path(tmp) / "lab", out=buf)
                rep = outcome.report
                run: dict[str, Any] = {"verdict": rep.get("verdict", "FAIL"), "problems": outcome.problems,
                                       "mttr_s": rep.get("mttr_fault_to_all_go_seconds"),
                                       "p0_outage_s": rep.get("p0_outage_seconds"),
                                       "contain_module_ms": rep.get("contain_ms"),
                                       "restarted": rep.get("restarted"),
                                       "drill_wall_s": round(time.time() - started, 1),
                                       "drill_report": str(outcome.report_path) if outcome.report_path else None}
                gate_at = fault_at = None
                if rep.get("incident_report"):
                    incident = json.loads(Path(rep["incident_report"]).read_text())
                    gate = (incident.get("gate") or {}).get("at")
                    gate_at = datetime.fromisoformat(gate.replace("Z", "+00:00")).timestamp() if gate else None
                    if gate_at is not None and run["mttr_s"] is not None:
                        fault_at = gate_at - float(run["mttr_s"])
                if timing.exists() and fault_at is not None:
                    run["phases_s"] = phase_times(timing, fault_at, gate_at)
                if not outcome.ok:
                    run["drill_output_tail"] = buf.getvalue()[-1500:]
                out["runs"].append(run)
                log(f"mttr run {i + 1}/{runs}: {run['verdict']}, MTTR {run['mttr_s']} s, phases "
                    f"{run.get('phases_s')}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    good = [r for r in out["runs"] if r["verdict"] == "PASS"]
    out["failed_runs"] = len(out["runs"]) - len(good)
    out["mttr_s"] = summary(r["mttr_s"] for r in good)
    names = list(dict.fromkeys(k for r in good for k in r.get("phases_s", {})))
    out["phases_s"] = {k: summary(r.get("phases_s", {}).get(k) for r in good) for k in names}
    out["loadavg_end"] = loadavg()
    return out
