# -*- coding: utf-8 -*-
# Copyright (c) tradeops contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The incident record: one Python model of an incident, its verdict and everything rendered from it.

Every role feeds it through the ``tradeops.remediation.incident_record`` action plugin (one event per
call: a phase that starts, a halt, the triage, the evidence, a repair, the health gate, the resume, a
failure, a notification sent). It is JSON, versioned (``schema_version``; the JSON Schema is
``schemas/incident-record.schema.json``), written atomically after every event to
``<dir>/<incident id>/record.json`` so that a run that dies still leaves it, and read by everything
that reports on the incident: the report role, ``tradeops run``/``tradeops report``, the notifications
(:func:`message`) and AWX.

The verdict and its wording are computed once, by :func:`decide`. The playbook's report phase calls it
through the plugin; the runner calls the same function with what it knows about the process (canceled,
timed out, bad input) and writes the result back into the same record.

This module imports only the standard library: the runner loads it outside Ansible.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import tempfile

SCHEMA_VERSION = 1

# The seeds' scale: seed 000 P0..P3 with seed 002's SEV-1..4 and response/resolution targets, seed 003's
# escalation triggers (no progress in 15 min on a P0, 30 min on a P1), seed 000's 15-minute P0 updates
# and seed 002's 30-minute SEV-1/2 updates.
SEVERITIES = {
    "P0": {"name": "Critical", "sev": "SEV-1", "update_minutes": 15, "escalate_minutes": 15,
           "resolution_target_minutes": 60},
    "P1": {"name": "High", "sev": "SEV-2", "update_minutes": 30, "escalate_minutes": 30,
           "resolution_target_minutes": 240},
    "P2": {"name": "Medium", "sev": "SEV-3", "update_minutes": None, "escalate_minutes": None,
           "resolution_target_minutes": 480},
    "P3": {"name": "Low", "sev": "SEV-4", "update_minutes": None, "escalate_minutes": None,
           "resolution_target_minutes": 1440},
}
# Seed 002's RTO/RPO table, compared in the post-mortem with what the run achieved.
RTO_SECONDS = {"Trading Engine": 300, "Position Database": 600, "Configuration": 900}
RPO_SECONDS = {"Trading Engine": 0, "Position Database": 60, "Configuration": 300}

# Outcomes and exit codes of `tradeops run` (documented in tradeops.runner.result).
RESOLVED = "resolved"
FAILED = "remediation_failed"
HALTED_NOT_RECOVERED = "halted_not_recovered"
BAD_INPUT = "bad_input"
CHECKED = "checked"
CANCELED = "canceled"
OUTCOME_EXIT = {RESOLVED: 0, CHECKED: 0, FAILED: 1, CANCELED: 1, HALTED_NOT_RECOVERED: 2, BAD_INPUT: 3}

HALTED = ("halted", "already_halted")
RESUMED = ("resumed", "already_resumed")
EVENTS = ("open", "start", "halt", "venue", "triage", "evidence", "repair", "gate", "resume", "action", "failure",
          "notification", "escalation", "close")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RecordError(Exception):
    """A record that cannot be read, or an event that does not fit it."""


def utcnow():
    return _dt.datetime.now(_dt.timezone.utc)


def iso(when=None):
    when = when or utcnow()
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text):
    if not text:
        return None
    text = str(text)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)


def seconds_between(start, end):
    a, b = parse_time(start), parse_time(end)
    if a is None or b is None:
        return None
    return round((b - a).total_seconds(), 3)


def duration_text(seconds):
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%d h %02d min" % (hours, minutes)
    if minutes:
        return "%d min %02d s" % (minutes, secs)
    return "%d s" % secs


def check_id(incident_id):
    if not isinstance(incident_id, str) or not _ID_RE.match(incident_id) or ".." in incident_id:
        raise RecordError(
            "incident id %s is not a safe file name: use letters, digits, '.', '_' and '-' (at most 128, "
            "starting with a letter or digit, no '..')" % json.dumps(str(incident_id))[:140])
    return incident_id


def new_record(incident_id, incident_type, severity, trigger=None, started_at=None, detected_at=None, title=None):
    """An empty record, as ``open`` writes it."""
    check_id(incident_id)
    if severity not in SEVERITIES:
        raise RecordError("severity %r is not one of %s" % (severity, ", ".join(SEVERITIES)))
    started_at = started_at or iso()
    return {
        "schema_version": SCHEMA_VERSION,
        "incident_id": incident_id,
        "incident_type": incident_type,
        "title": title or incident_type.replace("_", " "),
        "severity": severity,
        "sev": SEVERITIES[severity]["sev"],
        "trigger": dict(trigger or {"source": "manual"}),
        "detected_at": detected_at,
        "started_at": started_at,
        "updated_at": started_at,
        "closed_at": None,
        "runs": [],
        "phases": [],
        "halts": [],
        "engines": {},
        "triage": None,
        "evidence": [],
        "repairs": [],
        "actions": [],
        "gate": None,
        "resume": None,
        "failure": None,
        "notifications": [],
        "escalation": {"level": 0, "history": []},
        "progress_at": started_at,
        "verdict": None,
    }


