"""Fault to GO for the scoped incident playbooks (issues 17, 18), each on a 20-engine lab with its fault injected.

For each case: a fresh lab, the fault injected at ``fault_at``, the symptom awaited as a probe would see it, then
``ansible-playbook playbooks/<case>.yml`` with the resume approved. Fault to GO is the incident record's
``gate.at`` (the health gate passed; model_degradation has no resume, its GO is
``model_probes`` verified in its record; db_connectivity's lock and cache case halts nothing, its GO is its last repair
read GO)
minus ``fault_at``; ``playbook_s`` is the whole run. The stability windows are shortened to 2 s for the lab
(the playbooks' defaults are 30-60 s, which would dominate every figure) and trading_halted's post-unhalt watch
to 5 s; the figures say how fast the automation reaches GO, not how long production should wait.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import BIN, ROOT, ansible_env, loadavg, log, summary

from tradeops.lab import Lab

STABLE = "2"


def _epoch(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the fault's symptom did not show")
        time.sleep(0.2)


def _view(lab: Lab) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in lab.engines()}


def _service_degraded(lab: Lab) -> list[str]:
    lab.inject("error-rate", ["engine-002"])
    _wait(lambda: _view(lab)["engine-002"]["errors_total"] > 0)
    return ["-e", f"service_degraded_stable_for={STABLE}"]


def _trading_halted(lab: Lab) -> list[str]:
    lab.inject("self-halt-error", ["engine-002"])
    _wait(lambda: _view(lab)["engine-002"]["halted"])
    lab.inject("self-halt-error", ["engine-002"], clear=True)  # the cause fixed; the engine's own halt stays
    return ["-e", f"trading_halted_stable_for={STABLE}", "-e", "trading_halted_watch_seconds=5"]


def _model_degradation(lab: Lab) -> list[str]:
    lab.inject("model-drift", ["engine-003"])
    _wait(lambda: _view(lab)["engine-003"]["model"]["drift"])
    return ["-e", f"model_degradation_stable_for={STABLE}", "-e", "model_degradation_action=backup"]


def _performance_degradation(lab: Lab) -> list[str]:
    lab.inject("memory-leak", ["engine-002"])
    lab.inject("cpu-hog", ["engine-004"])
    lab.inject("table-bloat")
    return ["-e", f"performance_degradation_stable_for={STABLE}", "-e", "performance_degradation_window=5"]


def _agent_failure(lab: Lab) -> list[str]:
    lab.inject("crash-loop", ["engine-003"])
    _wait(lambda: _view(lab)["engine-003"]["restarts"] >= 2)
    return ["-e", f"agent_failure_stable_for={STABLE}", "-e", "agent_failure_rto_seconds=10",
            "-e", "agent_failure_restart_stable_for=3"]


def _database_health(lab: Lab) -> bool:
    return bool(lab.control("GET", "/lab/health")["database"])


def _pg_down(lab: Lab) -> list[str]:
    lab.inject("pg-down")
    _wait(lambda: not _database_health(lab))
    return ["-e", f"db_connectivity_stable_for={STABLE}"]


def _redis_down(lab: Lab) -> list[str]:
    lab.inject("redis-down")
    _wait(lambda: not lab.service_running("redis"))
    return ["-e", f"db_connectivity_stable_for={STABLE}"]


def _pooler_stuck(lab: Lab) -> list[str]:
    lab.inject("pooler-stuck")
    _wait(lambda: not lab.service_running("pgbouncer"))
    return ["-e", f"db_connectivity_stable_for={STABLE}"]


def _stream_backlog(lab: Lab) -> list[str]:
    lab.inject("stream-poison")
    _wait(lambda: lab.redis_client().xlen("notify.events.dlq") >= 4)
    stuck = lab.inject("stream-consumer-stuck")["consumer"]
    _wait(lambda: lab.streams()["notify.events"]["stuck"] == [stuck])
    # a consumer is stuck once its oldest message is past the claim threshold (2 s here)
    _wait(lambda: any(r["time_since_delivered"] >= 2500 for r in
                      lab.redis_client().xpending_range("notify.events", "notify", "-", "+", 1)))
    return ["-e", "stream_backlog_claim_idle_seconds=2", "-e", "stream_backlog_drain_timeout=30"]


def _exchange_down(lab: Lab) -> list[str]:
    lab.inject("exchange-down")
    return []


def _config(lab: Lab, name: str) -> dict[str, Any]:
    engine = lab.engine(name)
    req = urllib.request.Request(engine["url"] + "/admin/config",
                                 headers={"X-Admin-Token": lab.admin_token(), "X-Lab-Source": "management"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def _rate_limited(lab: Lab) -> list[str]:
    lab.inject("exchange-rate-limit")
    _wait(lambda: all((_config(lab, e["name"])["venue_calls"]["rate_limited"] or 0) > 0.2 for e in lab.engines()))
    return []


def _key_expired(lab: Lab) -> list[str]:
    lab.inject("exchange-key-expired")
    _wait(lambda: all((_config(lab, e["name"])["venue_calls"]["auth_failed"] or 0) > 0.2 for e in lab.engines()))
    return []


def _ws_down(lab: Lab) -> list[str]:
    _wait(lambda: all(_config(lab, e["name"])["market_data"]["age_s"] is not None for e in lab.engines()))
    lab.inject("ws-down")
    _wait(lambda: all((_config(lab, e["name"])["market_data"]["age_s"] or 0) > 6 for e in lab.engines()))
    return []


def _locks_and_oom(lab: Lab) -> list[str]:
    lab.inject("blocking-lock")
    lab.inject("long-query", seconds=120)
    lab.inject("redis-oom")
    time.sleep(1.0)  # the lab's thresholds below are 1 s: the sessions must be past them
    return ["-e", f"db_connectivity_stable_for={STABLE}", "-e", "db_connectivity_long_query_seconds=1",
            "-e", "db_connectivity_lock_wait_seconds=1"]


# case: (playbook, incident id, inject)
CASES: dict[str, tuple[str, str, Callable[[Lab], list[str]]]] = {
    "service_degraded": ("service_degraded", "service-degraded", _service_degraded),
    "trading_halted": ("trading_halted", "trading-halted", _trading_halted),
    "model_degradation": ("model_degradation", "model-degradation", _model_degradation),
    "performance_degradation": ("performance_degradation", "performance-degradation", _performance_degradation),
    "agent_failure": ("agent_failure", "agent-failure", _agent_failure),
    "db_connectivity:pg-down": ("db_connectivity", "db-connectivity", _pg_down),
    "db_connectivity:redis-down": ("db_connectivity", "db-connectivity", _redis_down),
    "db_connectivity:pooler-stuck": ("db_connectivity", "db-connectivity", _pooler_stuck),
    "db_connectivity:locks+oom": ("db_connectivity", "db-connectivity", _locks_and_oom),
    "stream_backlog": ("stream_backlog", "stream-backlog", _stream_backlog),
    "exchange_failure:down": ("exchange_failure", "exchange-failure", _exchange_down),
    "exchange_failure:rate-limit": ("exchange_failure", "exchange-failure", _rate_limited),
    "exchange_failure:key-expired": ("exchange_failure", "exchange-failure", _key_expired),
    "exchange_failure:ws-down": ("exchange_failure", "exchange-failure", _ws_down),
}


def _go_at(record: dict[str, Any]) -> float | None:
    gate = (record.get("gate") or {})
    if gate.get("status") == "GO" and gate.get("at"):
        return _epoch(gate["at"])
    verified = [a for a in record.get("actions") or []
                if a.get("name") == "model_probes" and a.get("outcome") == "verified"]
    if verified:
        return _epoch(verified[-1].get("at"))
    # nothing was halted (db_connectivity's sessions and cache repairs): GO when the last repair read GO
    repaired = [a for a in record.get("actions") or [] if a.get("phase") == "repair" and a.get("outcome") == "GO"]
    return _epoch(repaired[-1].get("at")) if repaired else None


def run_case(name: str, work: Path, engines: int) -> dict[str, Any]:
    playbook, incident, inject = CASES[name]
    with tempfile.TemporaryDirectory(prefix=f"{playbook}-", dir=work) as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(engines=engines, order_interval=0.1)
        try:
            fault_at = time.time()
            extra = inject(lab)
            started = time.time()
            cmd = [str(BIN / "ansible-playbook"), str(ROOT / "playbooks" / f"{playbook}.yml"),
                   "-e", f"incident_report_dir={tmp}/reports", "-e", f"evidence_dest={tmp}/evidence",
                   "-e", "resume_trading_approved=true", "-e", "halt_trading_quiesce_seconds=1", *extra]
            proc = subprocess.run(cmd, cwd=ROOT, env=ansible_env(Path(tmp) / "lab"), capture_output=True, text=True,
                                  timeout=600, check=False)
            ended = time.time()
            record_path = Path(tmp) / "reports" / f"{incident}.json"
            record = json.loads(record_path.read_text()) if record_path.exists() else {}
            go_at = _go_at(record)
            out = {"ok": proc.returncode == 0 and go_at is not None,
                   "fault_to_go_s": round(go_at - fault_at, 2) if go_at else None,
                   "symptom_wait_s": round(started - fault_at, 2), "playbook_s": round(ended - started, 2),
                   "verdict": (record.get("verdict") or {}).get("text")}
            if not out["ok"]:
                out["tail"] = proc.stdout[-1500:]
            return out
        finally:
            lab.down()


def run_incidents(runs: int, work: Path, engines: int = 20, cases: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "engines": engines, "loadavg_start": loadavg(),
                           "cases": {}}
    failed = 0
    for name in cases or list(CASES):
        results = []
        for i in range(runs):
            result = run_case(name, work, engines)
            results.append(result)
            failed += 0 if result["ok"] else 1
            log(f"incidents {name} run {i + 1}/{runs}: fault to GO {result['fault_to_go_s']} s, playbook "
                f"{result['playbook_s']} s, {result['verdict']}")
        out["cases"][name] = {
            "fault_to_go_s": summary(r["fault_to_go_s"] for r in results),
            "playbook_s": summary(r["playbook_s"] for r in results),
            "runs": results,
        }
    out["failed_runs"] = failed
    out["loadavg_end"] = loadavg()
    return out


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--engines", type=int, default=20)
    p.add_argument("--cases", default=",".join(CASES))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tradeops-bench-") as t:
        res = run_incidents(a.runs, Path(t), a.engines, [c for c in a.cases.split(",") if c])
    print(json.dumps(res, indent=1))
    sys.exit(1 if res["failed_runs"] else 0)
