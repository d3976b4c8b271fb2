"""What a run did, derived from its (redacted) job events and the incident report it wrote.

Exit codes of ``tradeops run`` (``IncidentResult.exit_code``):

==== ========================== ==========================================================================
code outcome                    when
==== ========================== ==========================================================================
0    ``resolved``               the playbook succeeded, every engine it touched is verified halted or
                                verified resumed, and nothing is NO-GO at the end. For a P0 run without
                                approval this means *recovered, gate GO, trading halted awaiting approval*
                                (``awaiting_approval`` is true): the remediation is done, the resume is a
                                human decision.
1    ``remediation_failed``     anything else that ran: an engine could not be verified halted, the
                                playbook failed before containing trading, a read-only check found NO-GO,
                                or the run was canceled or timed out.
2    ``halted_not_recovered``   every engine is verified halted (trading is safe) but the repair or the
                                health gate failed: something is still NO-GO.
3    ``bad_input``              unknown incident, malformed extra var, missing inventory, Ansible's own
                                parse / option errors (rc 4, 5), or no host matched at all.
==== ========================== ==========================================================================

``--check`` runs: 0 if the playbook ran clean in check mode, else 1 (or 3).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

EXIT_RESOLVED = 0
EXIT_FAILED = 1
EXIT_HALTED_NOT_RECOVERED = 2
EXIT_BAD_INPUT = 3

# The outcomes and their exit codes are the collection's (plugins/plugin_utils/incident.py: OUTCOME_EXIT),
# which computes them for the report and this runner alike; the EXIT_* names above are the API's.

HALT_ACTION = "tradeops.remediation.halt_trading"
HEALTH_ACTION = "tradeops.remediation.health_check"
NOISE_ACTIONS = {"ansible.builtin.validate_argument_spec", "validate_argument_spec"}
HALTED_STATUSES = {"halted", "already_halted"}
RESUMED_STATUSES = {"resumed", "already_resumed"}
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_unreachable": "unreachable",
    "runner_on_skipped": "skipped",
    "runner_item_on_failed": None,
    "runner_on_async_failed": "failed",
}
# "P0 outage | 4 repair: restart only ..." -> repair
_PHASE_RE = re.compile(r"\|\s*(?:\d+\s+)?([A-Za-z][\w-]*)\s*:")
# "Data corruption | 2-8 read-only, verified backup, ..." -> read-only
_NUMBERED_RE = re.compile(r"\|\s*\d[\d-]*\s+([A-Za-z][\w-]*)")


def phase_of(play: str | None) -> str:
    """The phase a play stands for: ``P0 outage | 1 contain: ...`` -> ``contain``; else the play's label."""
    if not play:
        return "-"
    match = _PHASE_RE.search(play) or _NUMBERED_RE.search(play)
    if match:
        return match.group(1).lower()
    head = play.split("|", 1)[0].strip()
    return head.lower() or play.strip().lower()


def result_of(event: Mapping[str, Any]) -> str | None:
    """ok / changed / failed / ignored / unreachable / skipped for a task-result event, else None."""
    kind = RESULT_EVENTS.get(str(event.get("event")))
    if kind is None:
        return None
    data = event.get("event_data") or {}
    if kind == "failed" and data.get("ignore_errors"):
        return "ignored"
    if kind == "ok" and (data.get("res") or {}).get("changed"):
        return "changed"
    return kind


class TimelineEntry(NamedTuple):
    """One task result: (time, phase, task, host, result)."""

    time: str
    phase: str
    task: str
    host: str
    result: str


@dataclass
class HostSummary:
    """Per-host task counts (from the play recap) and, for engines, their last kill-switch and health state."""

    host: str
    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0
    halt_status: str | None = None
    health: str | None = None


@dataclass
class Failure:
    phase: str
    task: str
    host: str
    message: str


