"""Time to halt N lab engines, five ways, measured from process start to the last engine's own halt record.

Paths (each a separate process, started with ``subprocess.Popen``; t0 is taken just before it):

- a. ``ansible-playbook playbooks/p0_outage.yml --tags contain`` (halt_trading: one concurrent module call,
  each halt read back; the venue's cancel-all, which runs during the quiesce and reads the venue back again when
  it ends; then the orders proof. The lab inventory's defaults, including its quiesce before the orders are
  counted: three order intervals after the last engine's verified halt, 0.6 s up to 200 engines, 3 s at 1,000,
  whose order interval is 1 s);
- b. ``tradeops run p0_outage --tags contain`` (the same playbook through ansible-runner);
- c. baseline: one ``ansible.builtin.uri`` task per host, forks=50 (``bench/halt_uri_baseline.yml``);
- d. baseline: a sequential ``/usr/bin/curl`` loop, the seeds' way (``bench/halt_curl_loop.sh``);
- e. floor: a bare thread-pool fan-out (``bench/halt_floor.py``).

The end of a run is what the ENGINES record: each engine appends ``halt requested via <method>: ...`` to its
own ``engine.log`` (``src/tradeops/lab/engines.py``, ``Engine._halt_via_api``) the moment it accepts the kill
switch, with a millisecond stamp. ``time_to_last_halt_s`` is the latest of those minus t0. Each engine also
logs ``halted (...)`` when its trading loop next sees the halt (at most one order interval, 0.2 s, later);
that is reported as ``time_to_last_stopped_s``. After every run the control API must show every engine
halted (``halted_verified``), else the run is marked failed.

Fresh state per run, outside the timed window: every engine is restarted through the lab's control API
(a restart drops the in-memory API halts, like a process restart), any EMERGENCY_STOP flag file is removed,
and the harness waits until every engine trades again (a new order committed) before the next t0. Paths a and b
open a new incident record in the run's own folder (``incident_report_dir``): the playbook continues an open record
of the same incident id, which would grow with every run and slow the next.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import BENCH, BIN, ROOT, ansible_env, engine_halts, loadavg, log, ratio, summary

from tradeops.lab import Lab

PATHS = {
    "a": "ansible-playbook p0_outage.yml --tags contain",
    "b": "tradeops run p0_outage --tags contain",
    "c": "baseline: one ansible.builtin.uri task per host, forks=50",
    "d": "baseline: sequential curl loop (the seeds' way)",
    "e": "floor: bare Python thread-pool fan-out",
}
ORDER_INTERVAL = 0.2


def order_interval(engines: int) -> float:
    """0.2 s up to 200 engines; slower beyond, so 1,000 engines write 1,000 orders a second, not 5,000 (the lab's
    one PostgreSQL on 2 cores is not the subject here)."""
    return max(ORDER_INTERVAL, engines / 1000.0)
READY_TIMEOUT = 60.0
RUN_TIMEOUT = 600.0


class HaltBench:
    def __init__(self, engines: int, work: Path, uri_forks: int = 50) -> None:
        self.n = engines
        self.work = work
        self.uri_forks = uri_forks
        self.lab = Lab(work / f"lab-{engines}")
        self.names: list[str] = []
        self.dirs: dict[str, Path] = {}

    # -- lab -----------------------------------------------------------------------------------------------
    def up(self) -> float:
        started = time.monotonic()
        self.lab.up(engines=self.n, mix="killswitch_api", order_interval=order_interval(self.n), timeout=300)
        st = self.lab.state
        self.names = [e["name"] for e in st["engines"]]
        self.dirs = {e["name"]: Path(e["dir"]) for e in st["engines"]}
        return round(time.monotonic() - started, 2)

    def down(self) -> None:
        self.lab.down()

    def reset(self) -> None:
        """Every engine trading again, no halt source left (outside the timed window)."""
        for d in self.dirs.values():
            (d / "EMERGENCY_STOP").unlink(missing_ok=True)
        before = {e["name"]: e["orders_written"] for e in self.lab.engines()}
        self.lab.restart("*", timeout=120)
        deadline = time.monotonic() + READY_TIMEOUT + self.n * 0.1
        while True:
            view = self.lab.engines()
            pending = [e["name"] for e in view
                       if e["halted"] or not e["trading_active"] or e["orders_written"] <= before.get(e["name"], 0)]
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"engines not trading again after the reset: {pending[:10]}")
            time.sleep(0.2)
        time.sleep(0.5)  # settle: the restart's own work is done before t0

    # -- one run ---------------------------------------------------------------------------------------------
    def command(self, path: str, tmp: Path) -> list[str]:
        if path == "a":
            return [str(BIN / "ansible-playbook"), "playbooks/p0_outage.yml", "--tags", "contain",
                    "-e", f"incident_report_dir={tmp / 'reports'}"]
        if path == "b":
            return [str(BIN / "tradeops"), "run", "p0_outage", "--tags", "contain", "--progress", "none",
                    "--runs-dir", str(tmp / "runs"),
                    "-e", f"incident_report_dir={tmp / 'reports'}"]
        if path == "c":
            return [str(BIN / "ansible-playbook"), "bench/halt_uri_baseline.yml", "-f", str(self.uri_forks)]
        if path == "d":
            urls = tmp / "urls.txt"
            urls.write_text("".join(f"http://{e['host']}:{e['port']}/api/v1/emergency/kill_switch\n"
                                    for e in self.lab.state["engines"]))
            headers = tmp / "headers.txt"
            fd = os.open(headers, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"X-Admin-Token: {self.lab.admin_token()}\n")
            return ["/bin/bash", str(BENCH / "halt_curl_loop.sh"), str(urls), str(headers)]
        if path == "e":
            return [str(BIN / "python"), str(BENCH / "halt_floor.py"), str(self.lab.lab_dir)]
        raise ValueError(path)

    def run_once(self, path: str) -> dict[str, Any]:
        self.reset()
        with tempfile.TemporaryDirectory(prefix=f"halt-{path}-", dir=self.work) as t:
            tmp = Path(t)
            argv = self.command(path, tmp)
            out = tmp / "out.log"
            with open(out, "wb") as fh:
                t0 = time.time()
                proc = subprocess.Popen(argv, cwd=ROOT, env=ansible_env(self.lab.lab_dir), stdout=fh,
                                        stderr=subprocess.STDOUT)
                rc = proc.wait(timeout=RUN_TIMEOUT)
            wall = time.time() - t0
            time.sleep(order_interval(self.n) + 0.2)  # let every trading loop tick once more and log its stop
            halts = engine_halts(self.dirs, t0)
            view = {e["name"]: e for e in self.lab.engines()}
            accepted = [h["accepted"] for h in halts.values()]
            stopped = [h["stopped"] for h in halts.values()]
            missing = [n for n, h in halts.items() if h["accepted"] is None and h["stopped"] is None]
            not_halted = [n for n in self.names if not view[n]["halted"]]
            run: dict[str, Any] = {
                "rc": rc,
                "wall_s": round(wall, 3),
                "engines": self.n,
                "halts_recorded": self.n - len(missing),
                "halted_verified": self.n - len(not_halted),
                "time_to_last_halt_s": None,
                "time_to_first_halt_s": None,
                "time_to_last_stopped_s": None,
            }
            # the engine's acceptance of the kill switch; for an engine halted by another source, its loop stop
            ends = [a if a is not None else s for a, s in zip(accepted, stopped, strict=True)]
            if not missing:
                run["time_to_last_halt_s"] = round(max(ends) - t0, 3)
                run["time_to_first_halt_s"] = round(min(ends) - t0, 3)
            if all(s is not None for s in stopped):
                run["time_to_last_stopped_s"] = round(max(stopped) - t0, 3)
            # the module's own figures, from the incident record the run wrote (what a user's run writes too: the
            # role's halt_trading_report_path would add a copy of the whole result, 1.4 s at 1,000 engines)
            record = tmp / "reports" / "p0-outage.json"
            if record.exists():
                halt = json.loads(record.read_text())["halts"][0]
                verified = [tg["verified_at"] for tg in halt["targets"] if tg.get("verified_at")]
                run["module_elapsed_s"] = round(halt["elapsed_ms"] / 1000.0, 3)
                run["module_verified"] = len(halt["done"]) + len(halt["already"])
                if verified:
                    run["time_to_last_verified_s"] = round(max(verified) - t0, 3)
            run["ok"] = rc == 0 and not missing and not not_halted
            if not run["ok"]:
                run["problem"] = (f"rc={rc}; no halt record: {missing[:5]}; not halted: {not_halted[:5]}; "
                                  f"output tail: {out.read_text(errors='replace')[-600:]}")
            return run


def run_halt(engines_list: list[int], paths: list[str], runs: int, work: Path,
             runs_for: dict[tuple[int, str], int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "order_interval_s": ORDER_INTERVAL,
                           "by_engines": {}}
    for n in engines_list:
        bench = HaltBench(n, work)
        section: dict[str, Any] = {"loadavg_start": loadavg()}
        log(f"halt N={n}: lab up")
        section["lab_up_s"] = bench.up()
        try:
            section["paths"] = {}
            for path in paths:
                count = (runs_for or {}).get((n, path), runs)
                results = []
                for i in range(count):
                    r = bench.run_once(path)
                    log(f"halt N={n} {path} run {i + 1}/{count}: last halt {r['time_to_last_halt_s']} s, "
                        f"wall {r['wall_s']} s, ok={r['ok']}")
                    results.append(r)
                good = [r for r in results if r["ok"]]
                section["paths"][path] = {
                    "label": PATHS[path],
                    "runs": results,
                    "time_to_last_halt_s": summary(r["time_to_last_halt_s"] for r in good),
                    "time_to_last_stopped_s": summary(r["time_to_last_stopped_s"] for r in good),
                    "wall_s": summary(r["wall_s"] for r in good),
                    "failed_runs": len(results) - len(good),
                }
                if any("time_to_last_verified_s" in r for r in good):
                    section["paths"][path]["time_to_last_verified_s"] = summary(
                        r.get("time_to_last_verified_s") for r in good)
                    section["paths"][path]["module_elapsed_s"] = summary(r.get("module_elapsed_s") for r in good)
        finally:
            bench.down()
        med = {p: v["time_to_last_halt_s"]["median"] for p, v in section["paths"].items()}
        section["ratios"] = {
            "a/e": ratio(med.get("a"), med.get("e")),
            "b/a": ratio(med.get("b"), med.get("a")),
            "c/a": ratio(med.get("c"), med.get("a")),
            "d/a": ratio(med.get("d"), med.get("a")),
        }
        section["loadavg_end"] = loadavg()
        out["by_engines"][str(n)] = section
    return out
