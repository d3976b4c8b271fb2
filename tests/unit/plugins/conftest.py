"""Fixtures shared by the module_utils and module tests of rotate_secret's batch form."""

from __future__ import annotations

import os

import pytest

from tests.unit.plugins.module_utils.test_secrets import Consumer
from tests.unit.plugins.module_utils.test_secrets_batch import HEAD, KEYS, TAIL, env_values, old_value


@pytest.fixture
def env20(tmp_path):
    """An env file of 20 secrets between lines that must survive (mode 0640, owner 4321 when root)."""
    path = tmp_path / "engine.env"
    path.write_text(HEAD + "".join(f"{k}={old_value(k)}\n" for k in KEYS) + TAIL)
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 4321, 4321)
    return path


@pytest.fixture
def file_consumer(env20):
    """A server that accepts any value the file holds now (every key, previous and pending slot)."""
    c = Consumer()
    c.source = lambda: set(env_values(env20).values())
    yield c
    c.close()
