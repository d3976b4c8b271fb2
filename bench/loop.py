"""Closed loop (issue 19): fault to verified halt through Prometheus, Alertmanager and ansible-rulebook.

Each run is ``tradeops drill auto`` (``tradeops.drill_auto.run_auto_drill``): a fresh lab of ``engines`` with
monitoring, the rulebook, ``error-rate`` on one engine, and each interval from the fault to the engine verified
halted (its own ``halted_at``) and its working orders at zero at the venue, each seen by its own witness. The
alert rules' ``for:`` windows are cut to 3 s for the lab (the drill says so); the target is 30 s.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from _common import ROOT, loadavg, log, summary

from tradeops.drill_auto import TARGET_SECONDS, run_auto_drill

STEPS = ("firing", "webhook", "started", "halted", "cancelled")


def run_loop(runs: int, work: Path, engines: int = 10) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "engines": engines,
                           "target_s": TARGET_SECONDS, "loadavg_start": loadavg(), "runs": []}
    for i in range(runs):
        buf = io.StringIO()
        outcome = run_auto_drill(engines=engines, root=ROOT, lab_dir=work / f"loop-{i}", out=buf,
                                 reports_dir=work / "loop-reports")
        rep = outcome.report
        run = {"ok": outcome.ok, "problems": outcome.problems, "fault_to_halt_s": rep.get("fault_to_halt_s"),
               "fault_to_cancelled_s": rep.get("fault_to_cancelled_s"), "intervals": rep.get("intervals"),
               "runs_started": rep.get("runs_total")}
        if not outcome.ok:
            run["output_tail"] = buf.getvalue()[-1500:]
        out["runs"].append(run)
        log(f"loop run {i + 1}/{runs}: {'PASS' if outcome.ok else 'FAIL'}, fault to halt {run['fault_to_halt_s']} s")
    good = [r for r in out["runs"] if r["ok"]]
    out["failed_runs"] = len(out["runs"]) - len(good)
    out["fault_to_halt_s"] = summary(r["fault_to_halt_s"] for r in good)
    out["fault_to_cancelled_s"] = summary(r["fault_to_cancelled_s"] for r in good)
    labels = list((good[0]["intervals"] or {}).keys()) if good else []
    out["intervals_s"] = {label: summary((r["intervals"] or {}).get(label) for r in good) for label in labels}
    out["loadavg_end"] = loadavg()
    return out
