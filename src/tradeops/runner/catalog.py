"""Discover the incident playbooks of the collection.

Every ``playbooks/*.yml`` is a candidate. What it is comes from, in order of precedence:

1. a metadata block in its header comment, written by the playbook's author::

       # tradeops-incident:
       #   title: Data corruption
       #   severity: P1
       #   description: corrupt rows in the orders DB: halt, read-only, backup, quarantine, verify
       #   kind: incident            # incident (default), action (a tool such as resume_trading) or config

2. the built-in entries below, for the playbooks this module was written against;
3. otherwise it is inferred: an incident whose severity is the first ``P0``..``P4`` in its header comment and
   whose description is the first sentence of that comment.

``kind: config`` playbooks (``awx_configure.yml``) are never run against trading systems by ``tradeops run``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .exceptions import RunnerConfigurationError, UnknownIncidentError

ENV_PROJECT_DIR = "TRADEOPS_PROJECT_DIR"
METADATA_MARKER = "tradeops-incident:"
KINDS = ("incident", "action", "config")
SEVERITY_RE = re.compile(r"\bP([0-4])\b")

# Playbooks that exist as this module is written; a header block in the playbook overrides these.
BUILTIN: dict[str, dict[str, str]] = {
    "p0_outage": {
        "title": "P0 outage",
        "severity": "P0",
        "description": "Every engine down or unsafe: halt all at once (verified), assess, capture evidence, "
        "repair the NO-GO engines, verify, gated resume, report",
    },
    "data_corruption": {
        "title": "Data corruption",
        "severity": "P1",
        "description": "Corrupt rows in the orders DB: halt, read-only, verified backup, scan, quarantine, "
        "reconcile, writable, health gate, gated resume, report; no row is ever lost",
    },
    "security_breach": {"title": "Security breach", "severity": "P0"},
    "resume_trading": {
        "title": "Resume trading",
        "kind": "action",
        "severity": "-",
        "description": "The gated resume: health gate, then resume only with resume_trading_approved=true",
    },
    "health_check": {
        "title": "Health check",
        "kind": "action",
        "severity": "-",
        "description": "Read-only probe of every engine, PostgreSQL and Redis; safe at any time",
    },
    "capture_evidence": {
        "title": "Capture evidence",
        "kind": "action",
        "severity": "-",
        "description": "Logs, processes, sockets, recent errors and redacted env files, checksummed",
    },
    "awx_configure": {
        "title": "AWX configuration",
        "kind": "config",
        "severity": "-",
        "description": "Apply the awx/ job templates and workflow to AWX / Automation Controller",
    },
}


@dataclass(frozen=True)
class Incident:
    """One runnable playbook: an incident (or a tool such as resume_trading)."""

    name: str
    playbook: Path
    title: str
    severity: str
    description: str
    kind: str = "incident"
    source: str = "inferred"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["playbook"] = str(self.playbook)
        return data


def find_project_dir(project_dir: str | os.PathLike[str] | None = None) -> Path:
    """The collection checkout: ``project_dir``, else ``$TRADEOPS_PROJECT_DIR``, else the nearest directory
    above the cwd with ``galaxy.yml`` and ``playbooks/``, else the checkout this package is installed from."""

    def ok(p: Path) -> bool:
        return (p / "playbooks").is_dir() and (p / "ansible.cfg").is_file()

    for given in (project_dir, os.environ.get(ENV_PROJECT_DIR)):
        if given:
            path = Path(given).expanduser().resolve()
            if not ok(path):
                raise RunnerConfigurationError(
                    f"{path} is not a tradeops.remediation checkout (no playbooks/, ansible.cfg)")
            return path
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "galaxy.yml").is_file() and ok(candidate):
            return candidate
    package_root = Path(__file__).resolve().parents[3]
    if ok(package_root):
        return package_root
    raise RunnerConfigurationError(
        "cannot find the tradeops.remediation checkout (galaxy.yml, ansible.cfg, playbooks/): run from inside it "
        f"or set ${ENV_PROJECT_DIR}"
    )


def _header(path: Path) -> list[str]:
    """The leading comment lines of a playbook, without their '#'."""
    lines: list[str] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return lines
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line == "---":
            if lines and not line:
                break
            continue
        if not line.lstrip().startswith("#"):
            break
        lines.append(line.lstrip()[1:])
    return lines


def _metadata_block(header: list[str]) -> dict[str, Any]:
    """The ``tradeops-incident:`` block of a header, parsed as YAML (a mapping), else {}."""
    for i, line in enumerate(header):
        stripped = line.strip()
        if not stripped.startswith(METADATA_MARKER):
            continue
        inline = stripped[len(METADATA_MARKER):].strip()
        if inline:  # the flow form: "# tradeops-incident: {severity: P1, kind: incident}"
            try:
                data = yaml.safe_load(inline)
            except yaml.YAMLError:
                return {}
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        meta = {}
        for follow in header[i + 1:]:  # the block form: one "key: value" per indented line
            if not follow.startswith((" ", "\t")) or not follow.strip():
                break
            key, sep, value = follow.strip().partition(":")
            if sep and key.strip().isidentifier():
                meta[key.strip()] = value.strip().strip("'\"")
        return meta
    return {}


def _first_sentence(header: list[str]) -> str:
    text = " ".join(line.strip() for line in header if line.strip() and METADATA_MARKER not in line)
    if not text:
        return ""
    sentence = re.split(r"(?<=[.;])\s|\s{2,}", text, maxsplit=1)[0]
    return sentence if len(sentence) <= 120 else sentence[:117].rstrip() + "..."


def describe(path: Path) -> Incident:
    """What one playbook is, from its header block, the built-in table, or inference."""
    name = path.stem
    header = _header(path)
    meta = _metadata_block(header)
    builtin = BUILTIN.get(name, {})
    source = "header" if meta else ("builtin" if builtin else "inferred")
    merged = {**builtin, **meta}
    severity = merged.get("severity")
    if not severity:
        match = SEVERITY_RE.search(" ".join(header))
        severity = f"P{match.group(1)}" if match else "unknown"
    kind = merged.get("kind", "incident")
    if kind not in KINDS:
        kind = "incident"
    return Incident(
        name=name,
        playbook=path,
        title=merged.get("title") or name.replace("_", " ").capitalize(),
        severity=str(severity),
        description=merged.get("description") or _first_sentence(header) or "(no description in its header)",
        kind=kind,
        source=source,
    )


def list_incidents(project_dir: str | os.PathLike[str] | None = None, include_actions: bool = False) -> list[Incident]:
    """The incident playbooks (``include_actions``: also the tools such as resume_trading), most severe first."""
    root = find_project_dir(project_dir)
    found = [describe(p) for p in sorted((root / "playbooks").glob("*.yml"))]
    wanted = ("incident", "action") if include_actions else ("incident",)
    found = [i for i in found if i.kind in wanted]

    def order(i: Incident) -> tuple[int, int, str]:
        match = SEVERITY_RE.fullmatch(i.severity)
        return (KINDS.index(i.kind), int(match.group(1)) if match else 9, i.name)

    return sorted(found, key=order)


def get_incident(incident: str | os.PathLike[str], project_dir: str | os.PathLike[str] | None = None) -> Incident:
    """An incident by name (``p0_outage``, ``p0_outage.yml``, ``p0-outage``) or a playbook path."""
    root = find_project_dir(project_dir)
    text = os.fspath(incident).strip()
    if not text:
        raise UnknownIncidentError("no incident given")
    as_path = Path(text).expanduser()
    if as_path.suffix in (".yml", ".yaml") and (os.sep in text or as_path.is_absolute()) and as_path.is_file():
        found = describe(as_path.resolve())
    else:
        name = text[:-4] if text.endswith(".yml") else text
        name = name.replace("-", "_")
        path = root / "playbooks" / f"{name}.yml"
        if not path.is_file() or "/" in name:
            known = [p.stem for p in (root / "playbooks").glob("*.yml")]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `tradeops incidents` lists them"
            raise UnknownIncidentError(f"unknown incident {text!r}{hint}")
        found = describe(path)
    if found.kind == "config":
        raise UnknownIncidentError(f"{found.name} configures AWX; it is not run against trading systems "
                                   f"(ansible-playbook {found.playbook} -e @awx/... instead)")
    return found
