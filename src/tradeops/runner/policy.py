"""What a run that no person started may do: containment and diagnosis, repair only where allowed, never resume.

An automatic run (an alert through ansible-rulebook, a scheduler) runs an incident playbook with Ansible tags
computed here from the playbook's own phase tags:

- ``AUTOMATIC_PHASES`` (identify, contain, assess, diagnose, evidence, measure, report) run: halt the affected
  scope, verified, cancel its working orders at the venue, capture evidence, notify, write the report;
- ``REPAIR_PHASES`` (repair, verify, and the incident-specific repairs) run only with ``allow_repair``;
- ``NEVER_AUTOMATIC`` (resume, liquidate) never run, and neither does any phase tag this module does not know:
  a new playbook's new phase is skipped until someone classifies it here;
- only playbooks of kind ``incident`` run (never resume_trading, liquidate, or a config playbook);
- an approval (any extra var named ``*_approved``) is refused: a person approves, an alert does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .catalog import Incident
from .exceptions import IncidentInputError

AUTOMATIC_PHASES: tuple[str, ...] = ("identify", "contain", "assess", "diagnose", "evidence", "measure", "report")
REPAIR_PHASES: tuple[str, ...] = ("repair", "verify", "reduce", "database", "act", "isolate", "rotate")
NEVER_AUTOMATIC: tuple[str, ...] = ("resume", "liquidate")
APPROVAL_SUFFIX = "_approved"
# tags that are not phases: Ansible's own and the drills' markers
NOT_PHASES: frozenset[str] = frozenset({"always", "never", "molecule-idempotence-notest"})


def playbook_phases(playbook: Path) -> list[str]:
    """The phase tags of a playbook's plays, in order of first appearance."""
    try:
        plays = yaml.safe_load(playbook.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as exc:
        raise IncidentInputError(f"cannot read the phases of {playbook}: {exc}") from exc
    seen: dict[str, None] = {}
    for play in plays if isinstance(plays, list) else []:
        tags = (play or {}).get("tags") or []
        for tag in [tags] if isinstance(tags, str) else tags:
            if str(tag) not in NOT_PHASES:
                seen[str(tag)] = None
    return list(seen)


def automatic_tags(incident: Incident, extravars: Mapping[str, Any] | None = None,
                   allow_repair: bool = False) -> dict[str, str]:
    """``{"tags": ..., "skip_tags": ...}`` for an automatic run of ``incident``; IncidentInputError if an automatic
    run of it is not allowed at all."""
    if incident.kind != "incident":
        raise IncidentInputError(
            f"{incident.name} is a {incident.kind}, not an incident: an automatic run may only contain and "
            "diagnose an incident (a person runs it)")
    approvals = sorted(k for k in (extravars or {}) if str(k).endswith(APPROVAL_SUFFIX))
    if approvals:
        raise IncidentInputError(
            f"an automatic run carries no approval ({', '.join(approvals)}): a person approves, an alert does not")
    allowed = AUTOMATIC_PHASES + (REPAIR_PHASES if allow_repair else ())
    phases = playbook_phases(incident.playbook)
    run = [p for p in phases if p in allowed]
    if not run:
        raise IncidentInputError(
            f"{incident.name} has no phase an automatic run may do (its phases: {', '.join(phases) or 'none'}; "
            f"allowed: {', '.join(allowed)})")
    skip = [p for p in phases if p not in allowed]
    skip += [p for p in NEVER_AUTOMATIC if p not in skip]
    return {"tags": ",".join(run), "skip_tags": ",".join(skip)}


def controller_phases(project_dir: Path, job_templates: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """For the controller rulebook (``tradeops_eda_phases``): each incident with a job template in
    ``job_templates`` (awx/job_templates.yml's ``awx_job_templates``), its name and the automatic phases."""
    from .catalog import get_incident

    out: dict[str, dict[str, str]] = {}
    for jt in job_templates:
        name = Path(str(jt.get("playbook", ""))).stem
        try:
            incident = get_incident(name, project_dir)
        except IncidentInputError:
            continue
        if incident.kind != "incident" or not playbook_phases(incident.playbook):
            continue  # a tool, or a playbook without phases (rotate_secrets): never automatic
        out[name] = {"job_template": str(jt["name"]), **automatic_tags(incident)}
    return dict(sorted(out.items()))


def render_controller_phases(project_dir: Path) -> str:
    """extensions/eda/rulebooks/vars/automatic_phases.yml as it must read (tests/unit/eda compares)."""
    jts = yaml.safe_load((project_dir / "awx" / "job_templates.yml").read_text(encoding="utf-8"))["awx_job_templates"]
    header = ("# Generated from tradeops.runner.policy and awx/job_templates.yml; do not edit. Regenerate with\n"
              "#   python -m tradeops.runner.policy > extensions/eda/rulebooks/vars/automatic_phases.yml\n"
              "# For trading_incidents_controller.yml: each incident's job template and an alert's phases.\n")
    return header + yaml.safe_dump({"tradeops_eda_phases": controller_phases(project_dir, jts)}, sort_keys=True)


if __name__ == "__main__":
    from .catalog import find_project_dir

    print(render_controller_phases(find_project_dir()), end="")
