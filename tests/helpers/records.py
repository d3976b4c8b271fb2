"""The incident record in tests: read it where a run wrote it, and check it against the shipped JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "schemas" / "incident-record.schema.json"
_VALIDATOR = None


def validator() -> jsonschema.Draft202012Validator:
    global _VALIDATOR  # noqa: PLW0603 - one compiled schema per session
    if _VALIDATOR is None:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator.check_schema(schema)
        _VALIDATOR = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    return _VALIDATOR


def validate(record: dict) -> dict:
    """The record, after checking it against the schema (every error listed, with its path)."""
    errors = sorted(validator().iter_errors(record), key=lambda e: list(e.absolute_path))
    assert not errors, "the incident record does not match schemas/incident-record.schema.json:\n" + "\n".join(
        f"  {e.json_path}: {e.message[:300]}" for e in errors[:20])
    return record


def read_record(directory: Path | str, incident_id: str) -> dict:
    """``<directory>/<incident_id>.json``, validated."""
    path = Path(directory) / f"{incident_id}.json"
    return validate(json.loads(path.read_text(encoding="utf-8")))


def postmortem(directory: Path | str, incident_id: str) -> str:
    return (Path(directory) / f"{incident_id}.md").read_text(encoding="utf-8")
