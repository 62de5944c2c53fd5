"""Fixtures of the fault tests (helpers live in tests/support/faultkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.faultkit import ManagerFactory


@pytest.fixture
async def make_manager() -> AsyncIterator[ManagerFactory]:
    """``await make_manager(url, **pool_config)``: a started ConnectionManager
    (``degrade=False``), closed at teardown."""
    factory = ManagerFactory()
    try:
        yield factory
    finally:
        await factory.aclose()
