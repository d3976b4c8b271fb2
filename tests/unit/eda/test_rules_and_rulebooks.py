"""The alert rules (promtool, Debian's, runs their tests), what each rule names, the lab's shortened copy, and the
two rulebooks: the same source and rules, one action each."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tradeops.lab.errors import LabError
from tradeops.lab.monitoring import parse_duration, shorten_rules
from tradeops.runner.catalog import get_incident

RULES = ROOT / "monitoring" / "prometheus" / "trading_rules.yml"
RULEBOOKS = ROOT / "extensions" / "eda" / "rulebooks"


def promtool():
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not shutil.os.access(path, shutil.os.X_OK):
        pytest.fail("promtool is missing: `make setup` installs Debian's prometheus")
    return path


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    check = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([promtool(), "test", "rules", "trading_rules_test.yml"], cwd=RULES.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_rule_names_an_incident_playbook_and_a_severity_and_is_tested():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tested = RULES.with_name("trading_rules_test.yml").read_text()
    assert len(rules) >= 10
    for rule in rules:
        labels = rule["labels"]
        assert labels["severity"] in ("P0", "P1", "P2"), rule["alert"]
        assert get_incident(labels["tradeops_playbook"]).kind == "incident", rule["alert"]
        assert f"alertname: {rule['alert']}" in tested, f"{rule['alert']} has no promtool test"


def test_the_lab_copy_cuts_long_for_windows_and_says_so():
    doc, changed = shorten_rules(RULES.read_text(), "3s")
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert rules["TradingErrorRateHigh"]["for"] == "3s"
    assert rules["TradingErrorRateHigh"]["annotations"]["lab_for_original"] == "2m"
    assert {"alert": "TradingDrawdownHigh", "original": "1h", "now": "3s"} in changed
    doc, changed = shorten_rules(RULES.read_text(), "1h")
    assert {c["alert"] for c in changed} == set()


@pytest.mark.parametrize("text,seconds", [("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (3, 3.0)])
def test_prometheus_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 m", "1x"])
def test_bad_durations_are_refused(text):
    with pytest.raises(LabError, match="not a Prometheus duration"):
        parse_duration(text)


def test_the_local_and_controller_rulebooks_share_source_and_rules_and_differ_in_the_action():
    local = yaml.safe_load((RULEBOOKS / "trading_incidents.yml").read_text())[0]
    ctl = yaml.safe_load((RULEBOOKS / "trading_incidents_controller.yml").read_text())[0]
    assert local["sources"] == ctl["sources"]
    assert local["execution_strategy"] == ctl["execution_strategy"] == "sequential"
    for a, b in zip(local["rules"], ctl["rules"], strict=True):
        assert a["condition"] == b["condition"]
        assert a.get("throttle") == b.get("throttle")
    run = local["rules"][-1]
    assert run["throttle"] == {"once_within": "10 minutes", "group_by_attributes": ["event.alert.fingerprint"]}
    assert run["action"]["run_playbook"]["name"] == "tradeops.remediation.alert_response"
    job = ctl["rules"][-1]["action"]["run_job_template"]
    assert "tradeops_eda_phases[event.alert.labels.tradeops_playbook].tags" in job["job_args"]["job_tags"]
    # nothing but the last rule acts; the first two only record
    assert [list(r["action"]) for r in local["rules"][:2]] == [["debug"], ["debug"]]
    assert local["rules"][0]["condition"] == 'event.alert.status == "resolved"'
