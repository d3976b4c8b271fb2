"""The session's lab: one real lab (PostgreSQL, Redis, engines) shared by the tests that can share it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tradeops.lab import Lab

from .helpers import ENGINES, ORDER_INTERVAL


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    the_lab = Lab(tmp_path_factory.mktemp("session-lab") / "lab")
    the_lab.up(engines=ENGINES, order_interval=ORDER_INTERVAL)
    try:
        yield the_lab
    finally:
        the_lab.down()