# ----------------------------------------------------------------------------------------------------
# Feeding the record: one function per event, each returning the record it changed
# ----------------------------------------------------------------------------------------------------
def _phase(record, name, run):
    for phase in reversed(record["phases"]):
        if phase["name"] == name and phase["run"] == run and phase["end"] is None:
            return phase
    return None


def _close_open_phases(record, at, keep=None):
    for phase in record["phases"]:
        if phase["end"] is None and phase is not keep:
            phase["end"] = at
            if phase["outcome"] == "running":
                phase["outcome"] = "done"


def start_phase(record, name, at=None):
    """A phase starts; the one before it, if still open, ends here."""
    at = at or iso()
    run = len(record["runs"])
    current = _phase(record, name, run)
    if current is not None:
        return current
    _close_open_phases(record, at)
    phase = {"name": name, "run": run, "start": at, "end": None, "outcome": "running", "summary": ""}
    record["phases"].append(phase)
    return phase


def end_phase(record, name, outcome, summary="", at=None, progress=True):
    """The phase ends (it is the latest phase of this run of that name, or one that starts and ends here)."""
    at = at or iso()
    run = len(record["runs"])
    latest = record["phases"][-1] if record["phases"] else None
    if latest is not None and latest["name"] == name and latest["run"] == run:
        phase = latest
    else:
        phase = _phase(record, name, run) or start_phase(record, name, at)
    phase["end"] = at
    phase["outcome"] = outcome
    phase["summary"] = summary
    if progress and outcome in ("done", "ok", "GO", "verified"):
        mark_progress(record, at)
    return phase


def mark_progress(record, at=None):
    """Progress restarts the escalation clock (the level reached stays: an escalation is not taken back)."""
    record["progress_at"] = at or iso()


def add_halt(record, phase, state, result, at=None):
    """A halt_trading call: its per-engine status, what holds each halt and until when. Its time is when the call
    finished (``finished_at``, epoch seconds), not when it is recorded: the P0 contain phase records it after the
    venue's cancel and the orders proof."""
    finished = result.get("finished_at")
    if at is None and isinstance(finished, (int, float)) and not isinstance(finished, bool):
        at = iso(_dt.datetime.fromtimestamp(finished, _dt.timezone.utc))
    at = at or iso()
    targets = [t for t in (result.get("targets") or []) if isinstance(t, dict) and t.get("name")]
    done = list(result.get("halted") or result.get("resumed") or [])
    already = list(result.get("already_halted") or result.get("already_resumed") or [])
    failed = list(result.get("failed_targets") or [])
    unverified = list(result.get("unverified") or [])
    entry = {"at": at, "run": len(record["runs"]), "phase": phase, "state": state, "done": sorted(done),
             "already": sorted(already), "failed": sorted(failed), "unverified": sorted(unverified),
             "elapsed_ms": result.get("elapsed_ms"), "orders_after": result.get("orders_after"),
             "targets": [{"name": t["name"], "status": t.get("status"), "method": t.get("method"),
                          "latency_ms": t.get("latency_ms"), "error": t.get("error"),
                          # epoch seconds, to the millisecond: when the engine was read back halted (or resumed)
                          "verified_at": t.get("halted_at" if state == "halted" else "resumed_at")}
                         for t in targets]}
    record["halts"].append(entry)
    if _phase(record, phase, len(record["runs"])) is None and isinstance(result.get("elapsed_ms"), (int, float)):
        # the halt is not delayed by a "start" event: its phase starts when its call did
        start_phase(record, phase, iso(parse_time(at) - _dt.timedelta(milliseconds=result["elapsed_ms"])))
    for target in targets:
        engine = record["engines"].setdefault(target["name"], {"first_halted_at": None})
        engine["status"] = target.get("status")
        engine["method"] = target.get("method")
        engine["held_by"] = [
            {"method": s.get("method"), "source": s.get("source"), "expires_at": s.get("expires_at"),
             "survives_restart": bool(s.get("survives_restart"))}
            for s in (target.get("held_by") or []) if isinstance(s, dict)]
        engine["durable"] = bool(target.get("durable"))
        engine["hold_summary"] = target.get("hold_summary")
        engine["expires_at"] = target.get("expires_at")
        engine["error"] = target.get("error")
        if target.get("status") in HALTED and engine["first_halted_at"] is None:
            engine["first_halted_at"] = at
        if target.get("status") in RESUMED:
            engine["held_by"] = []
            engine["hold_summary"] = None
            engine["durable"] = False
    end_phase(record, phase, "done" if not (failed or unverified) else "failed",
              "%s: %d done, %d already, not verified: %s (%s ms)" % (
                  state, len(done), len(already), ", ".join(failed + unverified) or "none",
                  result.get("elapsed_ms")), at)
    return entry


