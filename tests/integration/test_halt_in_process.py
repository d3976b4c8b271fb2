"""The kill switch runs in the controller's own process when its task runs there (plugin_utils/in_process.py).

Against the lab's real engines: the halt is the same whichever way it runs (verified, no order after it), the
result says which way it ran, and no secret of the targets shows in the output, even at -vvv, where Ansible
prints every result whole.
"""

from __future__ import annotations

import json
import time

import pytest
from ansible_collections.tradeops.remediation.plugins.inventory.lab import _killswitch_target
from ansible_collections.tradeops.remediation.plugins.module_utils._redact import secret_values

pytestmark = pytest.mark.integration

PLAYBOOK = """
- name: Halt one engine, one way
  hosts: "{{ engine }}"
  gather_facts: false
  tasks:
    - name: Halt it
      tradeops.remediation.halt_trading:
        targets: "{{ [engine] | tradeops.remediation.killswitch_targets(hostvars) }}"
        state: halted
        apply_all: true
      delegate_to: localhost
      register: halt
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ halt | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      delegate_to: localhost
"""


def secrets_of(lab, name):
    """The secret values (tokens, passwords) in the engine's kill-switch target and the lab's Redis."""
    engine = next(e for e in lab.state["engines"] if e["name"] == name)
    return secret_values([_killswitch_target(engine, lab.state["admin_token"]), lab.state["redis"]], secret=False,
                         min_length=6)


@pytest.mark.parametrize("on_controller", [True, False], ids=["in-process", "module"])
def test_the_halt_is_the_same_either_way_and_its_output_holds_no_secret(lab_factory, tmp_path, on_controller):
    lab = lab_factory(engines=1, mix="killswitch_api")
    playbook = tmp_path / "halt.yml"
    playbook.write_text(PLAYBOOK)
    secrets = secrets_of(lab, "engine-001")
    assert secrets, "the target has a token: the check below must be able to fail"
    since = time.time()
    proc = lab.run_playbook(str(playbook), "-vvv", "-e", json.dumps({
        "engine": "engine-001", "tradeops_run_on_controller": on_controller,
        "result_file": str(tmp_path / "result.json")}))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result.get("ran_on_controller", False) is on_controller
    assert result["halted"] == ["engine-001"] and result["failed_targets"] == [] and not result.get("failed")
    assert result["targets"][0]["verified"] is True
    # the module path builds a payload; the in-process path does not
    assert ("AnsiballZ_halt_trading" in proc.stdout + proc.stderr) is not on_controller
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr
    lab.assert_stays_halted(["engine-001"], since=result["targets"][0]["halted_at"], window=1.0)
    assert since < result["targets"][0]["halted_at"]


PROBE_AND_VENUE = """
- name: Probe one engine and read its venue account, one way
  hosts: "{{ engine }}"
  gather_facts: false
  tasks:
    - name: Probe it
      tradeops.remediation.health_check:
        probes: "{{ [engine] | tradeops.remediation.stack_probes(hostvars) }}"
      delegate_to: localhost
      register: probe
    - name: Cancel its working orders at the venue, read back
      tradeops.remediation.venue_guard:
        action: cancel_all
        accounts: "{{ [engine] | tradeops.remediation.venue_accounts(hostvars) }}"
      delegate_to: localhost
      register: venue
    - name: Keep the results
      ansible.builtin.copy:
        content: "{{ {'probe': probe, 'venue': venue} | to_json }}"
        dest: "{{ result_file }}"
        mode: "0600"
      delegate_to: localhost
"""


@pytest.mark.parametrize("on_controller", [True, False], ids=["in-process", "module"])
def test_probes_and_venue_actions_run_the_same_either_way(lab_factory, tmp_path, on_controller):
    lab = lab_factory(engines=1)
    playbook = tmp_path / "probe.yml"
    playbook.write_text(PROBE_AND_VENUE)
    proc = lab.run_playbook(str(playbook), "-vvv", "-e", json.dumps({
        "engine": "engine-001", "tradeops_run_on_controller": on_controller,
        "result_file": str(tmp_path / "result.json")}))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = json.loads((tmp_path / "result.json").read_text())
    for name in ("probe", "venue"):
        assert out[name].get("ran_on_controller", False) is on_controller, name
    assert out["probe"]["status"] == "GO" and out["probe"]["probes"][0]["status"] == "GO"
    account = out["venue"]["accounts"][0]
    assert out["venue"]["failed_accounts"] == [] and account["status"] == "verified", account
    assert account["working_after"] == 0
    for secret in secrets_of(lab, "engine-001") + secret_values(lab.state.get("exchange") or {}, min_length=6):
        assert secret not in proc.stdout and secret not in proc.stderr
