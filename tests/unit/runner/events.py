"""Synthetic ansible-runner job events, shaped like the ones p0_outage.yml produces."""

from __future__ import annotations

import itertools
from typing import Any

_counter = itertools.count(1)
PLAYS = {
    "contain": "P0 outage | 1 contain: halt trading on every engine at once, verified",
    "assess": "P0 outage | 2 assess: probe the whole stack, read-only",
    "repair": "P0 outage | 4 repair: restart only the NO-GO engines, a batch at a time",
    "verify": "P0 outage | 5 verify: every engine verified halted, then the health gate",
    "learn": "P0 outage | 7 learn: write the incident report",
}
HALT = "tradeops.remediation.halt_trading"
HEALTH = "tradeops.remediation.health_check"


def play(phase: str) -> dict[str, Any]:
    return {"event": "playbook_on_play_start", "counter": next(_counter), "created": "2026-01-01T10:00:00+00:00",
            "event_data": {"play": PLAYS[phase], "name": PLAYS[phase]}}


def result(phase: str, task: str, host: str, *, kind: str = "runner_on_ok", action: str = "ansible.builtin.debug",
           res: dict[str, Any] | None = None, ignore_errors: bool = False) -> dict[str, Any]:
    return {"event": kind, "counter": next(_counter), "created": f"2026-01-01T10:00:{next(_counter) % 60:02d}+00:00",
            "stdout": f"{kind}: [{host}]",
            "event_data": {"play": PLAYS[phase], "task": task, "host": host, "resolved_action": action,
                           "res": res or {}, "ignore_errors": ignore_errors}}


def halt(phase: str, statuses: dict[str, str], state: str = "halted", kind: str = "runner_on_ok",
         host: str = "engine-001") -> dict[str, Any]:
    done = "resumed" if state == "resumed" else "halted"
    res = {"state": state, "changed": True, "elapsed_ms": 12,
           "targets": [{"name": n, "status": s} for n, s in statuses.items()],
           done: [n for n, s in statuses.items() if s == done],
           "already_" + done: [n for n, s in statuses.items() if s == "already_" + done],
           "failed_targets": [n for n, s in statuses.items() if s == "failed"],
           "unverified": [n for n, s in statuses.items() if s == "unverified"]}
    return result(phase, "Kill switch | One concurrent, verified call", host, kind=kind, action=HALT, res=res)


def health(phase: str, probes: dict[str, str], task: str = "Triage | Probe", host: str = "engine-001") -> dict:
    res = {"status": "NO-GO" if "NO-GO" in probes.values() else "GO",
           "nogo": [n for n, s in probes.items() if s == "NO-GO"], "elapsed_ms": 5,
           "probes": [{"name": n, "status": s, "component": n.rsplit("-", 1)[0]} for n, s in probes.items()]}
    return result(phase, task, host, action=HEALTH, res=res)


def stats(hosts: list[str], failures: dict[str, int] | None = None) -> dict[str, Any]:
    return {"event": "playbook_on_stats", "counter": next(_counter),
            "event_data": {"ok": {h: 3 for h in hosts}, "changed": {}, "failures": failures or {}, "dark": {},
                           "skipped": {}, "rescued": {}, "ignored": {}, "processed": {h: 1 for h in hosts}}}


ENGINES = ["engine-001", "engine-002", "engine-003"]


def p0_success() -> list[dict[str, Any]]:
    """engine-002 crashed: unverified in contain, restarted in repair, all halted and GO at the end."""
    return [
        play("contain"),
        result("contain", "Validating arguments", "engine-001", action="ansible.builtin.validate_argument_spec"),
        halt("contain", {"engine-001": "halted", "engine-002": "unverified", "engine-003": "halted"}),
        play("assess"),
        health("assess", {"engine-001-health": "GO", "engine-002-health": "NO-GO", "engine-003-health": "GO"}),
        play("repair"),
        result("repair", "Recovery | Restart", "engine-002", res={"changed": True}),
        halt("repair", {"engine-002": "halted"}, host="engine-002"),
        health("repair", {"engine-002-health": "GO"}, task="Recovery | Wait", host="engine-002"),
        result("repair", "Recovery | Restart", "engine-001", kind="runner_on_skipped"),
        play("verify"),
        halt("verify", {n: "already_halted" for n in ENGINES}),
        health("verify", {"engine-001-health": "GO", "engine-002-health": "GO", "engine-003-health": "GO"},
               task="Health gate | Wait until every probe is GO"),
        play("learn"),
        stats(ENGINES),
    ]


def p0_repair_fails() -> list[dict[str, Any]]:
    """engine-003 unrecoverable: halted everywhere, still NO-GO after its restart; the play stops."""
    return [
        play("contain"),
        halt("contain", {"engine-001": "halted", "engine-002": "halted", "engine-003": "halted"}),
        play("assess"),
        health("assess", {"engine-001-health": "GO", "engine-002-health": "GO", "engine-003-health": "NO-GO"}),
        play("repair"),
        halt("repair", {"engine-003": "already_halted"}, host="engine-003"),
        health("repair", {"engine-003-health": "NO-GO"}, task="Recovery | Wait", host="engine-003"),
        result("repair", "Recovery | Stop here if the component is still NO-GO", "engine-003",
               kind="runner_on_failed", res={"msg": "engine-003 is still NO-GO 4s after its restart"}),
        stats(ENGINES, failures={"engine-003": 1}),
    ]


def contain_only_with_a_dead_engine() -> list[dict[str, Any]]:
    return [
        play("contain"),
        halt("contain", {"engine-001": "halted", "engine-002": "failed", "engine-003": "halted"}),
        stats(ENGINES),
    ]