def add_venue(record, phase, result, at=None):
    """A venue_guard call: per account what was working before and after, and what is not verified."""
    at = at or iso()
    venue = record.get("venue") or {
        "calls": [], "working_before": None, "working_after": None, "cancelled": None, "unverified": [],
        "dead_man_switch": None, "positions_mismatched": [], "positions_at_risk": []}
    action = result.get("action")
    accounts = [a for a in result.get("accounts") or [] if isinstance(a, dict) and a.get("name")]
    entry = {"at": at, "run": len(record["runs"]), "phase": phase, "action": action,
             "elapsed_ms": result.get("elapsed_ms"), "failed": sorted(result.get("failed_accounts") or []),
             "accounts": [{"name": a["name"], "status": a.get("status"), "working_before": a.get("working_before"),
                           "working_after": a.get("working_after"), "error": a.get("error")} for a in accounts]}
    venue["calls"].append(entry)
    if action == "cancel_all":
        before, after = result.get("working_orders_before"), result.get("working_orders_after")
        venue.update(working_before=before, working_after=after, unverified=sorted(result.get("unverified") or []),
                     cancelled=(before - after) if isinstance(before, int) and isinstance(after, int) else None)
        armed = [a["dead_man_switch"] for a in accounts if isinstance(a.get("dead_man_switch"), dict)]
        if armed:
            venue["dead_man_switch"] = {"armed": len(armed), "timeout": armed[0].get("timeout"),
                                        "trigger_time": armed[0].get("trigger_time")}
        summary_text = "cancel_all: %s working before, %s after; not verified: %s (%s ms)" % (
            before, after, ", ".join(venue["unverified"]) or "none", result.get("elapsed_ms"))
    elif action == "positions":
        venue["positions_mismatched"] = sorted(result.get("mismatched") or [])
        summary_text = "positions: mismatched %s" % (", ".join(venue["positions_mismatched"]) or "none")
    elif action == "protect":
        venue["positions_at_risk"] = sorted(a["name"] for a in accounts if a.get("status") != "verified")
        summary_text = "protect: not protected %s" % (", ".join(venue["positions_at_risk"]) or "none")
    else:
        summary_text = "%s: failed %s" % (action, ", ".join(entry["failed"]) or "none")
    record["venue"] = venue
    add_action(record, phase, "venue %s" % action, "failed" if entry["failed"] else "verified", summary_text, at)
    return entry


def set_triage(record, result, phase="assess", at=None):
    at = at or iso()
    record["triage"] = {"at": at, "status": result.get("status"),
                        "nogo_components": sorted(result.get("nogo_components") or []),
                        "nogo_probes": sorted(result.get("nogo") or []),
                        "warnings": sorted(result.get("warning_probes") or []),
                        "findings": _findings(result)}
    end_phase(record, phase, "done", "%s, NO-GO: %s" % (
        result.get("status"), ", ".join(record["triage"]["nogo_components"]) or "none"), at)


def _findings(result):
    out = []
    for probe in result.get("probes") or []:
        if isinstance(probe, dict) and probe.get("status") not in ("GO", None):
            out.append({"probe": probe.get("name"), "component": probe.get("component"),
                        "status": probe.get("status"), "detail": str(probe.get("message") or "")[:300]})
    return out[:50]


def add_evidence(record, archives, failures=(), phase="evidence", at=None):
    at = at or iso()
    for archive in archives or []:
        record["evidence"].append({"at": at, "run": len(record["runs"]), "host": archive.get("host"),
                                   "path": archive.get("path"), "sha256": archive.get("sha256")})
    failures = list(failures or [])
    end_phase(record, phase, "done" if not failures else "partial", "%d archive(s), %d host(s) failed" % (
        len(archives or []), len(failures)), at)


def add_repairs(record, repairs, phase="repair", at=None):
    """Repairs done on hosts or components: ``[{target, action, outcome (recovered|not_recovered|...), detail}]``."""
    at = at or iso()
    for repair in repairs or []:
        record["repairs"].append({"at": at, "run": len(record["runs"]), "phase": phase, "target": repair.get("target"),
                                  "action": repair.get("action") or "restart",
                                  "outcome": repair.get("outcome"), "detail": str(repair.get("detail") or "")[:500]})
    bad = [r["target"] for r in repairs or [] if r.get("outcome") not in ("recovered", "done", "ok")]
    _close_open_phases(record, at, keep=_phase(record, phase, len(record["runs"])))
    phase_entry = start_phase(record, phase, at)
    phase_entry["summary"] = "recovered: %s; not recovered: %s" % (
        ", ".join(sorted(r.get("target") for r in record["repairs"] if r["outcome"] == "recovered")) or "none",
        ", ".join(sorted(bad)) or "none")
    if not bad:
        mark_progress(record, at)


def add_action(record, phase, name, outcome, detail="", at=None):
    """Any other step worth a line in the record (read-only mode, a backup, a rotation, an isolation)."""
    at = at or iso()
    record["actions"].append({"at": at, "phase": phase, "name": name, "outcome": outcome,
                              "detail": str(detail or "")[:1000]})
    if outcome in ("done", "ok", "changed", "verified"):
        mark_progress(record, at)


def set_gate(record, result, phase="verify", at=None):
    at = at or iso()
    record["gate"] = {"at": at, "status": result.get("status"), "nogo_probes": sorted(result.get("nogo") or []),
                      "nogo_components": sorted(result.get("nogo_components") or []),
                      "elapsed_ms": result.get("elapsed_ms")}
    end_phase(record, phase, "GO" if result.get("status") == "GO" else "NO-GO",
              "health gate %s after %s ms" % (result.get("status"), result.get("elapsed_ms")), at)


