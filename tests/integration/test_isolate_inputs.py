"""The isolate role refuses, before it touches any firewall, an allow-list that would open everything.

Runs the role's iptables path on localhost with inputs it must refuse: the refusal comes from its first
checks, and the run is in check mode besides, so nothing here can change this machine's firewall (the
role's real rules are proven in the molecule security_breach scenario, inside containers)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT, VENV_BIN, ansible_env

pytestmark = pytest.mark.integration

PLAY = """
- hosts: localhost
  gather_facts: false
  roles:
    - role: tradeops.remediation.isolate
      vars:
        isolate_runtime: iptables
        isolate_allow_controller: false
"""


@pytest.mark.parametrize("extra, needle", [
    ('{"isolate_allow_sources": ["10.9.0.0/24"], "isolate_allow_outbound": [{"to": "0.0.0.0/0"}]}', "not everything"),
    ('{"isolate_allow_sources": ["10.9.0.0/24"], "isolate_allow_outbound": [{"to": "::/0", "port": 443}]}',
     "not everything"),
    ('{"isolate_allow_sources": ["0.0.0.0/0"]}', "not everything"),
    ('{"isolate_allow_sources": []}', "needs the management sources"),
    ('{"isolate_allow_sources": ["10.9.0.300"]}', "isolate_allow_sources / isolate_management_cidr[0]: '10.9.0.300' is "
                                                 "not an IPv4 or IPv6 address"),
])
def test_an_allow_list_that_opens_everything_is_refused_before_any_rule(tmp_path, extra, needle):
    play = tmp_path / "isolate.yml"
    play.write_text(PLAY)
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play),
                           "--check", "-e", extra], cwd=ROOT, env=ansible_env(), capture_output=True, text=True,
                          timeout=120)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, out[-2000:]
    assert needle in out, out[-2000:]
    assert "Is this a check-mode run" not in out and "Read the host's current filter rules" not in out, \
        "it went past the checks"
