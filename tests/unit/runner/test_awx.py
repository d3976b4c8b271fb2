"""AWX as code: awx/*.yml and playbooks/awx_configure.yml, validated against the awx.awx modules' own
argument specs (captured from each module's main(); no AWX needed), plus structure and ansible-lint."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tradeops.runner import list_incidents

awx_api = pytest.importorskip("ansible_collections.awx.awx.plugins.module_utils.controller_api")
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator  # noqa: E402

AWX = ROOT / "awx"
PLAYBOOK = ROOT / "playbooks" / "awx_configure.yml"


class _Captured(Exception):
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec


def argument_spec(module: str) -> dict[str, Any]:
    """The argument spec awx.awx.<module> builds in its main(), plus the controller connection options."""
    mod = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{module}")

    class Capture:
        def __init__(self, argument_spec: dict[str, Any], **kwargs: Any) -> None:
            raise _Captured(argument_spec)

    original = mod.ControllerAPIModule
    mod.ControllerAPIModule = Capture
    try:
        mod.main()
    except _Captured as captured:
        spec = dict(captured.spec)
    finally:
        mod.ControllerAPIModule = original
    spec.update(awx_api.ControllerModule.AUTH_ARGSPEC)
    return spec


def doc_suboptions(module: str, option: str) -> dict[str, Any]:
    """An option's documented suboptions as an argument spec (workflow_nodes has no spec of its own)."""
    mod = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{module}")
    doc = yaml.safe_load(mod.DOCUMENTATION)

    def convert(options: dict[str, Any]) -> dict[str, Any]:
        spec = {}
        for name, o in options.items():
            s = {k: o[k] for k in ("type", "choices", "required", "elements") if k in o}
            if "suboptions" in o:
                s["options"] = convert(o["suboptions"])
            spec[name] = s
        return spec

    return convert(doc["options"][option]["suboptions"])


def validate(spec: dict[str, Any], params: dict[str, Any]) -> list[str]:
    result = ArgumentSpecValidator(spec).validate(params)
    return [str(e) for e in result.error_messages]


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((AWX / name).read_text())


def tasks() -> dict[str, dict[str, Any]]:
    plays = yaml.safe_load(PLAYBOOK.read_text())
    return {next(k for k in t if k.startswith("awx.awx.")): t for t in plays[0]["tasks"]}