def set_resume(record, outcome, phase="resume", at=None):
    at = at or iso()
    record["resume"] = {"at": at, "outcome": outcome}
    end_phase(record, phase, "done" if outcome == "resumed" else "skipped", outcome, at)


def set_failure(record, phase, reason, at=None):
    at = at or iso()
    record["failure"] = {"at": at, "phase": phase, "reason": str(reason)[:2000]}
    current = _phase(record, phase, len(record["runs"]))
    if current is not None:
        current["end"], current["outcome"], current["summary"] = at, "failed", str(reason)[:300]
    else:
        record["phases"].append({"name": phase, "run": len(record["runs"]), "start": at, "end": at,
                                 "outcome": "failed", "summary": str(reason)[:300]})


def add_notifications(record, kind, results, at=None):
    at = at or iso()
    for item in results or []:
        record["notifications"].append({
            "at": item.get("sent_at") or at, "kind": kind, "channel": item.get("name"), "type": item.get("type"),
            "status": item.get("status"), "attempts": item.get("attempts"), "error": item.get("error")})


def escalate(record, level, name, channels, at=None):
    at = at or iso()
    record["escalation"]["level"] = level
    record["escalation"]["history"].append({"at": at, "level": level, "name": name, "channels": list(channels)})


# ----------------------------------------------------------------------------------------------------
# What the record says: one summary, one verdict
# ----------------------------------------------------------------------------------------------------
def summary(record):
    """The engines' states and the repair results, derived once from the record."""
    if not record:
        return {"venue_unverified": [], "contained": [], "halted": [], "resumed": [], "not_halted": [], "restarted": [], "recovered": [],
                "not_recovered": [], "still_nogo": [], "health_gate": None, "halt_holds": {},
                "awaiting_approval": False}
    engines = record.get("engines") or {}
    halted = sorted(n for n, e in engines.items() if e.get("status") in HALTED)
    resumed = sorted(n for n, e in engines.items() if e.get("status") in RESUMED)
    not_halted = sorted(n for n, e in engines.items() if e.get("status") not in HALTED + RESUMED)
    fleet = [h for h in record.get("halts") or [] if h.get("state") == "halted"]
    contained = sorted(set(fleet[0]["done"]) | set(fleet[0]["already"])) if fleet else []
    latest = {}
    for repair in record.get("repairs") or []:
        latest[repair["target"]] = repair["outcome"]
    recovered = sorted(t for t, o in latest.items() if o in ("recovered", "done", "ok"))
    not_recovered = sorted(t for t in latest if t not in recovered)
    gate = (record.get("gate") or {}).get("status")
    if record.get("gate"):
        still_nogo = list(record["gate"].get("nogo_components") or record["gate"].get("nogo_probes") or [])
    elif record.get("triage") and not latest:
        still_nogo = list(record["triage"].get("nogo_components") or [])
    else:
        still_nogo = sorted(set((record.get("triage") or {}).get("nogo_components") or []) - set(recovered))
    resume = (record.get("resume") or {}).get("outcome")
    awaiting = bool(halted) and not resumed and gate == "GO" and resume in (None, "skipped_not_approved")
    venue_unverified = sorted((record.get("venue") or {}).get("unverified") or [])
    return {"venue_unverified": venue_unverified, "contained": contained, "halted": halted, "resumed": resumed, "not_halted": not_halted,
            "restarted": sorted(latest), "recovered": recovered, "not_recovered": not_recovered,
            "still_nogo": sorted(still_nogo), "health_gate": gate, "awaiting_approval": awaiting,
            "halt_holds": {n: engines[n].get("hold_summary") for n in halted if engines[n].get("hold_summary")}}


