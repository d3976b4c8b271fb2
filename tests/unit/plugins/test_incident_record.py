"""The incident record (plugins/plugin_utils/incident.py): one verdict for the report and the runner, the
record's schema, continuation and archiving, the notices and the post-mortem draft."""

from __future__ import annotations

import json

import pytest
from ansible_collections.tradeops.remediation.plugins.plugin_utils import incident

from tests.helpers.records import validate
from tradeops.runner.result import summarize

ENGINES = ["engine-001", "engine-002", "engine-003"]


def halt_result(statuses, state="halted", elapsed_ms=120):
    done = [n for n, s in statuses.items() if s in ("halted", "resumed")]
    already = [n for n, s in statuses.items() if s in ("already_halted", "already_resumed")]
    bad = [n for n, s in statuses.items() if s == "unverified"]
    key = "halted" if state == "halted" else "resumed"
    return {key: done, "already_" + key: already, "unverified": bad, "failed_targets": [], "elapsed_ms": elapsed_ms,
            "targets": [{"name": n, "status": s, "method": "file",
                         "held_by": [{"method": "file", "source": f"file /tmp/{n}/EMERGENCY_STOP",
                                      "expires_at": None, "survives_restart": True}] if "halted" in s else [],
                         "durable": "halted" in s,
                         "hold_summary": "file, until the gated resume" if "halted" in s else None}
                        for n, s in statuses.items()]}


def health(status, nogo=()):
    return {"status": status, "nogo": [f"{n}-health" for n in nogo], "nogo_components": list(nogo),
            "elapsed_ms": 900, "probes": [{"name": f"{n}-health", "component": n, "status": "NO-GO",
                                           "message": "connection refused"} for n in nogo]}


def new(severity="P0"):
    record = incident.new_record("inc-1", "p0_outage", severity)
    record["runs"].append({"started_at": record["started_at"], "playbook": "p0_outage", "pid": 1})
    return record


def recovered_awaiting():
    r = new()
    incident.add_halt(r, "contain", "halted", halt_result({"engine-001": "halted", "engine-002": "unverified",
                                                           "engine-003": "halted"}))
    incident.set_triage(r, health("NO-GO", ["engine-002"]))
    incident.add_repairs(r, [{"target": "engine-002", "action": "restart (process)", "outcome": "recovered"}])
    incident.add_halt(r, "re-verify", "halted", halt_result({"engine-001": "already_halted",
                                                             "engine-002": "halted", "engine-003": "already_halted"}))
    incident.set_gate(r, health("GO"))
    incident.set_resume(r, "skipped_not_approved")
    return r


def resumed():
    r = recovered_awaiting()
    incident.add_halt(r, "resume", "resumed", halt_result({n: "resumed" for n in ENGINES}, state="resumed"))
    incident.set_resume(r, "resumed")
    return r


def contained_only():
    r = new()
    incident.add_halt(r, "contain", "halted", halt_result({n: "halted" for n in ENGINES}))
    return r


def repair_failed():
    r = new()
    incident.add_halt(r, "contain", "halted", halt_result({n: "halted" for n in ENGINES}))
    incident.set_triage(r, health("NO-GO", ["engine-003"]))
    incident.add_repairs(r, [{"target": "engine-003", "action": "restart (process)", "outcome": "not_recovered",
                              "detail": "NO-GO: engine-003-health"}])
    incident.set_failure(r, "repair", "engine-003: engine-003 is still NO-GO 4s after its restart")
    return r


def not_halted():
    r = new()
    incident.add_halt(r, "contain", "halted", halt_result({"engine-001": "halted", "engine-002": "unverified"}))
    return r


def venue_result(unverified=(), before=7):
    accounts = [{"name": n, "status": "unverified" if n in unverified else "verified", "working_before": 2,
                 "working_after": 2 if n in unverified else 0,
                 "error": "2 order(s) still working" if n in unverified else None,
                 "dead_man_switch": {"armed": True, "timeout": 300, "trigger_time": "2026-12-03T10:05:00Z"}}
                for n in ENGINES]
    return {"action": "cancel_all", "accounts": accounts, "elapsed_ms": 140, "verified": [
        n for n in ENGINES if n not in unverified], "unverified": list(unverified), "failed_accounts": list(unverified),
        "working_orders_before": before, "working_orders_after": 2 * len(unverified)}


