"""p0_outage through the real ansible-runner (as AWX runs jobs), with a secret-leak check.

The lab's admin token and Redis password are the canaries: they reach the module only through
no_log options, so they must appear nowhere in ansible-runner's artifacts (stdout, job events,
the recorded command and environment).
"""

from __future__ import annotations

from pathlib import Path

import ansible_runner
import pytest

from tests.conftest import ROOT, ansible_env
from tests.integration.test_p0_outage import assert_no_orders_after_halt

pytestmark = pytest.mark.integration


def test_p0_outage_via_ansible_runner_halts_and_leaks_no_secret(lab_factory, tmp_path):
    lab = lab_factory(engines=4)
    env = ansible_env(lab.dir)
    envvars = {k: env[k] for k in ("ANSIBLE_CONFIG", "TRADEOPS_LAB_DIR", "PATH")}
    (tmp_path / "runner").mkdir()
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(ROOT),
        playbook=str(ROOT / "playbooks" / "p0_outage.yml"),
        inventory=str(ROOT / "inventories" / "lab"),
        envvars=envvars,
        extravars={"halt_trading_quiesce_seconds": 1},
        quiet=True,
        timeout=300,
    )
    assert result.status == "successful", result.stdout.read()[-3000:]
    assert result.rc == 0
    halts = [e for e in result.events if e.get("event") == "runner_on_ok"
             and "halted" in (e["event_data"].get("res") or {})]
    # contain + the strict re-verify after repair: each ONE task result, not one per host
    assert len(halts) == 2, [h["event_data"]["host"] for h in halts]
    res = halts[0]["event_data"]["res"]
    assert sorted(res["halted"]) == sorted(lab.engines())
    # no order after any engine's verified halt, at every look for half a second (a late order would show)
    assert_no_orders_after_halt(lab, {t["name"]: t for t in res["targets"]}, lab.engines(), watch=0.5)

    canaries = [lab.state["admin_token"], lab.state["redis"]["password"], lab.state["postgres"]["password"]]
    files = [p for p in Path(tmp_path / "runner").rglob("*") if p.is_file()]
    assert any(p.parent.name == "job_events" for p in files) and any(p.name == "command" for p in files)
    for path in files:
        if path.is_file():
            text = path.read_text(errors="replace")
            for secret in canaries:
                assert secret not in text, f"a lab secret leaked into {path.relative_to(tmp_path)}"