@dataclass
class IncidentResult:
    """The outcome of one run of an incident playbook."""

    run_id: str
    incident: str
    playbook: str
    status: str
    rc: int | None
    outcome: str
    exit_code: int
    verdict: str
    check: bool = False
    via_worker: bool = False
    limit: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    hosts: dict[str, HostSummary] = field(default_factory=dict)
    contained: list[str] = field(default_factory=list)
    halted: list[str] = field(default_factory=list)
    not_halted: list[str] = field(default_factory=list)
    # per halted engine, which sources hold its halt and when the earliest expires
    halt_holds: dict[str, str] = field(default_factory=dict)
    resumed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    not_recovered: list[str] = field(default_factory=list)
    still_nogo: list[str] = field(default_factory=list)
    health_gate: str | None = None
    awaiting_approval: bool = False
    timeline: list[TimelineEntry] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    report_path: str | None = None
    report_markdown_path: str | None = None
    report: dict[str, Any] | None = None
    evidence: list[str] = field(default_factory=list)
    run_dir: str | None = None
    artifacts_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    redacted_files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.exit_code == EXIT_RESOLVED

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["timeline"] = [list(t) for t in self.timeline]
        return data

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.as_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IncidentResult:
        data = dict(data)
        data["hosts"] = {h: HostSummary(**s) for h, s in (data.get("hosts") or {}).items()}
        data["timeline"] = [TimelineEntry(*t) for t in data.get("timeline") or []]
        data["failures"] = [Failure(**f) for f in data.get("failures") or []]
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> IncidentResult:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def events(self) -> list[dict[str, Any]]:
        """The run's (redacted) job events, in order, read from its artifacts."""
        if not self.artifacts_path:
            return []
        return load_events(Path(self.artifacts_path))


def load_events(artifact_dir: Path) -> list[dict[str, Any]]:
    events = []
    for path in (artifact_dir / "job_events").glob("*.json"):
        try:
            events.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(events, key=lambda e: e.get("counter", 0))