def venue_cancelled():
    r = contained_only()
    incident.add_venue(r, "contain", venue_result())
    return r


def venue_not_verified():
    r = contained_only()
    incident.add_venue(r, "contain", venue_result(unverified=["engine-002"]))
    return r


def nogo_without_halts():
    r = new("P3")
    incident.set_triage(r, health("NO-GO", ["engine-001"]))
    return r


def healthy_check():
    r = new("P3")
    incident.set_triage(r, health("GO"))
    return r


# (scenario, how the run ended: status, rc, check, bad input) -> (outcome, exit code, closed, words)
VERDICTS = [
    (resumed, ("successful", 0, False, None), ("resolved", 0, True, "RESOLVED: trading resumed, verified")),
    (recovered_awaiting, ("successful", 0, False, None),
     ("resolved", 0, False, "RECOVERED: health gate GO, trading HALTED awaiting approval to resume")),
    (contained_only, ("successful", 0, False, None), ("resolved", 0, False, "CONTAINED: trading halted, verified")),
    (healthy_check, ("successful", 0, False, None), ("resolved", 0, True, "RESOLVED")),
    (repair_failed, ("failed", 2, False, None),
     ("halted_not_recovered", 2, False, "HALTED, NOT RECOVERED in repair: every engine it halted is verified halted "
                                        "(3: engine-001, engine-002, engine-003); still NO-GO: engine-003")),
    (not_halted, ("successful", 0, False, None),
     ("remediation_failed", 1, False, "REMEDIATION FAILED: not verified halted: engine-002")),
    (venue_cancelled, ("successful", 0, False, None), ("resolved", 0, False, "CONTAINED: trading halted, verified")),
    (venue_not_verified, ("successful", 0, False, None),
     ("remediation_failed", 1, False, "REMEDIATION FAILED: working orders not verified cancelled at the venue: "
                                      "engine-002")),
    (nogo_without_halts, ("successful", 0, False, None),
     ("remediation_failed", 1, False, "REMEDIATION FAILED: NO-GO: engine-001")),
    (lambda: new(), ("timeout", 254, False, None),
     ("remediation_failed", 1, False, "REMEDIATION FAILED: the run timed out")),
    (contained_only, ("canceled", 254, False, None),
     ("canceled", 1, False, "CANCELED: the run was stopped before it finished; trading halted on 3 engine(s)")),
    (lambda: new(), ("failed", 4, False, "playbooks/x.yml could not be found"),
     ("bad_input", 3, False, "BAD INPUT: playbooks/x.yml could not be found")),
    (contained_only, ("successful", 0, True, None), ("checked", 0, False, "CHECK MODE: nothing changed")),
]


@pytest.mark.parametrize("scenario, run, expected", VERDICTS,
                         ids=[v[2][3].split(":")[0].lower().replace(" ", "-") + "-" + v[1][0] for v in VERDICTS])
def test_one_verdict_for_the_report_and_the_runner(scenario, run, expected):
    status, rc, check, bad_input = run
    outcome, exit_code, closed, words = expected
    record = scenario()
    # the report phase (and the runner, writing back what it saw) close the record with finish()
    verdict = incident.finish(record, status=status, rc=rc, check=check, bad_input=bad_input)
    assert (verdict["outcome"], verdict["exit_code"], verdict["closed"], verdict["text"]) == (
        outcome, exit_code, closed, words)
    assert bool(record["closed_at"]) == closed
    validate(json.loads(json.dumps(record)))
    # the runner's exit code, outcome and words are the same computation on the same record
    fields = summarize([], status=status, rc=rc, check=check, record=record)
    if bad_input is None:
        assert (fields["outcome"], fields["exit_code"], fields["verdict"]) == (outcome, exit_code, words)
    # and the post-mortem draft and the notices say it in the same words
    assert f"**{words}**" in incident.postmortem(record)
    assert incident.message(record, "status")["fields"]["verdict"] == words