def decide(record, status="successful", rc=0, check=False, bad_input=None, states=None):
    """The verdict of a run: ``{outcome, exit_code, text, closed}``. The one place it is computed and worded.

    ``status`` is how the run ended (``successful``, ``failed``, ``timeout``, ``canceled``) and ``rc`` its exit
    code. The report phase calls it with the defaults (it runs only if nothing before it failed, a rescue
    records its failure in the record); the runner with what it saw of the process. ``states`` replaces
    :func:`summary` only where there is no record (a run without one: what its events show).
    """
    s = states if states is not None and not record else summary(record)
    failure = (record or {}).get("failure")
    if status == "successful" and failure:
        status = "failed"

    def verdict(outcome, text, closed=False):
        return {"outcome": outcome, "exit_code": OUTCOME_EXIT[outcome], "text": text, "closed": closed}

    if status == "canceled":
        return verdict(CANCELED, "CANCELED: the run was stopped before it finished" + _halted_note(s))
    if bad_input is not None or rc in (4, 5):
        return verdict(BAD_INPUT, "BAD INPUT: " + (bad_input or "Ansible refused the input (rc %s)" % rc))
    if check:
        return verdict(CHECKED if rc == 0 and status == "successful" else FAILED,
                       "CHECK MODE: nothing changed" + ("" if rc == 0 and status == "successful"
                                                        else "; the check failed (rc %s)" % rc))
    venue = s.get("venue_unverified") or []
    if status == "successful" and not s["not_halted"] and not s["still_nogo"] and not venue:
        if s["resumed"] and not s["halted"]:
            return verdict(RESOLVED, "RESOLVED: trading resumed, verified", closed=True)
        if s["awaiting_approval"]:
            return verdict(RESOLVED, "RECOVERED: health gate GO, trading HALTED awaiting approval to resume")
        if s["halted"]:
            return verdict(RESOLVED, "CONTAINED: trading halted, verified")
        return verdict(RESOLVED, "RESOLVED", closed=True)
    if s["halted"] and not s["not_halted"] and s["contained"] and not venue:
        where = (" in %s" % failure["phase"]) if failure else ""
        return verdict(HALTED_NOT_RECOVERED, "HALTED, NOT RECOVERED%s: every engine it halted is verified halted "
                       "(%s); still NO-GO: %s" % (where, _names(s["halted"]),
                                                  ", ".join(s["still_nogo"] or s["not_recovered"]) or "see the failures"))
    if s["not_halted"]:
        text = "REMEDIATION FAILED: not verified halted: " + ", ".join(s["not_halted"])
    elif venue:
        text = "REMEDIATION FAILED: working orders not verified cancelled at the venue: " + ", ".join(venue)
    elif failure:
        text = "REMEDIATION FAILED in %s: %s" % (failure["phase"], failure["reason"][:300])
    elif s["still_nogo"]:
        text = "REMEDIATION FAILED: NO-GO: " + ", ".join(s["still_nogo"])
    elif status == "timeout":
        text = "REMEDIATION FAILED: the run timed out"
    else:
        text = "REMEDIATION FAILED: the playbook failed (rc %s)" % rc
    return verdict(FAILED, text)


def _names(names, limit=5):
    """``3: a, b, c`` or ``12: a, b, c, d, e and 7 more``: how many, and which (a scoped halt names its scope)."""
    names = list(names)
    shown = ", ".join(names[:limit])
    more = " and %d more" % (len(names) - limit) if len(names) > limit else ""
    return "%d: %s%s" % (len(names), shown, more)


def _halted_note(s):
    return "; trading halted on %d engine(s)" % len(s["halted"]) if s["halted"] else ""


def metrics(record):
    """MTTD (when the trigger's time is known), time to contain, MTTR, and seed 002's RTO compared."""
    start = record.get("started_at")
    detected = record.get("detected_at") or (record.get("trigger") or {}).get("fired_at")
    contained_at = None
    for halt in record.get("halts") or []:
        if halt.get("state") == "halted" and not halt.get("failed") and not halt.get("unverified"):
            contained_at = halt["at"]
            break
    gate_go = (record.get("gate") or {}).get("at") if (record.get("gate") or {}).get("status") == "GO" else None
    resume = record.get("resume") or {}
    resolved_at = resume.get("at") if resume.get("outcome") == "resumed" else None
    origin = detected or start
    mttr = seconds_between(origin, resolved_at or gate_go)
    rto = RTO_SECONDS["Trading Engine"]
    return {
        "detected_at": detected,
        "mttd_s": seconds_between(detected, start) if detected else None,
        "time_to_contain_s": seconds_between(origin, contained_at),
        "time_to_recover_s": seconds_between(origin, gate_go),
        "mttr_s": mttr,
        "duration_s": seconds_between(start, record.get("closed_at") or record.get("updated_at")),
        "rto_s": rto,
        "rto_met": (mttr <= rto) if mttr is not None else None,
    }


def finish(record, status="successful", rc=0, check=False, bad_input=None, at=None):
    """Compute the verdict into the record (and close the incident when it is resolved)."""
    at = at or iso()
    _close_open_phases(record, at)
    record["verdict"] = decide(record, status=status, rc=rc, check=check, bad_input=bad_input)
    record["verdict"]["at"] = at
    record["updated_at"] = at
    if record["verdict"]["closed"] and not record.get("closed_at"):
        record["closed_at"] = at
    record["metrics"] = metrics(record)
    return record["verdict"]


# ----------------------------------------------------------------------------------------------------
# Where it lives
# ----------------------------------------------------------------------------------------------------
def record_path(base, incident_id):
    """``<base>/<incident id>.json``; the post-mortem draft is the ``.md`` beside it."""
    return os.path.join(base, check_id(incident_id) + ".json")


def postmortem_path(path):
    return path[:-len(".json")] + ".md"


def load(path):
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise RecordError("cannot read the incident record %s: %s" % (path, exc.strerror))
    except ValueError as exc:
        raise RecordError("the incident record %s is not JSON: %s" % (path, exc))
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise RecordError("%s is not an incident record of schema version %d" % (path, SCHEMA_VERSION))
    return data


def save(record, path):
    """Atomically, mode 0600, with the post-mortem draft beside it."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    record["metrics"] = metrics(record)
    _write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    _write(postmortem_path(path), postmortem(record))


@contextlib.contextmanager
def locked(path):
    """Holds the record's lock: the playbook's plugin and the background status watcher both write it."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".lock"),
                 os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def update(path, change):
    """Load, ``change(record)``, save, under the lock; returns what ``change`` returned and the record."""
    with locked(path):
        record = load(path)
        out = change(record)
        record["updated_at"] = iso()
        save(record, path)
    return out, record


