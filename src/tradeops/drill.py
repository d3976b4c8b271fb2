"""`tradeops drill p0`: the P0 drill that `make drill` runs.

1. Start a 20-engine lab with faults: three engines crashed, one hung, and one whose kill-switch
   API is broken (so the fallback is exercised).
2. Run the real `ansible-playbook playbooks/p0_outage.yml`. It must halt every engine, verified
   (the crashed and hung ones after their restart), restart exactly the broken engines, reach a
   GO health gate, and skip the resume for lack of approval, saying so.
3. Check in PostgreSQL, independently of the playbook, that no engine traded between the end
   of the contain phase and the resume, and that every engine traded before it.
4. Run `playbooks/resume_trading.yml` with approval and show that orders flow again.
5. Print the report (with MTTR: fault to all GO), write it to reports/, tear the lab down.

Exits non-zero if any step fails. The drill runs in its own lab directory (.lab-drill), so it
never disturbs a lab you started yourself with `tradeops lab up`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .lab import Lab, LabError

DEFAULT_FAULTS: dict[str, list[str]] = {
    "engine-002": ["killswitch-broken"],
    "engine-005": ["crash"],
    "engine-010": ["crash"],
    "engine-015": ["crash"],
    "engine-007": ["hang"],
}
REPAIRABLE = {"crash", "hang"}
SETTLE_SECONDS = 1.0
# The engines' first orders resting at the venue: without one, the contain phase's cancel proves nothing.
VENUE_WAIT_SECONDS = 30.0


@dataclass
class DrillOutcome:
    ok: bool
    problems: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    report_path: Path | None = None


def find_root(start: Path | None = None) -> Path:
    """The checkout root: the nearest directory with galaxy.yml and playbooks/."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "galaxy.yml").exists() and (candidate / "playbooks").is_dir():
            return candidate
    package_root = Path(__file__).resolve().parents[2]
    if (package_root / "galaxy.yml").exists():
        return package_root
    raise LabError("cannot find the tradeops.remediation checkout (galaxy.yml + playbooks/); run from inside it")


