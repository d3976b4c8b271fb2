"""`tradeops drill auto`: the closed loop, measured, with no human step.

1. A lab with monitoring (Prometheus, Alertmanager, exporters; every alert rule's ``for:`` cut to ``--lab-for``,
   printed) and ansible-rulebook with the collection's rulebook (``tradeops.eda``).
2. A fault: ``error-rate`` on one engine (seed 000 P1: error rate above 5 %).
3. Measured from outside, each step by its own witness: the alert firing in Prometheus (``/api/v1/alerts``),
   the webhook received (the source's journal), the playbook started (the automatic run's directory), the
   engine halted (its own state: ``halted_at``) and its working orders at zero (the exchange's own books).
4. The run must end contained (exit 0 or 2), with the engine still halted: an alert never resumes trading.
5. The fault is cleared; the resolved alert must reach the rulebook and start nothing.

Exits non-zero if any step fails or the fault-to-halt time misses the target.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import eda
from .drill import DrillOutcome, _epoch, find_root, poll
from .lab import Lab, LabError
from .lab.monitoring import firing_alerts

FAULT = "error-rate"
ALERT = "TradingErrorRateHigh"
TARGET_SECONDS = 30.0
STEP_TIMEOUT = 90.0
POLL = 0.1


def _poll(what: str, probe: Any, timeout: float = STEP_TIMEOUT) -> Any:
    return poll(what, probe, timeout, POLL)


def run_auto_drill(engines: int = 10, engine: str = "engine-003", lab_for: str = "3s", keep: bool = False,
                   root: Path | None = None, lab_dir: Path | None = None, out: TextIO = sys.stdout,
                   reports_dir: Path | None = None, target: float = TARGET_SECONDS) -> DrillOutcome:
    root = root or find_root()
    lab = Lab(lab_dir or (root / ".lab-drill-auto"))
    reports = reports_dir or (root / "reports")
    reports.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    report: dict[str, Any] = {"drill": "auto", "engines": engines, "engine": engine, "fault": FAULT,
                              "alert": ALERT, "target_s": target}

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if lab.is_up():
        say(f"drill auto: a previous drill lab is still up in {lab.lab_dir}; tearing it down")
        eda.stop(lab)
        lab.down()
    say(f"drill auto: 1/5 lab with monitoring: {engines} engines, Prometheus, Alertmanager, exporters")
    st = lab.up(engines=engines, order_interval=0.1, monitoring=True, monitoring_for_max=lab_for)
    try:
        if engine not in {e["name"] for e in st["engines"]}:
            raise LabError(f"no engine {engine} in a lab of {engines}")
        mon = st["monitoring"]
        say(f"  prometheus {mon['prometheus']['url']} (scrape {mon['scrape_interval']}), "
            f"alertmanager {mon['alertmanager']['url']}")
        cut = [c for c in mon["rules_shortened"] if c["alert"] == ALERT]
        report["lab_for"] = {c["alert"]: c for c in mon["rules_shortened"]}
        if cut:
            say(f"  LAB ONLY: {ALERT}'s `for: {cut[0]['original']}` is cut to {cut[0]['now']} (every rule's "
                f"`for:` is cut to at most {lab_for}; production waits the seeds' windows)")
        say("drill auto: 2/5 ansible-rulebook with tradeops.remediation.trading_incidents")
        rb = eda.start(lab, root)
        say(f"  ready in {rb['ready_after']}s; webhook {rb['webhook']['host']}:{rb['webhook']['port']}"
            f"{rb['webhook']['path']} (bearer token)")
        _wait_quiet(lab, mon)
        account_orders = lab.working_orders().get(engine, 0)
        say(f"drill auto: 3/5 fault {FAULT} on {engine} ({account_orders} working orders at the venue); "
            "no human step from here")
        t_fault = time.time()
        lab.inject(FAULT, [engine])
        times = _measure(lab, mon, engine, t_fault)
        report["times"] = times
        intervals = [
            ("fault injected -> alert firing in Prometheus", times["firing"] - t_fault),
            ("alert firing -> webhook received by the EDA source", times["webhook"] - times["firing"]),
            ("webhook received -> incident playbook started", times["started"] - times["webhook"]),
            ("playbook started -> engine verified halted", times["halted"] - times["started"]),
            ("engine halted -> its working orders at zero at the venue", times["cancelled"] - times["halted"]),
        ]
        for label, secs in intervals:
            say(f"  {label:<58} {secs:6.2f} s")
        to_halt = times["halted"] - t_fault
        to_cancel = times["cancelled"] - t_fault
        report.update({"fault_to_halt_s": round(to_halt, 2), "fault_to_cancelled_s": round(to_cancel, 2),
                       "intervals": {label: round(s, 2) for label, s in intervals}})
        say(f"  FAULT TO VERIFIED HALT: {to_halt:.2f} s; to zero working orders: {to_cancel:.2f} s "
            f"(target <= {target:g} s)")
        if to_halt > target:
            problems.append(f"fault to verified halt took {to_halt:.1f}s (> {target:g}s)")

        say("drill auto: 4/5 the automatic run ends contained, and never resumes")
        run = _poll("the automatic run to finish", lambda: next((r for r in eda.runs(lab) if not r["running"]),
                                                                 None), timeout=300)
        result = run["result"]
        report["run"] = {k: result.get(k) for k in ("run_id", "incident", "outcome", "exit_code", "halted",
                                                    "resumed", "elapsed_s", "report_path")}
        say(f"  run {result['run_id']}: {result['incident']}, {result['outcome']} (exit {result['exit_code']}), "
            f"halted {', '.join(result.get('halted') or []) or 'none'}")
        if result["exit_code"] not in (0, 2):
            problems.append(f"the automatic run ended {result['outcome']} (exit {result['exit_code']})")
        if engine not in (result.get("halted") or []):
            problems.append(f"the run's record does not show {engine} verified halted")
        if result.get("resumed"):
            problems.append(f"the automatic run resumed trading: {result['resumed']}")
        if not _engine(lab, engine).get("halted"):
            problems.append(f"{engine} trades again after the automatic run")

        say("drill auto: 5/5 the fault cleared: the resolved alert starts nothing")
        lab.inject(FAULT, [engine], clear=True)
        fingerprint = times["fingerprint"]
        resolved = _poll("the resolved alert at the EDA source", lambda: next(
            (a for a in eda.journal(lab) if a["fingerprint"] == fingerprint and a["status"] == "resolved"), None))
        _poll("the rulebook to handle the resolved alert", lambda: f"RESOLVED {ALERT} ({fingerprint})" in
              eda.log_path(lab).read_text(encoding="utf-8", errors="replace"), timeout=30)
        n_runs = len(eda.runs(lab))
        say(f"  resolved alert received {resolved['received_at'] - t_fault:.1f}s after the fault; the rulebook "
            f"recorded it; automatic runs: {n_runs}")
        report["runs_total"] = n_runs
        if n_runs != 1:
            problems.append(f"{n_runs} automatic runs for one alert (expected 1)")
        report["webhook"] = eda.webhook_counts(lab)
    except LabError as exc:
        problems.append(str(exc))
    finally:
        if not keep:
            eda.stop(lab)
            lab.down()
    report["problems"] = problems
    path = reports / f"drill-auto-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1, sort_keys=True))
    say(("drill auto: PASSED" if not problems else "drill auto: FAILED:\n  - " + "\n  - ".join(problems))
        + f"  (report {path})")
    return DrillOutcome(not problems, problems, report, path)


def _engine(lab: Lab, name: str) -> dict[str, Any]:
    return next(e for e in lab.status()["engines"] if e["name"] == name)


def _wait_quiet(lab: Lab, mon: dict[str, Any]) -> None:
    """Before the fault: every target scraped and no alert active, so what fires next is the fault's."""
    def quiet() -> bool:
        from .lab.monitoring import api_get

        targets = api_get(mon["prometheus"], "/api/v1/targets")["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets) and not firing_alerts(mon["prometheus"])
    _poll("every scrape target up and no alert active", quiet, timeout=60)


def _measure(lab: Lab, mon: dict[str, Any], engine: str, t_fault: float) -> dict[str, Any]:
    """Poll every witness until the engine is halted and its orders are at zero; the first time each was seen."""
    times: dict[str, Any] = {}
    deadline = time.monotonic() + STEP_TIMEOUT
    while not {"firing", "webhook", "started", "halted", "cancelled"} <= set(times):
        now = time.time()
        if "firing" not in times:
            for alert in firing_alerts(mon["prometheus"]):
                labels = alert["labels"]
                if labels.get("alertname") == ALERT and labels.get("engine") == engine and alert["state"] == "firing":
                    times["firing"] = now
        if "webhook" not in times:
            got = next((a for a in eda.journal(lab) if a["alertname"] == ALERT and a["status"] == "firing"
                        and a["labels"].get("engine") == engine), None)
            if got:
                times["webhook"] = got["received_at"]
                times["fingerprint"] = got["fingerprint"]
                times.setdefault("firing", _epoch(got["startsAt"]))  # fired between two polls
        if "started" not in times:
            started = eda.runs(lab)
            if started:
                times["started"] = started[0]["created"]
        if "halted" not in times:
            state = _engine(lab, engine)
            if state.get("halted") and state.get("halted_at") and state["halted_at"] >= t_fault:
                times["halted"] = float(state["halted_at"])
        if "halted" in times and "cancelled" not in times and lab.working_orders(exclude_stops=True).get(engine) == 0:
            times["cancelled"] = now
        if time.monotonic() > deadline:
            missing = sorted({"firing", "webhook", "started", "halted", "cancelled"} - set(times))
            raise LabError(f"the closed loop stopped short: never saw {', '.join(missing)} within "
                           f"{STEP_TIMEOUT:.0f}s of the fault")
        time.sleep(POLL)
    return times