def _write(path, text):
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_record(base, incident_id, incident_type, severity, playbook=None, trigger=None, detected_at=None,
                title=None, at=None, continue_from=None):
    """Continue the open record of this incident, or start one (a closed one is archived beside it).

    ``continue_from`` is the record a previous job handed over (an AWX workflow's artifact: each job runs in
    a fresh container); it is used when there is no record file of this id here."""
    at = at or iso()
    path = record_path(base, incident_id)
    record = None
    if not os.path.exists(path) and continue_from:
        if not isinstance(continue_from, dict) or continue_from.get("schema_version") != SCHEMA_VERSION \
                or continue_from.get("incident_id") != incident_id:
            raise RecordError("continue_from is not a schema version %d record of incident %s"
                              % (SCHEMA_VERSION, incident_id))
        record = json.loads(json.dumps(continue_from))
        if record.get("closed_at"):
            record = None
    if record is None and os.path.exists(path):
        record = load(path)
        if record.get("closed_at"):  # a resolved incident of the same id: kept beside it, a new one starts
            stem = path[:-len(".json")] + "-" + re.sub(r"[^0-9TZ]", "", record["started_at"])[:15]
            os.replace(path, stem + ".json")
            if os.path.exists(postmortem_path(path)):
                os.replace(postmortem_path(path), stem + ".md")
            record = None
    if record is None:
        record = new_record(incident_id, incident_type, severity, trigger, at, detected_at, title)
    record["runs"].append({"started_at": at, "playbook": playbook, "pid": os.getpid()})
    record["verdict"] = None
    record["updated_at"] = at
    return record, path


# ----------------------------------------------------------------------------------------------------
# What it says to people: the seeds' templates, filled from the record
# ----------------------------------------------------------------------------------------------------
def _impact(record, s):
    orders = [h.get("orders_after") for h in record.get("halts") or [] if h.get("orders_after") is not None]
    parts = ["%d engine(s) halted and verified" % len(s["halted"]) if s["halted"] else "no engine halted"]
    if s["not_halted"]:
        parts.append("NOT verified halted: " + ", ".join(s["not_halted"]))
    if orders:
        parts.append("orders after the halt: %s" % orders[-1])
    venue = _venue_line(record.get("venue"))
    if venue:
        parts.append(venue)
    return "; ".join(parts)


def _venue_line(venue):
    if not venue:
        return None
    return "working orders at the venue: %s before, %s after (cancelled %s); not verified: %s" % (
        venue.get("working_before"), venue.get("working_after"), venue.get("cancelled"),
        ", ".join(venue.get("unverified") or []) or "none")


def _actions(record):
    lines = []
    for phase in record.get("phases") or []:
        if phase["outcome"] != "running":
            lines.append("%s: %s%s" % (phase["name"], phase["outcome"],
                                       (" (" + phase["summary"] + ")") if phase.get("summary") else ""))
    return lines or ["incident declared"]


def _next_steps(record, verdict, s):
    if verdict and verdict.get("closed"):
        return ["complete the post-mortem draft"]
    if s["awaiting_approval"]:
        return ["an operator approves the resume (resume_trading.yml with resume_trading_approved=true, or the "
                "AWX approval node); trading stays halted until then"]
    if record.get("failure"):
        return ["fix the cause of the failure in %s, then run the playbook again; trading stays halted"
                % record["failure"]["phase"]]
    done = {p["name"] for p in record.get("phases") or []}
    todo = [p for p in ("assess", "evidence", "repair", "verify", "resume") if p not in done]
    return ["continue: " + ", ".join(todo)] if todo else ["report"]


