"""Scale (issue 20): what a P0 costs a fleet that is mostly healthy.

- ``p0_healthy``: the whole ``ansible-playbook playbooks/p0_outage.yml`` (no resume approval) on a fresh lab of
  ``engines`` (default 200) with no fault, process start to exit: every phase, though nothing needs repair.
- ``mttr``: the P0 drill (``tradeops drill p0``'s ``run_p0_drill``) on ``engines`` with 10 % of them faulted
  (crashed and hung, alternately; their kill switch answers otherwise), fault to every engine GO.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BIN, ROOT, ansible_env, loadavg, log, summary
from halt import order_interval

from tradeops.drill import run_p0_drill
from tradeops.lab import Lab
from tradeops.lab.state import engine_name

RUN_TIMEOUT = 900.0


def faults_for(engines: int, share: float = 0.1) -> dict[str, list[str]]:
    """Every tenth engine: crashed, then hung, alternately."""
    step = max(1, round(1 / share))
    names = [engine_name(i - 1, engines) for i in range(step, engines + 1, step)]
    return {name: ["crash" if k % 2 == 0 else "hang"] for k, name in enumerate(names)}


def p0_healthy(runs: int, work: Path, engines: int) -> dict[str, Any]:
    out: dict[str, Any] = {"engines": engines, "runs": []}
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="p0h-", dir=work) as tmp:
            lab = Lab(Path(tmp) / "lab")
            lab.up(engines=engines, order_interval=order_interval(engines), timeout=300)
            try:
                t0 = time.time()
                proc = subprocess.run([str(BIN / "ansible-playbook"), "playbooks/p0_outage.yml",
                                       "-e", f"incident_report_dir={tmp}/reports",
                                       "-e", f"evidence_dest={tmp}/evidence"],
                                      cwd=ROOT, env=ansible_env(lab.lab_dir), capture_output=True, text=True,
                                      timeout=RUN_TIMEOUT)
                wall = round(time.time() - t0, 2)
            finally:
                lab.down()
        run = {"rc": proc.returncode, "wall_s": wall, "ok": proc.returncode == 0}
        if not run["ok"]:
            run["output_tail"] = (proc.stdout + proc.stderr)[-1500:]
        out["runs"].append(run)
        log(f"scale p0 on {engines} healthy engines, run {i + 1}/{runs}: {wall} s, rc {proc.returncode}")
    out["wall_s"] = summary(r["wall_s"] for r in out["runs"] if r["ok"])
    out["failed_runs"] = sum(not r["ok"] for r in out["runs"])
    return out


def mttr(runs: int, work: Path, engines: int) -> dict[str, Any]:
    faults = faults_for(engines)
    out: dict[str, Any] = {"engines": engines, "faulted": len(faults), "runs": []}
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="mttr200-", dir=work) as tmp:
            buf = io.StringIO()
            outcome = run_p0_drill(engines=engines, faults=faults, root=ROOT, lab_dir=Path(tmp) / "lab", out=buf,
                                   reports_dir=Path(tmp) / "reports")
        rep = outcome.report
        run = {"ok": outcome.ok, "mttr_s": rep.get("mttr_fault_to_all_go_seconds"),
               "p0_outage_s": rep.get("p0_outage_seconds"), "problems": outcome.problems}
        if not outcome.ok:
            run["output_tail"] = buf.getvalue()[-1500:]
        out["runs"].append(run)
        log(f"scale mttr {engines} engines ({len(faults)} faulted), run {i + 1}/{runs}: MTTR {run['mttr_s']} s, "
            f"{'PASS' if outcome.ok else 'FAIL'}")
    out["mttr_s"] = summary(r["mttr_s"] for r in out["runs"] if r["ok"])
    out["failed_runs"] = sum(not r["ok"] for r in out["runs"])
    return out


def run_scale(runs: int, work: Path, engines: int = 200) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "loadavg_start": loadavg()}
    out["p0_healthy"] = p0_healthy(runs, work, engines)
    out["mttr"] = mttr(runs, work, engines)
    out["failed_runs"] = out["p0_healthy"]["failed_runs"] + out["mttr"]["failed_runs"]
    out["loadavg_end"] = loadavg()
    return out