def render(args: dict[str, Any], item: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """The module args a task sends for one loop item (its Jinja2 templates evaluated by Ansible's Templar)."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    try:  # ansible-core >= 2.19 renders only templates that come from a trusted source (the playbook is one)
        from ansible.template import trust_as_template
    except ImportError:  # pragma: no cover - older ansible-core trusts every string
        def trust_as_template(value: str) -> str:
            return value

    def trusted(value: Any) -> Any:
        if isinstance(value, str):
            return trust_as_template(value)
        if isinstance(value, dict):
            return {k: trusted(v) for k, v in value.items()}
        if isinstance(value, list):
            return [trusted(v) for v in value]
        return value

    templar = Templar(loader=DataLoader(), variables={**context, "item": item})
    return templar.template(trusted(args))


@pytest.fixture(scope="module")
def context() -> dict[str, Any]:
    return {**load("controller.yml"), **load("job_templates.yml"), **load("workflows.yml")}


def test_every_task_option_is_in_the_module_argspec(context):
    for fqcn, task in tasks().items():
        module = fqcn.split(".")[-1]
        spec = argument_spec(module)
        unknown = set(task[fqcn]) - set(spec) - {a for s in spec.values() for a in s.get("aliases", [])}
        assert not unknown, f"{fqcn}: options not in its argument spec: {unknown}"


@pytest.mark.parametrize("fqcn,items", [
    ("awx.awx.job_template", "awx_job_templates"),
    ("awx.awx.workflow_job_template", "awx_workflow_job_templates"),
    ("awx.awx.credential", None),
    ("awx.awx.project", None),
    ("awx.awx.execution_environment", None),
])
def test_rendered_module_args_validate_against_the_argspec(context, fqcn, items):
    task = tasks()[fqcn]
    spec = argument_spec(fqcn.split(".")[-1])
    loop_items = context[items] if items else [{"name": c["name"], "credential_type": c["credential_type"]}
                                                for c in context["awx_credentials"]] if "credential" in fqcn else [{}]
    assert loop_items
    for item in loop_items:
        args = render(task[fqcn], item, context)
        assert validate(spec, args) == [], (fqcn, item.get("name"))


def test_workflow_nodes_validate_against_the_documented_suboptions(context):
    node_spec = doc_suboptions("workflow_job_template", "workflow_nodes")
    for wf in context["awx_workflow_job_templates"]:
        for node in wf["workflow_nodes"]:
            assert validate(node_spec, node) == [], node["identifier"]


def test_one_job_template_per_incident_playbook_with_the_survey(context):
    templates = {t["playbook"]: t for t in context["awx_job_templates"]}
    for incident in list_incidents(ROOT, include_actions=True):
        if incident.name == "alert_response":
            # run by ansible-rulebook only; on AWX the controller rulebook launches the incident's job template
            continue
        rel = f"playbooks/{incident.playbook.name}"
        assert rel in templates, f"{rel} has no job template in awx/job_templates.yml"
    for t in context["awx_job_templates"]:
        assert (ROOT / t["playbook"]).is_file(), t["playbook"]
        variables = [q["variable"] for q in t["survey_spec"]["spec"]]
        assert variables[1] == "incident_severity"
        assert "resume_trading_approved" in variables or "liquidate_approved" in variables, t["name"]
        assert any(v.endswith(("_reason", "_incident_id")) for v in variables), t["name"]
        assert t["survey_enabled"] and t["ask_limit_on_launch"]  # the limit: AWX's launch prompt
        for q in t["survey_spec"]["spec"]:
            assert q["type"] in ("text", "multiplechoice", "integer", "password", "textarea")
            if q["type"] == "multiplechoice":
                assert q["default"] in q["choices"]


def test_the_workflow_is_p0_then_timed_approval_then_approved_resume(context):
    (wf,) = [w for w in context["awx_workflow_job_templates"] if w["name"] == "tradeops | P0 outage, approval, resume"]
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    templates = {t["name"] for t in context["awx_job_templates"]}
    p0, approval, resume = nodes["p0-outage"], nodes["approve-resume"], nodes["resume-trading"]
    assert p0["unified_job_template"]["name"] in templates and p0["extra_data"]["resume_trading_approved"] == "false"
    assert p0["related"]["success_nodes"] == [{"identifier": "approve-resume"}]
    assert approval["unified_job_template"]["type"] == "workflow_approval"
    assert approval["unified_job_template"]["timeout"] > 0
    assert approval["related"]["success_nodes"] == [{"identifier": "resume-trading"}]
    assert "failure_nodes" not in approval["related"] and "always_nodes" not in approval["related"]
    assert resume["unified_job_template"]["name"] == "tradeops | Resume trading"
    assert resume["extra_data"]["resume_trading_approved"] == "true"


def test_the_liquidation_sells_only_after_the_timed_approval(context):
    (wf,) = [w for w in context["awx_workflow_job_templates"] if w["name"] == "tradeops | Liquidate, approval, sell"]
    nodes = {n["identifier"]: n for n in wf["workflow_nodes"]}
    contain, approval, sell = nodes["liquidate-contain"], nodes["approve-liquidation"], nodes["liquidate-sell"]
    assert contain["extra_data"]["liquidate_approved"] == "false"
    assert contain["related"]["success_nodes"] == [{"identifier": "approve-liquidation"}]
    assert approval["unified_job_template"]["type"] == "workflow_approval"
    assert approval["unified_job_template"]["timeout"] > 0
    assert approval["related"]["success_nodes"] == [{"identifier": "liquidate-sell"}]
    assert set(approval["related"]) == {"success_nodes"}  # a denial or a time-out never sells
    assert sell["extra_data"]["liquidate_approved"] == "true"
    template = {t["name"]: t for t in context["awx_job_templates"]}["tradeops | Liquidate"]
    survey = {q["variable"]: q for q in template["survey_spec"]["spec"]}
    assert survey["liquidate_approved"]["default"] == "false"


def test_credentials_are_referenced_never_embedded(context):
    text = "\n".join(p.read_text() for p in sorted(AWX.glob("*.yml"))) + PLAYBOOK.read_text()
    assert not re.search(r"(?im)^\s*(inputs|password|ssh_key_data|vault_password|token|secret)\s*:", text)
    assert "controller_oauthtoken" not in text and "controller_password" not in text
    task = tasks()["awx.awx.credential"]["awx.awx.credential"]
    assert task["state"] == "exists" and "inputs" not in task


def test_awx_configure_passes_ansible_lint():
    lint = Path(sys.executable).parent / "ansible-lint"
    proc = subprocess.run([str(lint), str(PLAYBOOK)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