def message(record, kind, report_link=None, at=None):
    """One notification (``initial``, ``status``, ``escalation``, ``acknowledge``, ``resolution``) from the
    record, worded as the seeds' templates (seed 000's P0 notification and resolution, seed 002/003's initial
    alert, status update and resolution notice)."""
    at = at or iso()
    sev = record["severity"]
    info = SEVERITIES[sev]
    s = summary(record)
    verdict = record.get("verdict") or decide(record)
    elapsed = duration_text(seconds_between(record["started_at"], at))
    impact = _impact(record, s)
    actions = _actions(record)
    steps = _next_steps(record, record.get("verdict"), s)
    status = {"initial": "INVESTIGATING", "status": "MITIGATING", "escalation": "ESCALATED",
              "acknowledge": "APPROVED, RESUMING", "resolution": "RESOLVED"}[kind]
    if kind == "status" and s["awaiting_approval"]:
        status = "CONTAINED, AWAITING APPROVAL"
    head = {"initial": "INCIDENT ALERT", "status": "INCIDENT UPDATE", "escalation": "INCIDENT ESCALATION",
            "acknowledge": "INCIDENT UPDATE", "resolution": "INCIDENT RESOLVED"}[kind]
    title = "%s - %s (%s) %s: %s" % (head, sev, info["sev"], record["incident_id"],
                                     verdict["text"] if kind == "resolution" else record["title"])
    update = info["update_minutes"]
    lines = ["PRIORITY: %s (%s)" % (info["name"].upper(), sev), "Incident: %s" % record["incident_id"],
             "Type: %s" % record["incident_type"], "Status: %s" % status, "Time: %s" % at]
    if kind == "resolution":
        lines += ["Duration: %s to %s (%s)" % (record["started_at"], at, elapsed), "Impact: %s" % impact,
                  "ROOT CAUSE: see the post-mortem draft (observed: %s)" % (_observed(record) or "nothing abnormal"),
                  "RESOLUTION: %s" % "; ".join(actions), "Verdict: %s" % verdict["text"],
                  "Post-mortem: draft written (%s)" % (report_link or "beside the incident record")]
    else:
        lines += ["Duration: %s" % elapsed, "IMPACT: %s" % impact, "CURRENT STATUS: %s" % verdict["text"],
                  "ACTIONS TAKEN:"] + ["- " + a for a in actions] + ["NEXT STEPS:"] + ["- " + n for n in steps]
        if kind == "escalation":
            level = record["escalation"]["level"]
            name = (record["escalation"]["history"][-1]["name"] if record["escalation"]["history"] else "")
            lines.append("ESCALATED to level %d (%s): no progress for %s" % (
                level, name, duration_text(seconds_between(record.get("progress_at"), at))))
        if update:
            lines.append("Updates will be provided every %d minutes until resolved." % update)
    fields = {"impact": impact, "status": status, "actions": "; ".join(actions), "next_steps": "; ".join(steps),
              "duration": elapsed, "verdict": verdict["text"], "report": report_link or ""}
    return {"kind": kind, "incident_id": record["incident_id"], "dedup_key": "tradeops-" + record["incident_id"],
            "severity": sev, "title": title[:1000], "text": "\n".join(lines), "fields": fields,
            "escalation_level": record["escalation"]["level"] or None}


def _observed(record):
    triage = record.get("triage") or {}
    parts = ["%s %s" % (f["probe"], f["status"]) for f in triage.get("findings") or []][:5]
    parts += ["%s %s" % (r["target"], r["outcome"]) for r in record.get("repairs") or []][:5]
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------
# The post-mortem draft: seed 004's sections plus seed 002's impact and RTO/RPO, a Mermaid timeline
# ----------------------------------------------------------------------------------------------------
_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9 ._/()+-]")


def _mermaid_text(text):
    return _MERMAID_UNSAFE.sub(" ", str(text)).strip()[:60] or "step"


def _mermaid_time(text):
    when = parse_time(text)
    return when.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if when else None


def mermaid_timeline(record):
    """A Mermaid gantt of the phases, with the halt and the resume as milestones."""
    lines = ["gantt", "    title Incident %s" % _mermaid_text(record["incident_id"]),
             "    dateFormat YYYY-MM-DDTHH:mm:ss", "    axisFormat %H:%M:%S", "    section Response"]
    for index, phase in enumerate(record.get("phases") or []):
        start = _mermaid_time(phase["start"])
        end = _mermaid_time(phase["end"] or phase["start"])
        if start is None or end is None:
            continue
        if end <= start:  # a phase shorter than the diagram's second: drawn as one second
            end = _mermaid_time(iso(parse_time(phase["start"]) + _dt.timedelta(seconds=1)))
        state = "crit" if phase["outcome"] in ("failed", "NO-GO") else "done"
        lines.append("    %s :%s, p%d, %s, %s" % (_mermaid_text(phase["name"]), state, index, start, end))
    marks = []
    m = metrics(record)
    for halt in record.get("halts") or []:
        if halt["state"] == "halted" and not halt["failed"] and not halt["unverified"]:
            marks.append(("halt verified", halt["at"]))
            break
    resume = record.get("resume") or {}
    if resume.get("outcome") == "resumed":
        marks.append(("trading resumed", resume["at"]))
    if m.get("detected_at"):
        marks.append(("detected", m["detected_at"]))
    if marks:
        lines.append("    section Markers")
        for index, (name, at) in enumerate(marks):
            when = _mermaid_time(at)
            if when:
                lines.append("    %s :milestone, m%d, %s, 0s" % (name, index, when))
    return "\n".join(lines)


def _hhmm(text):
    when = parse_time(text)
    return when.strftime("%H:%M:%S") if when else "--:--:--"