def _message(res: Mapping[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if isinstance(msg, list):
        msg = " ".join(str(m) for m in msg)
    msg = re.sub(r"\s+", " ", str(msg)).strip()
    return msg if len(msg) <= 600 else msg[:597] + "..."


@dataclass
class _Facts:
    """What the events say; the incident report, when there is one, refines it."""

    timeline: list[TimelineEntry] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    halt_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    halt_status: dict[str, str] = field(default_factory=dict)
    halt_holds: dict[str, str] = field(default_factory=dict)
    probe_status: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    gate: str | None = None
    repair_hosts: dict[str, str] = field(default_factory=dict)
    hosts_seen: set[str] = field(default_factory=set)
    verbose: list[str] = field(default_factory=list)


def collect(events: Iterable[Mapping[str, Any]]) -> _Facts:
    facts = _Facts()
    for event in events:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind == "playbook_on_stats":
            for key in ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored", "processed"):
                facts.stats[key] = dict(data.get(key) or {})
            continue
        if kind == "verbose":
            text = str(event.get("stdout") or "").strip()
            if text:
                facts.verbose.append(text)
            continue
        result = result_of(event)
        if result is None:
            continue
        host = str(data.get("host") or "-")
        phase = phase_of(data.get("play"))
        task = str(data.get("task") or "")
        action = str(data.get("resolved_action") or data.get("task_action") or "")
        res = data.get("res") or {}
        facts.hosts_seen.add(host)
        if result == "skipped" or action in NOISE_ACTIONS:
            continue
        facts.timeline.append(TimelineEntry(str(event.get("created") or ""), phase, task, host, result))
        if result in ("failed", "unreachable"):
            facts.failures.append(Failure(phase, task, host, _message(res)))
        if phase == "repair":
            if result in ("failed", "unreachable"):
                facts.repair_hosts[host] = "failed"
            else:
                facts.repair_hosts.setdefault(host, "ok")
        if action == HALT_ACTION and isinstance(res.get("targets"), list):
            facts.halt_calls.append((phase, res))
            for target in res["targets"]:
                if isinstance(target, Mapping) and target.get("name"):
                    facts.halt_status[str(target["name"])] = str(target.get("status"))
                    if target.get("hold_summary"):  # what holds its halt, and until when (halt_trading's words)
                        facts.halt_holds[str(target["name"])] = str(target["hold_summary"])
                    elif target.get("status") in RESUMED_STATUSES:
                        facts.halt_holds.pop(str(target["name"]), None)
        if action == HEALTH_ACTION and isinstance(res.get("probes"), list):
            for probe in res["probes"]:
                if isinstance(probe, Mapping) and probe.get("name"):
                    facts.probe_status[str(probe["name"])] = (str(probe.get("status")), probe.get("component"))
            if phase == "verify" or "gate" in task.lower():
                facts.gate = str(res.get("status"))
    return facts


def _hosts(facts: _Facts) -> dict[str, HostSummary]:
    names = set(facts.hosts_seen)
    for counts in facts.stats.values():
        names.update(counts)
    # every engine the kill switch reported, though no task ran on it: the fleet's work is one call, and a
    # healthy engine may have no task of its own in the whole run
    names.update(facts.halt_status)
    nogo = _nogo_components(facts)
    out = {}
    for name in sorted(names):
        s = facts.stats
        components = {c for _, c in facts.probe_status.values()}
        out[name] = HostSummary(
            host=name,
            ok=s.get("ok", {}).get(name, 0),
            changed=s.get("changed", {}).get(name, 0),
            failures=s.get("failures", {}).get(name, 0),
            unreachable=s.get("dark", {}).get(name, 0),
            skipped=s.get("skipped", {}).get(name, 0),
            rescued=s.get("rescued", {}).get(name, 0),
            ignored=s.get("ignored", {}).get(name, 0),
            halt_status=facts.halt_status.get(name),
            health=("NO-GO" if name in nogo else "GO") if name in components else None,
        )
    return out


def _nogo_components(facts: _Facts) -> list[str]:
    """Components whose latest probe result is NO-GO (a probe without a component counts under its name)."""
    return sorted({(component or name) for name, (status, component) in facts.probe_status.items()
                   if status == "NO-GO"})


def _bad_input(facts: _Facts, rc: int | None) -> str | None:
    """Why Ansible refused the run (rc 4/5, or no host matched), in its own words; None if it did not."""
    processed = facts.stats.get("processed") or {}
    if rc not in (4, 5) and (processed or facts.hosts_seen):
        return None
    lines = [line for v in facts.verbose for line in v.splitlines()]
    why = (next((x for x in lines if "ERROR" in x or "not found" in x), None)
           or next((x for x in lines if "Unable to parse" in x), None))
    why = re.sub(r"^\[?(WARNING|ERROR)\]?!?:?\s*", "", why.strip()) if why else None
    if rc in (4, 5) and why:
        return why
    return "no host matched (is the lab up? is the inventory right?)" + (f": {why}" if why else "")


def _event_states(facts: _Facts) -> dict[str, Any]:
    """The engines' and components' states as the job events show them, for a run with no incident record."""
    halted = sorted(n for n, s in facts.halt_status.items() if s in HALTED_STATUSES)
    resumed = sorted(n for n, s in facts.halt_status.items() if s in RESUMED_STATUSES)
    fleet = [res for _, res in facts.halt_calls if res.get("state", "halted") == "halted"]
    contained = sorted(set(fleet[0].get("halted") or []) | set(fleet[0].get("already_halted") or [])) if fleet else []
    still_nogo = _nogo_components(facts)
    restarted = sorted(facts.repair_hosts)
    recovered = sorted(h for h in restarted if h not in still_nogo and facts.repair_hosts[h] != "failed")
    gate = facts.gate if facts.gate != "not_run" else None
    return {"halted": halted, "resumed": resumed,
            "not_halted": sorted(n for n, s in facts.halt_status.items()
                                 if s not in HALTED_STATUSES | RESUMED_STATUSES),
            "contained": contained, "restarted": restarted, "recovered": recovered,
            "not_recovered": sorted(h for h in restarted if h not in recovered), "still_nogo": still_nogo,
            "health_gate": gate, "awaiting_approval": bool(halted) and not resumed and gate == "GO",
            "halt_holds": {n: facts.halt_holds[n] for n in halted if n in facts.halt_holds}}


def summarize(
    events: Iterable[Mapping[str, Any]],
    *,
    status: str,
    rc: int | None,
    check: bool = False,
    record: Mapping[str, Any] | None = None,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """The IncidentResult fields. The outcome, exit code, verdict and the engines' states come from the incident
    record through the collection's own ``decide`` and ``summary`` (the same computation as the report's
    verdict); the events add the per-host counts, the task timeline, the failures and Ansible's warnings."""
    from .record import model

    incident = model(project_dir)
    facts = collect(events)
    if record:
        states = incident.summary(record)
    else:  # no record (check mode, or the run stopped before its first task): what the events show
        states = _event_states(facts)
    # a record exists only if a task ran on a host: "no host matched" cannot be its story
    bad_input = _bad_input(facts, rc) if not record or rc in (4, 5) else None
    verdict = incident.decide(record, status=status, rc=rc, check=check, bad_input=bad_input, states=states)
    warnings = [v for v in facts.verbose if "WARNING" in v or "ERROR" in v][:20]
    return {
        "outcome": verdict["outcome"],
        "exit_code": verdict["exit_code"],
        "verdict": verdict["text"],
        "hosts": _hosts(facts),
        "contained": states["contained"],
        "halted": states["halted"],
        "not_halted": states["not_halted"],
        "halt_holds": states["halt_holds"],
        "resumed": states["resumed"],
        "restarted": states["restarted"],
        "recovered": states["recovered"],
        "not_recovered": states["not_recovered"],
        "still_nogo": states["still_nogo"],
        "health_gate": states["health_gate"],
        "awaiting_approval": bool(states["awaiting_approval"]) and not check,
        "timeline": facts.timeline,
        "failures": facts.failures,
        "warnings": warnings,
    }


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")