def test_the_record_summary_names_what_was_halted_repaired_and_held():
    record = recovered_awaiting()
    s = incident.summary(record)
    assert s["halted"] == ENGINES and s["not_halted"] == [] and s["contained"] == ["engine-001", "engine-003"]
    assert s["recovered"] == ["engine-002"] and s["not_recovered"] == [] and s["still_nogo"] == []
    assert s["awaiting_approval"] and s["health_gate"] == "GO"
    assert s["halt_holds"]["engine-002"] == "file, until the gated resume"
    assert incident.summary(resumed())["halt_holds"] == {}


def test_the_record_keeps_the_venue_state_and_the_draft_says_it():
    record = venue_not_verified()
    venue = record["venue"]
    assert (venue["working_before"], venue["working_after"], venue["cancelled"]) == (7, 2, 5)
    assert venue["unverified"] == ["engine-002"] and venue["dead_man_switch"]["armed"] == 3
    assert [a["status"] for a in venue["calls"][0]["accounts"]] == ["verified", "unverified", "verified"]
    assert incident.summary(record)["venue_unverified"] == ["engine-002"]
    assert "working orders at the venue: 7 before, 2 after (cancelled 5); not verified: engine-002" in \
        incident.postmortem(record)
    incident.finish(record)
    validate(json.loads(json.dumps(record)))


def test_phases_are_timed_and_a_halt_phase_starts_when_its_call_did():
    record = recovered_awaiting()
    names = [p["name"] for p in record["phases"]]
    assert names == ["contain", "assess", "repair", "re-verify", "verify", "resume"]
    contain = record["phases"][0]
    assert incident.seconds_between(contain["start"], contain["end"]) == pytest.approx(0.12, abs=0.002)
    assert contain["outcome"] == "failed"  # engine-002 was not verified halted by the contain call
    assert all(p["end"] is not None for p in record["phases"])


def test_a_halt_recorded_after_the_venue_is_timed_by_its_own_call_not_by_when_it_is_recorded():
    """The P0 contain phase records the halt after the venue's cancel and the orders proof: its time, its phase's
    start and the time to contain come from the call (finished_at), not from the moment of recording."""
    import datetime as dt
    import time

    r = new()
    finished = time.time() - 4.0  # the call finished 4 s before it is recorded
    incident.add_venue(r, "contain", venue_result())
    result = dict(halt_result({n: "halted" for n in ENGINES}, elapsed_ms=2000), finished_at=finished)
    entry = incident.add_halt(r, "contain", "halted", result)
    at = dt.datetime.fromtimestamp(finished, dt.UTC)
    assert incident.parse_time(entry["at"]) == pytest.approx(at, abs=dt.timedelta(milliseconds=1))
    contain = [p for p in r["phases"] if p["name"] == "contain"][0]
    assert incident.seconds_between(contain["start"], entry["at"]) == pytest.approx(2.0, abs=0.002)
    assert r["engines"]["engine-001"]["first_halted_at"] == entry["at"]
    assert incident.metrics(r)["time_to_contain_s"] == pytest.approx(
        incident.seconds_between(r["started_at"], entry["at"]), abs=0.002)