def postmortem(record):
    s = summary(record)
    m = metrics(record)
    verdict = record.get("verdict") or decide(record)
    sev = record["severity"]
    contain, verify = (next((p for p in record.get("phases") or [] if p["name"] == name), None)
                       for name in ("contain", "verify"))
    resume = record.get("resume") or {}
    out = [
        "# Post-mortem draft: %s" % record["incident_id"], "",
        "> Written by tradeops from the incident record (schema v%d). Sections marked **TO FILL** need a human."
        % SCHEMA_VERSION, "",
        "## 1. Incident summary", "",
        "| | |", "| --- | --- |",
        "| Incident ID | %s |" % record["incident_id"],
        "| Type | %s |" % record["incident_type"],
        "| Severity | %s (%s, %s) |" % (sev, SEVERITIES[sev]["sev"], SEVERITIES[sev]["name"]),
        "| Trigger | %s |" % ", ".join("%s=%s" % kv for kv in sorted((record.get("trigger") or {}).items())),
        "| Started | %s |" % record["started_at"],
        "| Duration | %s |" % duration_text(m["duration_s"]),
        "| Verdict | **%s** |" % verdict["text"],
        "| Services affected | %s |" % (", ".join(sorted(record.get("engines") or {})) or "none recorded"),
        "", "### Impact (seed 002)", "",
        "- Engines halted: %d; not verified halted: %s" % (len(s["halted"]), ", ".join(s["not_halted"]) or "none"),
        "- Held by: %s" % ("; ".join("%s: %s" % kv for kv in sorted(s["halt_holds"].items())) or "nothing held"),
        "- Repaired: %s; not recovered: %s" % (
            ", ".join(s["recovered"]) or "none", ", ".join(s["not_recovered"]) or "none"),
        "- Venue: %s" % (_venue_line(record.get("venue")) or "no exchange account was acted on"),
        "- Financial impact, trades affected, users affected: **TO FILL**", "",
        "## 2. Timeline", "",
        "| time (UTC) | phase | outcome | what happened |", "| --- | --- | --- | --- |",
    ]
    for phase in record.get("phases") or []:
        out.append("| %s | %s | %s | %s |" % (
            _hhmm(phase["start"]), phase["name"], phase["outcome"], (phase.get("summary") or "").replace("|", "/")))
    out += ["", "- Detection time: %s" % (m["detected_at"] or "not known (the run was started by hand)"),
            "- Response time (declared to contained): %s" % duration_text(m["time_to_contain_s"]),
            "- Mitigation time (to the health gate GO): %s" % duration_text(m["time_to_recover_s"]),
            "- Resolution time (to the verified resume): %s" % (
                duration_text(seconds_between(record["started_at"], resume.get("at")))
                if resume.get("outcome") == "resumed" else "not resumed yet"),
            "", "```mermaid", mermaid_timeline(record), "```", "",
            "### Recovery objectives (seed 002)", "",
            "| figure | this incident | objective | met |", "| --- | ---: | ---: | --- |",
            "| MTTD | %s | - | - |" % duration_text(m["mttd_s"]) if m["mttd_s"] is not None else
            "| MTTD | not known | - | - |",
            "| time to contain | %s | - | - |" % duration_text(m["time_to_contain_s"]),
            "| MTTR (Trading Engine RTO) | %s | %s | %s |" % (
                duration_text(m["mttr_s"]), duration_text(m["rto_s"]),
                {True: "yes", False: "**no**", None: "not yet"}[m["rto_met"]]),
            "| RPO (Trading Engine) | 0 s: orders are recorded in PostgreSQL before they are sent | 0 s | yes |",
            "", "## 3. Root cause analysis", "",
            "- Primary cause: **TO FILL**. What the run observed:"]
    findings = (record.get("triage") or {}).get("findings") or []
    out += ["  - %s (%s): %s %s" % (f["probe"], f.get("component") or "-", f["status"], f["detail"])
            for f in findings] or ["  - the triage found nothing NO-GO"]
    out += ["  - repaired: %s %s by %s" % (r["target"], r["outcome"], r["action"]) for r in record.get("repairs") or []]
    if record.get("failure"):
        out.append("  - the run failed in %s: %s" % (record["failure"]["phase"], record["failure"]["reason"]))
    out += ["- Contributing factors: **TO FILL**", "- Why detection was delayed (if it was): **TO FILL**", "",
            "## 4. Action items", "", "| action | owner | due | priority |", "| --- | --- | --- | --- |"]
    items = ["Find and fix the root cause of: %s" % ", ".join(s["recovered"] + s["not_recovered"])] \
        if s["recovered"] or s["not_recovered"] else []
    if s["still_nogo"]:
        items.append("Repair what is still NO-GO: " + ", ".join(s["still_nogo"]))
    if s["awaiting_approval"]:
        items.append("Approve or refuse the resume of trading")
    items.append("**TO FILL**: monitoring and documentation updates")
    out += ["| %s | TO FILL | TO FILL | %s |" % (item, sev) for item in items]
    out += ["", "## 5. Lessons learned", "", "- What went well: **TO FILL** (observed: %s)" % (
        "halt verified in %s" % duration_text(m["time_to_contain_s"]) if m["time_to_contain_s"] is not None
        else "no verified halt"),
        "- What could be improved: **TO FILL**", "- Process changes needed: **TO FILL**", "",
        "## Evidence", ""]
    out += ["- %s: %s sha256 %s" % (e.get("host"), e.get("path"), e.get("sha256")) for e in record.get("evidence")
            or []] or ["- none captured"]
    out += ["", "## Notifications", ""]
    out += ["- %s %s -> %s: %s" % (_hhmm(n["at"]), n["kind"], n["channel"], n["status"])
            for n in record.get("notifications") or []] or ["- none sent"]
    if contain and verify:
        out += ["", "Contain started %s, verify ended %s." % (_hhmm(contain["start"]), _hhmm(verify["end"]))]
    return "\n".join(out) + "\n"