def _playbook_env(root: Path, lab_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
    env["TRADEOPS_LAB_DIR"] = str(lab_dir)
    env.pop("TRADEOPS_LAB_STATE", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _orders(lab: Lab, sql: str, args: tuple) -> dict[str, int]:
    conn = lab.pg_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return {name: int(n) for name, n in cur.fetchall()}
    finally:
        conn.close()


def poll(what: str, probe: Any, timeout: float, interval: float = 0.1) -> Any:
    """``probe()`` until it returns something truthy; LabError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def run_p0_drill(engines: int = 20, faults: dict[str, Any] | None = None, keep: bool = False,
                 root: Path | None = None, lab_dir: Path | None = None, out=sys.stdout,
                 extra_vars: dict[str, Any] | None = None, reports_dir: Path | None = None) -> DrillOutcome:
    """``extra_vars`` (for example the notification channels, secrets included) reach both playbooks through a
    0600 file removed at the end."""
    root = root or find_root()
    lab_dir = lab_dir or (root / ".lab-drill")
    faults = {name: ([f] if isinstance(f, str) else list(f))
              for name, f in (DEFAULT_FAULTS if faults is None else faults).items()}
    reports = reports_dir or (root / "reports")
    reports.mkdir(parents=True, exist_ok=True)
    incident = "p0-drill-" + time.strftime("%Y%m%dT%H%M%S")
    lab = Lab(lab_dir)
    problems: list[str] = []
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
    env = _playbook_env(root, lab_dir)

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    def ansible(name: str, *extra: str) -> subprocess.CompletedProcess:
        """Run a playbook with its output streamed to the user and kept for the checks."""
        cmd = [playbook, f"playbooks/{name}", "-e", f"p0_outage_incident_id={incident}",
               "-e", f"resume_trading_incident_id={incident}",
               "-e", f"incident_report_dir={reports}", "-e", f"evidence_dest={reports / 'evidence'}",
               *(["-e", f"@{vars_file}"] if vars_file else []), *extra]
        lines: list[str] = []
        with subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                out.write("  | " + line)
            rc = proc.wait(timeout=900)
        out.flush()
        return subprocess.CompletedProcess(cmd, rc, "".join(lines), "")

    vars_file = None
    if extra_vars:
        fd, vars_file = tempfile.mkstemp(prefix="tradeops-drill-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(extra_vars, fh)
    if lab.is_up():
        say(f"drill: a previous drill lab is still up in {lab_dir}; tearing it down")
        lab.down()
    say(f"drill: 1/5 starting the lab: {engines} engines; faults: "
        + (", ".join(f"{n}={'+'.join(f)}" for n, f in sorted(faults.items())) or "none"))
    lab.up(engines=engines, faults=faults, order_interval=0.1)
    fault_at = time.time()
    try:
        time.sleep(SETTLE_SECONDS)
        try:
            poll("a working order at the venue", lambda: any(lab.working_orders().values()), VENUE_WAIT_SECONDS, 0.2)
        except LabError as err:
            say(f"drill: {err}; the checks after the run will say the venue proof is vacuous")
        names = [e["name"] for e in lab.state["engines"]]
        to_repair = sorted(n for n, f in faults.items() if REPAIRABLE & set(f))

        say("drill: 2/5 ansible-playbook playbooks/p0_outage.yml (no approval: it must stop before the resume)")
        started = time.time()
        p0 = ansible("p0_outage.yml")
        p0_seconds = time.time() - started
        (reports / f"{incident}-p0_outage.log").write_text(p0.stdout + p0.stderr)
        if p0.returncode != 0:
            problems.append(f"p0_outage.yml exited {p0.returncode} (log: reports/{incident}-p0_outage.log)")
        if "Resume SKIPPED: no approval" not in p0.stdout:
            problems.append("p0_outage did not say that the resume was skipped for lack of approval")
        record_path = reports / f"{incident}.json"
        if not record_path.is_file():
            problems.append("p0_outage wrote no incident record")
            return DrillOutcome(False, problems)
        incident_report = json.loads(record_path.read_text())
        halts = {h["phase"]: h for h in incident_report["halts"]}
        contain, reverify = halts.get("contain"), halts.get("re-verify")
        if not contain or not reverify:
            problems.append("the report lacks the contain or re-verify halt")
            return DrillOutcome(False, problems)

        say("drill: 3/5 checking the engines and PostgreSQL")
        view = {e["name"]: e for e in lab.engines()}
        restarted = sorted(n for n, e in view.items() if e.get("restarts"))
        if restarted != to_repair:
            problems.append(f"restarted {restarted}, expected exactly {to_repair}")
        verified = sorted(reverify["done"] + reverify["already"])
        if verified != sorted(names):
            problems.append(f"not every engine verified halted: missing {sorted(set(names) - set(verified))}")
        still = sorted(n for n, e in view.items() if e.get("trading_active"))
        if still:
            problems.append(f"engines trading before any approval: {still}")
        gate = (incident_report.get("gate") or {}).get("status")
        if gate != "GO":
            problems.append(f"health gate {gate}: {(incident_report.get('gate') or {}).get('nogo_probes')}")
        contained_at = _epoch(contain["at"])
        now = time.time()
        after = _orders(lab, "SELECT engine, count(*) FROM orders WHERE created_at > to_timestamp(%s) "
                             "AND created_at <= to_timestamp(%s) GROUP BY engine", (contained_at, now))
        before = _orders(lab, "SELECT engine, count(*) FROM orders WHERE created_at <= to_timestamp(%s) "
                              "GROUP BY engine", (contained_at,))
        for name in names:
            if after.get(name):
                problems.append(f"{name} wrote {after[name]} orders after the contain phase")
            if not before.get(name) and name not in faults:
                problems.append(f"{name} never traded before the halt: the proof would be vacuous")
        venue = incident_report.get("venue") or {}
        cancels = [c for c in venue.get("calls") or []
                   if c.get("action") == "cancel_all" and c.get("phase") == "contain"]
        venue_accounts = {a["name"]: a for a in (cancels[0]["accounts"] if cancels else [])}
        if not cancels:
            problems.append("the contain phase did not cancel the working orders at the venue")
        else:
            if not venue.get("working_before"):
                problems.append("no working order at the venue before the contain phase: the proof would be vacuous")
            if venue.get("working_after") != 0 or venue.get("unverified"):
                problems.append(f"working orders left at the venue after contain: {venue.get('working_after')} "
                                f"(not verified: {venue.get('unverified')})")
            # what the health gate placed (a protective stop-loss on every position) is not a working order
            working_now = lab.working_orders(exclude_stops=True)
            if any(working_now.values()):
                problems.append(f"the exchange lists working orders after contain: {working_now}")
            fills = lab.venue_fills(since=_epoch(cancels[0]["at"]))
            if fills:
                problems.append(f"{len(fills)} fill(s) at the venue after the verified cancel: "
                                f"{sorted({f['account'] for f in fills})}")
        gate_at = _epoch(incident_report["gate"]["at"]) if incident_report.get("gate") else None
        mttr = round(gate_at - fault_at, 1) if gate_at else None

        say("drill: 4/5 ansible-playbook playbooks/resume_trading.yml -e resume_trading_approved=true")
        resume_started = time.time()
        resume = ansible("resume_trading.yml", "-e", "resume_trading_approved=true")
        (reports / f"{incident}-resume_trading.log").write_text(resume.stdout + resume.stderr)
        if resume.returncode != 0:
            problems.append(f"resume_trading.yml exited {resume.returncode} "
                            f"(log: reports/{incident}-resume_trading.log)")
        time.sleep(SETTLE_SECONDS)
        flowing = _orders(lab, "SELECT engine, count(*) FROM orders WHERE created_at > to_timestamp(%s) "
                               "GROUP BY engine", (resume_started,))
        silent = sorted(n for n in names if not flowing.get(n))
        if silent:
            problems.append(f"no new orders after the approved resume from: {silent}")
        final = json.loads(record_path.read_text())
        verdict = (final.get("verdict") or {}).get("text")
        if not (final.get("verdict") or {}).get("closed"):
            problems.append(f"the incident record is not resolved after the approved resume: {verdict}")

        first = {t["name"]: t for t in contain.get("targets", [])}
        report = {
            "drill": "p0_outage",
            "incident": incident,
            "engines": len(names),
            "faults": faults,
            "p0_outage_rc": p0.returncode,
            "p0_outage_seconds": round(p0_seconds, 1),
            "contain_ms": contain.get("elapsed_ms"),
            "halted_in_contain": len(contain["done"]) + len(contain["already"]),
            "venue_working_orders_before_contain": venue.get("working_before"),
            "venue_working_orders_after_contain": venue.get("working_after"),
            "venue_unverified": venue.get("unverified"),
            "left_to_repair_by_contain": sorted(contain["failed"] + contain["unverified"]),
            "restarted": restarted,
            "verified_halted_after_repair": len(verified),
            "health_gate": gate,
            "mttr_fault_to_all_go_seconds": mttr,
            "resume_rc": resume.returncode,
            "engines_trading_after_resume": len(names) - len(silent),
            "incident_report": str(record_path),
            "postmortem": str(record_path.with_suffix(".md")),
            "incident_verdict": verdict,
            "problems": problems,
            "verdict": "PASS" if not problems else "FAIL",
        }
        report_path = reports / f"{incident}-drill.json"
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        os.chmod(report_path, 0o600)

        say("drill: 5/5 report")
        say(f"  {'engine':<11} {'contain':<13} {'method':<7} {'time':>8}  {'restarted':<9} "
            f"{'traded after contain':>20}  {'venue orders':>12}")
        for name in names:
            t = first.get(name, {})
            v = venue_accounts.get(name, {})
            orders_at_venue = f"{v.get('working_before', '-')} -> {v.get('working_after', '-')}"
            say(f"  {name:<11} {t.get('status', '-'):<13} {t.get('method') or '-':<7} "
                f"{str(t.get('latency_ms', '-')) + ' ms':>8}  {'yes' if name in restarted else '-':<9} "
                f"{after.get(name, 0):>20}  {orders_at_venue:>12}")
        say(f"  contain: {report['halted_in_contain']}/{len(names)} verified in {contain.get('elapsed_ms')} ms; "
            f"left to repair: {', '.join(report['left_to_repair_by_contain']) or 'none'}")
        say(f"  venue: {venue.get('working_before')} working order(s) before contain, {venue.get('working_after')} "
            f"after, read back from the exchange; not verified: {', '.join(venue.get('unverified') or []) or 'none'}")
        say(f"  repair: restarted {', '.join(restarted) or 'none'}; after repair "
            f"{len(verified)}/{len(names)} verified halted; health gate {gate}")
        say(f"  MTTR (fault to all GO): {mttr} s; p0_outage.yml took {report['p0_outage_seconds']} s")
        say(f"  resume (approved): {report['engines_trading_after_resume']}/{len(names)} engines trading again")
        for p in problems:
            say(f"  PROBLEM: {p}")
        say(f"  incident: {verdict}; record {record_path}, post-mortem draft {record_path.with_suffix('.md')}")
        say(f"  verdict: {report['verdict']}   report: {report_path}")
        return DrillOutcome(not problems, problems, report, report_path)
    finally:
        if vars_file:
            os.unlink(vars_file)
        if keep:
            say(f"drill: lab kept running in {lab_dir} (tradeops lab down --dir {lab_dir})")
        else:
            lab.down()
            say("drill: lab torn down")
