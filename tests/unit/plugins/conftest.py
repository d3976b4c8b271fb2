"""Fixtures shared by the module_utils and module tests of rotate_secret."""

from __future__ import annotations

import os

import pytest

from tests.unit.plugins.module_utils.test_secrets import Consumer
from tests.unit.plugins.module_utils.test_secrets_batch import HEAD, KEYS, TAIL, env_values, old_value


@pytest.fixture(autouse=True)
def fingerprint_key_path(tmp_path_factory, monkeypatch):
    """rotate_secret's fingerprint key (TRADEOPS_FINGERPRINT_KEY_PATH) in a temp dir of each test, never the
    real ~/.ansible/tradeops/fingerprint.key; created by the module on first use."""
    path = tmp_path_factory.mktemp("fpkey") / "state" / "fingerprint.key"
    monkeypatch.setenv("TRADEOPS_FINGERPRINT_KEY_PATH", str(path))
    return path


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
