"""The automatic-run policy: containment and diagnosis phases only, repair only when allowed, never resume, never a
tool, never an approval; the controller rulebook's phases file is what the policy says; a run launched from inside
an ansible-runner job does not inherit that job's plumbing."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT, VENV_BIN
from tradeops.runner.catalog import get_incident
from tradeops.runner.exceptions import IncidentInputError
from tradeops.runner.policy import NEVER_AUTOMATIC, automatic_tags, playbook_phases, render_controller_phases
from tradeops.runner.secrets import child_env


def test_p0_outage_contains_and_diagnoses_but_never_repairs_or_resumes_automatically():
    tags = automatic_tags(get_incident("p0_outage"))
    assert tags == {"tags": "contain,assess,evidence,report", "skip_tags": "repair,verify,resume,liquidate"}


def test_repair_only_when_allowed_and_resume_never():
    tags = automatic_tags(get_incident("service_degraded"), allow_repair=True)
    assert tags["tags"].split(",") == ["identify", "contain", "evidence", "repair", "verify", "report"]
    assert set(tags["skip_tags"].split(",")) == set(NEVER_AUTOMATIC)


@pytest.mark.parametrize("incident", ["p0_outage", "service_degraded", "trading_halted", "agent_failure",
                                      "performance_degradation", "db_connectivity", "security_breach",
                                      "data_corruption", "exchange_failure", "stream_backlog", "model_degradation"])
def test_no_automatic_run_of_any_incident_runs_resume(incident):
    for repair in (False, True):
        tags = automatic_tags(get_incident(incident), allow_repair=repair)
        assert "resume" not in tags["tags"].split(",")
        assert "resume" in tags["skip_tags"].split(",")


def test_a_phase_the_policy_does_not_know_is_skipped(tmp_path):
    book = tmp_path / "new.yml"
    book.write_text("- hosts: all\n  tags: [contain]\n- hosts: all\n  tags: [teleport]\n"
                    "- hosts: all\n  tags: [always]\n")
    assert playbook_phases(book) == ["contain", "teleport"]
    incident = get_incident("p0_outage")
    tags = automatic_tags(type(incident)(**{**incident.__dict__, "playbook": book}), allow_repair=True)
    assert tags == {"tags": "contain", "skip_tags": "teleport,resume,liquidate"}


@pytest.mark.parametrize("name", ["resume_trading", "liquidate", "health_check", "alert_response"])
def test_tools_never_run_automatically(name):
    with pytest.raises(IncidentInputError, match="is a action, not an incident"):
        automatic_tags(get_incident(name))


def test_an_approval_is_refused():
    with pytest.raises(IncidentInputError, match="resume_trading_approved"):
        automatic_tags(get_incident("service_degraded"), {"resume_trading_approved": True})


def test_the_cli_refuses_allow_repair_without_automatic_and_tags_with_it():
    def run(*args):
        return subprocess.run([str(VENV_BIN / "tradeops"), "run", "service_degraded", *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
    res = run("--allow-repair")
    assert res.returncode == 3 and "--allow-repair only applies to an --automatic run" in res.stderr
    res = run("--automatic", "--tags", "resume")
    assert res.returncode == 3 and "leave out --tags and --skip-tags" in res.stderr
    res = run("--automatic", "-e", "resume_trading_approved=true")
    assert res.returncode == 3 and "a person approves, an alert does not" in res.stderr


def test_the_controller_phases_file_is_what_the_policy_says():
    path = ROOT / "extensions" / "eda" / "rulebooks" / "vars" / "automatic_phases.yml"
    assert path.read_text() == render_controller_phases(ROOT), (
        "stale: python -m tradeops.runner.policy > extensions/eda/rulebooks/vars/automatic_phases.yml")


def test_a_run_started_inside_an_ansible_runner_job_leaves_its_plumbing_behind():
    parent = {"AWX_ISOLATED_DATA_DIR": "/tmp/x", "ANSIBLE_STDOUT_CALLBACK": "awx_display",
              "ANSIBLE_CALLBACK_PLUGINS": "/tmp/x/cb", "ANSIBLE_CONFIG": "/a/ansible.cfg", "PATH": "/bin"}
    env, _, _ = child_env(parent)
    assert "ANSIBLE_STDOUT_CALLBACK" not in env and "ANSIBLE_CALLBACK_PLUGINS" not in env
    assert env["ANSIBLE_CONFIG"] == "/a/ansible.cfg"
    parent.pop("AWX_ISOLATED_DATA_DIR")
    env, _, _ = child_env(parent)
    assert env["ANSIBLE_STDOUT_CALLBACK"] == "awx_display"  # a user's own choice, outside a runner job
