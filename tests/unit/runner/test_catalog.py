"""Incident discovery: header metadata block, built-in table, inference; name resolution."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tradeops.runner import UnknownIncidentError, get_incident, list_incidents
from tradeops.runner.catalog import describe, find_project_dir


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "playbooks").mkdir()
    shutil.copy(ROOT / "ansible.cfg", tmp_path / "ansible.cfg")
    (tmp_path / "galaxy.yml").write_text("namespace: tradeops\n")
    play = "- name: x\n  hosts: localhost\n  gather_facts: false\n  tasks: []\n"
    (tmp_path / "playbooks" / "p0_outage.yml").write_text("---\n# P0 outage: everything is down.\n" + play)
    (tmp_path / "playbooks" / "data_corruption.yml").write_text(
        "---\n# tradeops-incident:\n#   title: Data corruption\n#   severity: P1\n"
        "#   description: corrupt rows: halt, read-only, backup, quarantine\n#\n# more prose\n" + play)
    (tmp_path / "playbooks" / "odd_thing.yml").write_text(
        "---\n# A P3 incident nobody described. Second sentence.\n" + play)
    (tmp_path / "playbooks" / "resume_trading.yml").write_text("---\n# resume\n" + play)
    (tmp_path / "playbooks" / "awx_configure.yml").write_text(
        "---\n# tradeops-incident: {kind: config}\n" + play)
    return tmp_path


def test_incidents_come_from_header_builtin_and_inference(project):
    found = {i.name: i for i in list_incidents(project)}
    assert list(found) == ["p0_outage", "data_corruption", "odd_thing"]  # most severe first; tools left out
    assert found["p0_outage"].severity == "P0" and found["p0_outage"].source == "builtin"
    dc = found["data_corruption"]
    assert (dc.severity, dc.title, dc.source) == ("P1", "Data corruption", "header")
    assert dc.description.startswith("corrupt rows")
    odd = found["odd_thing"]
    assert (odd.severity, odd.source) == ("P3", "inferred")
    assert odd.description == "A P3 incident nobody described."


def test_tools_are_listed_on_request_and_config_never(project):
    names = [i.name for i in list_incidents(project, include_actions=True)]
    assert "resume_trading" in names and "awx_configure" not in names


def test_get_incident_by_name_variants_and_path(project):
    assert get_incident("p0_outage", project).name == "p0_outage"
    assert get_incident("p0_outage.yml", project).name == "p0_outage"
    assert get_incident("p0-outage", project).name == "p0_outage"
    path = project / "playbooks" / "odd_thing.yml"
    assert get_incident(str(path), project).playbook == path.resolve()


def test_unknown_incident_suggests_and_config_is_refused(project):
    with pytest.raises(UnknownIncidentError, match="did you mean p0_outage"):
        get_incident("p0_outag", project)
    with pytest.raises(UnknownIncidentError, match="configures AWX"):
        get_incident("awx_configure", project)
    with pytest.raises(UnknownIncidentError):
        get_incident("../ansible", project)


def test_the_real_checkout():
    assert find_project_dir() == ROOT
    real = {i.name: i for i in list_incidents(ROOT, include_actions=True)}
    assert real["p0_outage"].kind == "incident" and real["p0_outage"].severity == "P0"
    assert real["health_check"].kind == "action"
    assert describe(ROOT / "playbooks" / "awx_configure.yml").kind == "config"


@pytest.mark.parametrize("name, severity, words", [
    ("service_degraded", "P1", "halt and restart only them"),
    ("trading_halted", "P0", "loss limit kept halted and escalated"),
    ("model_degradation", "P1", "switch to the backup model, roll back, or paper trading"),
])
def test_the_service_incidents_are_listed_with_their_seed_severity_from_their_header(name, severity, words):
    found = {i.name: i for i in list_incidents(ROOT)}
    incident = found[name]
    assert (incident.kind, incident.severity, incident.source) == ("incident", severity, "header")
    assert words in incident.description and "\n" not in incident.description