def test_an_open_incident_is_continued_and_a_resolved_one_is_kept_beside_a_new_one(tmp_path):
    record, path = incident.open_record(str(tmp_path), "inc-7", "p0_outage", "P0", playbook="p0")
    incident.add_halt(record, "contain", "halted", halt_result({n: "halted" for n in ENGINES}))
    incident.finish(record)
    incident.save(record, path)
    # the resume run of the same incident continues its record
    again, same = incident.open_record(str(tmp_path), "inc-7", "resume_trading", "P2", playbook="resume")
    assert same == path and again["incident_type"] == "p0_outage" and len(again["runs"]) == 2
    assert again["severity"] == "P0" and again["halts"] and again["verdict"] is None
    incident.add_halt(again, "resume", "resumed", halt_result({n: "resumed" for n in ENGINES}, state="resumed"))
    incident.set_resume(again, "resumed")
    assert incident.finish(again)["closed"]
    incident.save(again, path)
    validate(incident.load(path))
    # a new incident under the same id: the resolved one is kept, renamed by its start time
    fresh, _ = incident.open_record(str(tmp_path), "inc-7", "p0_outage", "P0")
    assert fresh["halts"] == [] and len(fresh["runs"]) == 1
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("inc-7-"))
    assert len(kept) == 2 and {p.rsplit(".", 1)[1] for p in kept} == {"json", "md"}


def test_the_record_and_its_draft_are_private_and_refuse_an_unsafe_id(tmp_path):
    record, path = incident.open_record(str(tmp_path), "inc-8", "p0_outage", "P1")
    incident.save(record, path)
    for name in ("inc-8.json", "inc-8.md"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    for bad in ("../x", "a/b", "", ".hidden", "x" * 200, "a..b"):
        with pytest.raises(incident.RecordError, match="not a safe file name"):
            incident.record_path(str(tmp_path), bad)
    with pytest.raises(incident.RecordError, match="schema version"):
        (tmp_path / "old.json").write_text(json.dumps({"schema_version": 0}))
        incident.load(str(tmp_path / "old.json"))


def test_update_is_serialised_between_writers(tmp_path):
    import threading

    record, path = incident.open_record(str(tmp_path), "inc-9", "p0_outage", "P0")
    incident.save(record, path)

    def add(i):
        incident.update(path, lambda r: incident.add_action(r, "repair", f"step {i}", "done"))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a["name"] for a in incident.load(path)["actions"]) == sorted(f"step {i}" for i in range(20))


def test_notices_follow_the_seeds_templates():
    record = recovered_awaiting()
    incident.finish(record)
    initial = incident.message(record, "initial")
    assert initial["dedup_key"] == "tradeops-inc-1" and initial["severity"] == "P0"
    assert initial["title"].startswith("INCIDENT ALERT - P0 (SEV-1) inc-1")
    for line in ("PRIORITY: CRITICAL (P0)", "IMPACT: 3 engine(s) halted and verified", "ACTIONS TAKEN:",
                 "NEXT STEPS:", "Updates will be provided every 15 minutes until resolved."):
        assert line in initial["text"], line
    status = incident.message(record, "status")
    assert "Status: CONTAINED, AWAITING APPROVAL" in status["text"] and "approves the resume" in status["text"]
    done = resumed()
    incident.finish(done)
    resolution = incident.message(done, "resolution")
    assert resolution["title"].startswith("INCIDENT RESOLVED - P0") and "RESOLVED" in resolution["text"]
    assert "ROOT CAUSE:" in resolution["text"] and "Duration:" in resolution["text"]
    assert resolution["dedup_key"] == initial["dedup_key"]


def test_metrics_compare_with_the_seed_rto():
    record = resumed()
    record["detected_at"] = incident.iso(incident.parse_time(record["started_at"]) -
                                         incident._dt.timedelta(seconds=30))
    incident.finish(record)
    m = record["metrics"]
    assert m["mttd_s"] == pytest.approx(30, abs=0.01)
    assert m["time_to_contain_s"] is not None and m["time_to_contain_s"] >= 30
    assert m["rto_s"] == 300 and m["rto_met"] is True
    draft = incident.postmortem(record)
    for section in ("## 1. Incident summary", "## 2. Timeline", "## 3. Root cause analysis", "## 4. Action items",
                    "## 5. Lessons learned", "### Recovery objectives (seed 002)", "```mermaid", "**TO FILL**"):
        assert section in draft, section


