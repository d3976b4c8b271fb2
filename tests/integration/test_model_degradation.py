"""playbooks/model_degradation.yml against real labs: a drifting model on one engine, each of seed 000's remedies.

Proof from outside: the engine's own model state and metrics, the exchange's book (on paper, nothing of the
engine's reaches the venue) and the orders table (nothing is halted: every engine keeps trading)."""

from __future__ import annotations

import time

import pytest

from tests.helpers.records import read_record

pytestmark = pytest.mark.integration

INCIDENT = "model-degradation"
DRIFTING = "engine-002"


def run(lab, tmp_path, *extra):
    return lab.run_playbook("model_degradation.yml", "-e", f"incident_report_dir={tmp_path}",
                            "-e", "model_degradation_stable_for=2", *extra)


@pytest.mark.parametrize("action, expect", [
    ("backup", {"model": "backup", "version": "b1", "paper": False}),
    ("rollback", {"model": "primary", "version": "v2", "paper": False}),
    ("paper", {"model": "primary", "version": "v3", "paper": True}),
])
def test_each_remedy_is_applied_through_the_engines_api_and_read_back(lab_factory, tmp_path, action, expect):
    lab = lab_factory(engines=3)
    lab.lab.inject("model-drift", [DRIFTING])
    before = lab.engines_view()
    assert before[DRIFTING]["model"]["accuracy"] < 0.6 and before[DRIFTING]["model"]["drift"]
    started = time.time()
    proc = run(lab, tmp_path, "-e", f"model_degradation_action={action}")
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert f"Remedy {action} on: {DRIFTING}" in proc.stdout
    view = lab.engines_view()
    model = view[DRIFTING]["model"]
    assert {k: model[k] for k in expect} == expect
    for other in ("engine-001", "engine-003"):  # only the drifting engine was touched
        assert view[other]["model"] == {**before[other]["model"], "accuracy": view[other]["model"]["accuracy"]}
        assert (view[other]["model"]["model"], view[other]["model"]["paper"]) == ("primary", False)
    if action == "paper":
        assert model["accuracy"] < 0.6  # paper trading contains the damage, it does not fix the model
        # nothing of the drifting engine is left at the venue, and no new order reaches it, watched over a window
        assert lab.lab.working_orders(exclude_stops=True)[DRIFTING] == 0
        placed = view[DRIFTING]["venue"]["placed"]
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert lab.engines_view()[DRIFTING]["venue"]["placed"] == placed
            assert lab.lab.working_orders(exclude_stops=True)[DRIFTING] == 0
            time.sleep(0.2)
    else:
        assert model["accuracy"] >= 0.6 and not model["drift"]
    # nothing is halted for a model: every engine keeps writing orders
    assert all(lab.wait_for_orders(lab.engines(), since=started).values())
    assert all(e["trading_active"] for e in view.values())
    record = read_record(tmp_path, INCIDENT)
    assert record["halts"] == []
    assert [a["name"] for a in record["actions"] if not a["name"].startswith("venue")] == [
        "scope", action, "model_probes"]
    venue = [(a["name"], a["outcome"]) for a in record["actions"] if a["name"].startswith("venue")]
    # on paper: the working orders cancelled, read back, and none found again after the window
    assert venue == ([("venue cancel_all", "verified")] * 2 if action == "paper" else []), venue
    assert record["verdict"]["text"] == "RESOLVED", record["verdict"]


def test_healthy_models_are_left_alone_and_a_wrong_remedy_is_refused(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    proc = run(lab, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Every model is GO: nothing to do." in proc.stdout
    assert all(e["model"]["model"] == "primary" for e in lab.engines_view().values())
    bad = run(lab, tmp_path / "bad", "-e", "model_degradation_action=retrain")
    assert bad.returncode != 0
    assert "model_degradation_action must be backup, rollback or paper, got retrain" in bad.stdout


def test_check_mode_calls_no_model_api_and_changes_nothing(lab_factory, tmp_path):
    lab = lab_factory(engines=2)
    lab.lab.inject("model-drift", [DRIFTING])
    before = lab.engines_view()[DRIFTING]["model"]
    proc = run(lab, tmp_path, "--check", "-e", "model_degradation_action=paper")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"Check mode, nothing changed. Would apply paper on: {DRIFTING}" in proc.stdout
    assert lab.engines_view()[DRIFTING]["model"] == before  # still the drifting primary, not on paper
    assert not (tmp_path / f"{INCIDENT}.json").exists()  # check mode writes no record
