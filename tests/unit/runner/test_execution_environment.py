"""execution-environment.yml renders into an ansible-builder build context (no network needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

BUILDER = Path(sys.executable).parent / "ansible-builder"


@pytest.mark.skipif(not BUILDER.exists() and not shutil.which("ansible-builder"),
                    reason="ansible-builder is not installed (make setup installs it)")
def test_ansible_builder_create_writes_the_build_context(tmp_path):
    context = tmp_path / "context"
    proc = subprocess.run([str(BUILDER if BUILDER.exists() else "ansible-builder"), "create",
                           "-f", str(ROOT / "execution-environment.yml"), "-c", str(context),
                           "--output-filename", "Containerfile"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    containerfile = (context / "Containerfile").read_text()
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["images"]["base_image"]["name"] in containerfile
    assert "ansible-core>=2.17,<2.20" in containerfile and "ansible-runner>=2.4,<2.5" in containerfile
    build = context / "_build"
    python = (build / "requirements.txt").read_text().split()
    assert {"psycopg2-binary>=2.9,<3", "redis>=5,<9", "docker>=7,<8", "kubernetes>=29,<38"} <= set(python)
    # the runtime dependencies of the package are all in the EE
    project = (ROOT / "pyproject.toml").read_text()
    for req in python:
        assert f'"{req}"' in project, f"{req} is not a dependency in pyproject.toml"
    bindep = (build / "bindep.txt").read_text()
    assert "libpq [platform:rpm]" in bindep and "procps-ng [platform:rpm]" in bindep
    collections = {c["name"] for c in yaml.safe_load((build / "requirements.yml").read_text())["collections"]}
    assert {"community.postgresql", "community.general", "community.docker", "kubernetes.core",
            "ansible.posix"} <= collections
    for script in ("assemble", "install-from-bindep", "introspect.py"):
        assert (build / "scripts" / script).is_file()
