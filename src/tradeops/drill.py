"""`tradeops drill p0`: the P0 drill that `make drill` runs.

1. Start a lab (20 engines by default, a mix of every kill-switch family, one engine whose
   kill-switch API is broken so the fallback is exercised).
2. Run the real `ansible-playbook playbooks/p0_outage.yml` against it, output streamed.
3. Check in PostgreSQL, independently of the playbook, that every engine is halted and verified
   and that no engine wrote an order after its halt (and that each traded before it).
4. Print the report, write it to reports/, and tear the lab down.

Exits non-zero if any step fails. The drill runs in its own lab directory (.lab-drill), so it
never disturbs a lab you started yourself with `tradeops lab up`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lab import Lab, LabError

DEFAULT_FAULTS = {"engine-002": ["killswitch-broken"]}
SETTLE_SECONDS = 1.0


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
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


def _per_engine_orders(lab: Lab, marks: dict[str, float]) -> dict[str, tuple[int, int]]:
    """For each engine: (orders in the 30 s before its halt, orders after its halt)."""
    conn = lab.pg_connect()
    try:
        with conn.cursor() as cur:
            out = {}
            for name, at in marks.items():
                cur.execute(
                    "SELECT count(*) FILTER (WHERE created_at > to_timestamp(%s) - interval '30 seconds'"
                    "                          AND created_at <= to_timestamp(%s)),"
                    "       count(*) FILTER (WHERE created_at > to_timestamp(%s))"
                    "  FROM orders WHERE engine = %s",
                    (at, at, at, name),
                )
                before, after = cur.fetchone()
                out[name] = (int(before), int(after))
            return out
    finally:
        conn.close()


def run_p0_drill(engines: int = 20, faults: dict[str, Any] | None = None, keep: bool = False,
                 root: Path | None = None, lab_dir: Path | None = None, out=sys.stdout) -> DrillOutcome:
    root = root or find_root()
    lab_dir = lab_dir or (root / ".lab-drill")
    faults = {name: ([f] if isinstance(f, str) else list(f))
              for name, f in (DEFAULT_FAULTS if faults is None else faults).items()}
    reports = root / "reports"
    reports.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    halt_json = reports / f"p0-drill-{stamp}-halt.json"
    lab = Lab(lab_dir)
    problems: list[str] = []

    def say(msg: str = "") -> None:
        print(msg, file=out, flush=True)

    if lab.is_up():
        say(f"drill: a previous drill lab is still up in {lab_dir}; tearing it down")
        lab.down()
    say(f"drill: 1/4 starting the lab: {engines} engines, faults {faults or 'none'}")
    lab.up(engines=engines, faults=faults, order_interval=0.1)
    try:
        time.sleep(SETTLE_SECONDS)  # let every engine build up some order history
        state = lab.state
        say(f"drill: 2/4 ansible-playbook playbooks/p0_outage.yml ({len(state['engines'])} engines)")
        playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or "ansible-playbook"
        started = time.time()
        proc = subprocess.run(
            [playbook, "playbooks/p0_outage.yml", "-e", f"halt_trading_report_path={halt_json}"],
            cwd=root, env=_playbook_env(root, lab_dir), check=False, timeout=600,
        )
        finished = time.time()
        if proc.returncode != 0:
            problems.append(f"ansible-playbook exited {proc.returncode}")
        if not halt_json.exists():
            problems.append("the playbook wrote no halt report")
            return DrillOutcome(False, problems)

        say("drill: 3/4 checking PostgreSQL: no engine may have written an order after its halt")
        time.sleep(SETTLE_SECONDS)
        halt = json.loads(halt_json.read_text())["result"]
        targets = {t["name"]: t for t in halt["targets"]}
        missing = sorted(set(e["name"] for e in state["engines"]) - set(targets))
        if missing:
            problems.append("engines missing from the halt result: " + ", ".join(missing))
        marks = {name: t["halted_at"] for name, t in targets.items() if t.get("halted_at")}
        for name, t in sorted(targets.items()):
            if t["status"] not in ("halted", "already_halted") or not t.get("verified"):
                problems.append(f"{name} is {t['status']}, not verified halted: {t.get('error')}")
        orders = _per_engine_orders(lab, marks)
        for name, (before, after) in sorted(orders.items()):
            if after:
                problems.append(f"{name} wrote {after} orders after its verified halt")
            if not before:
                problems.append(f"{name} wrote no order before its halt: the proof would be vacuous")
        fell_back = sorted(n for n, t in targets.items()
                           if t.get("methods_tried") and t["methods_tried"][0].get("error") and t.get("verified"))
        for name, active in faults.items():
            broken = [f for f in active if f.startswith("killswitch")]
            if broken and name not in fell_back:
                problems.append(f"{name} has a {broken[0]} kill switch but no fallback was recorded")

        last = max(marks.values()) if marks else None
        report = {
            "drill": "p0_outage",
            "engines": len(state["engines"]),
            "faults": faults,
            "playbook_rc": proc.returncode,
            "playbook_seconds": round(finished - started, 2),
            "start_to_last_verified_halt_seconds": round(last - started, 3) if last else None,
            "fan_out_ms": halt.get("elapsed_ms"),
            "fell_back": fell_back,
            "engines_detail": [
                {"name": n, "status": t["status"], "method": t.get("method"),
                 "methods_tried": [a["type"] for a in t.get("methods_tried", [])],
                 "time_to_halt_ms": t.get("latency_ms"),
                 "orders_before": orders.get(n, (None, None))[0], "orders_after": orders.get(n, (None, None))[1]}
                for n, t in sorted(targets.items())
            ],
            "problems": problems,
            "verdict": "PASS" if not problems else "FAIL",
        }
        report_path = reports / f"p0-drill-{stamp}.json"
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        os.chmod(report_path, 0o600)

        say("drill: 4/4 report")
        say(f"  {'engine':<11} {'status':<15} {'method':<7} {'tried':<12} {'time':>8} {'before':>7} {'after':>6}")
        for row in report["engines_detail"]:
            say(f"  {row['name']:<11} {row['status']:<15} {row['method'] or '-':<7} "
                f"{'>'.join(row['methods_tried']) or '-':<12} {str(row['time_to_halt_ms']) + ' ms':>8} "
                f"{row['orders_before']!s:>7} {row['orders_after']!s:>6}")
        say(f"  engines halted and verified: {len(marks)}/{len(state['engines'])}; "
            f"fell back: {', '.join(fell_back) or 'none'}")
        say(f"  playbook start -> last verified halt: {report['start_to_last_verified_halt_seconds']} s "
            f"(fan-out {report['fan_out_ms']} ms); playbook total {report['playbook_seconds']} s")
        for p in problems:
            say(f"  PROBLEM: {p}")
        say(f"  verdict: {report['verdict']}   report: {report_path}")
        return DrillOutcome(not problems, problems, report, report_path)
    finally:
        if keep:
            say(f"drill: lab kept running in {lab_dir} (tradeops lab down --dir {lab_dir})")
        else:
            lab.down()
            say("drill: lab torn down")