def test_a_record_handed_over_by_a_previous_job_is_continued_where_no_file_exists(tmp_path):
    first, _ = incident.open_record(str(tmp_path / "job1"), "inc-5", "p0_outage", "P0", playbook="p0")
    incident.add_halt(first, "contain", "halted", halt_result({n: "halted" for n in ENGINES}))
    incident.finish(first)
    handed = json.loads(json.dumps(first))  # what set_stats carries to the next AWX node
    # the resume job runs in a fresh container: no file, the artifact continues the incident
    second, path = incident.open_record(str(tmp_path / "job2"), "inc-5", "resume_trading", "P2",
                                        continue_from=handed)
    assert len(second["runs"]) == 2 and second["halts"] == first["halts"] and second["severity"] == "P0"
    with pytest.raises(incident.RecordError, match="not a schema version 1 record of incident inc-6"):
        incident.open_record(str(tmp_path / "job3"), "inc-6", "resume_trading", "P2", continue_from=handed)
    # a resolved incident handed over does not come back to life
    incident.set_resume(second, "resumed")
    second["closed_at"] = incident.iso()
    fresh, _ = incident.open_record(str(tmp_path / "job4"), "inc-5", "p0_outage", "P0", continue_from=second)
    assert fresh["halts"] == [] and len(fresh["runs"]) == 1


def test_the_post_mortem_timeline_is_a_gantt_mermaid_parses_with_every_phase_and_marker():
    from tests.helpers.mermaid import blocks, parse

    record = resumed()
    record["phases"].append({"name": "odd: name; #1 %% x", "run": 1, "start": record["phases"][-1]["end"],
                             "end": record["phases"][-1]["end"], "outcome": "failed", "summary": ""})
    incident.finish(record)
    found = blocks(incident.postmortem(record))
    assert len(found) == 1
    gantt = parse(found[0])
    assert gantt["type"] == "gantt" and gantt["title"] == "Incident inc-1"
    assert gantt["sections"] == ["Response", "Markers"]
    phases = [t for t in gantt["tasks"] if t["section"] == "Response"]
    assert [t["task"] for t in phases][:6] == ["contain", "assess", "repair", "re-verify", "verify", "resume"]
    for task, phase in zip(phases, record["phases"], strict=True):
        assert task["start"][:19] == incident.parse_time(phase["start"]).strftime("%Y-%m-%dT%H:%M:%S")
        assert task["end"] >= task["start"]
    assert phases[0]["crit"] and phases[-1]["crit"] and phases[1]["done"]  # contain left engine-002 unverified
    marks = {t["task"]: t for t in gantt["tasks"] if t["milestone"]}
    assert set(marks) == {"halt verified", "trading resumed"}
    assert marks["trading resumed"]["start"][:19] == incident.parse_time(record["resume"]["at"]).strftime(
        "%Y-%m-%dT%H:%M:%S")


@pytest.mark.parametrize("bad", [
    "gantt\n  dateFormat YYYY-MM-DDTHH:mm:ss\n  section A\n"
    "  contain :done, p0, 2026-12-03T10:61:00, 2026-12-03T10:00:03\n",
    "gantt\n  dateFormat YYYY-MM-DD\n  section A\n  t :a1, 2026-13-45, 1d\n",
    "gantt\n  dateFormat YYYY-MM-DD\n  section A\n  t : : :\n",
    "gannt\n  section A\n",
])
def test_the_mermaid_check_refuses_an_invalid_gantt(bad):
    from tests.helpers.mermaid import MermaidSyntaxError, parse

    with pytest.raises(MermaidSyntaxError):
        parse(bad)


def test_the_runner_exit_codes_are_the_models():
    from tradeops.runner import result

    assert incident.OUTCOME_EXIT == {"resolved": result.EXIT_RESOLVED, "checked": result.EXIT_RESOLVED,
                                     "remediation_failed": result.EXIT_FAILED, "canceled": result.EXIT_FAILED,
                                     "halted_not_recovered": result.EXIT_HALTED_NOT_RECOVERED,
                                     "bad_input": result.EXIT_BAD_INPUT}
