"""Mermaid diagrams checked by Mermaid itself: ``parse`` runs the real Mermaid parser and diagram database under
Node (tests/js/mermaid_check.mjs; ``npm ci --prefix tests/js`` by scripts/setup.sh) and returns what it read, or
raises :class:`MermaidSyntaxError` with Mermaid's own message."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parents[1] / "js"
SCRIPT = JS / "mermaid_check.mjs"


class MermaidSyntaxError(AssertionError):
    """Mermaid refused the diagram."""


def blocks(markdown: str) -> list[str]:
    """The sources of the ```mermaid fenced blocks of ``markdown``, in order."""
    return [m.group(1) for m in re.finditer(r"^```mermaid[ \t]*\n(.*?)^```[ \t]*$", markdown, re.M | re.S)]


def parse_all(sources: list[str]) -> list[dict]:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "mermaid").is_dir():
        raise RuntimeError("the Mermaid checker needs node and tests/js/node_modules (run `make setup`, which runs "
                           "`npm ci --prefix tests/js`)")
    proc = subprocess.run([node, str(SCRIPT)], input=json.dumps(sources), capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TZ": "UTC"}, cwd=JS)
    if proc.returncode != 0:
        raise RuntimeError(f"the Mermaid checker failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def parse(source: str) -> dict:
    """What Mermaid read from ``source`` (for a gantt: its title, sections and tasks with their computed times)."""
    result = parse_all([source])[0]
    if not result["ok"]:
        raise MermaidSyntaxError(f"Mermaid refused the diagram: {result['error']}\n{source}")
    return result
