"""The wall time of ``make test`` itself, per tier, from the JUnit XML its last run wrote
(``tests/output/junit.xml``; ``make test`` writes it). Not a new run: ``make test`` takes half an hour; this
section reads what the last one measured. Per tier (unit, integration, molecule, sanity, ...): the tests' own
time summed (with pytest-xdist the tiers overlap, so the sums exceed the wall time) and the count; and the
run's wall time (the test suite's ``time``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from _common import ROOT

JUNIT = ROOT / "tests" / "output" / "junit.xml"


def tier_of(classname: str) -> str:
    parts = classname.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tests" else parts[0]


def run_test_times(junit: Path = JUNIT) -> dict[str, Any]:
    out: dict[str, Any] = {"method": __doc__.strip().split("\n\n")[0], "junit": str(junit)}
    if not junit.exists():
        out["missing"] = f"{junit} does not exist: run `make test` first"
        return out
    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tiers: dict[str, dict[str, Any]] = {}
    for case in root.iter("testcase"):
        tier = tier_of(case.get("classname", ""))
        t = tiers.setdefault(tier, {"tests": 0, "summed_s": 0.0, "failed": 0})
        t["tests"] += 1
        t["summed_s"] += float(case.get("time") or 0)
        t["failed"] += sum(1 for c in case if c.tag in ("failure", "error"))
    for t in tiers.values():
        t["summed_s"] = round(t["summed_s"], 1)
    out["tiers"] = dict(sorted(tiers.items()))
    out["wall_s"] = round(sum(float(s.get("time") or 0) for s in suites), 1)
    out["timestamp"] = suites[0].get("timestamp") if suites else None
    return out
