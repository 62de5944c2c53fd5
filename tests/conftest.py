"""Shared test configuration. Coroutine tests run under anyio (``anyio_mode = "auto"``
in pyproject.toml, asyncio backend pinned by the connman.testing plugin);
``find_tool`` locates the external programs some tests run (promtool, pgbouncer)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_TRUE = ("1", "true", "yes", "on")


def require_tools() -> bool:
    """True when a missing external tool must fail the run (``.ci/run`` sets
    ``CONNMAN_REQUIRE_TOOLS=1`` after installing them)."""
    return os.environ.get("CONNMAN_REQUIRE_TOOLS", "").strip().lower() in _TRUE


@pytest.fixture(scope="session")
def find_tool() -> Callable[..., str]:
    """``find_tool("promtool", "/usr/bin/promtool", package="prometheus")``: the path
    of a program (PATH first, then the given locations). Missing: the test is skipped,
    or fails under ``CONNMAN_REQUIRE_TOOLS=1``."""

    def find(name: str, *locations: str, package: str) -> str:
        found = shutil.which(name)
        if found is None:
            found = next((p for p in locations if Path(p).is_file()), None)
        if found is not None:
            return found
        reason = f"{name} not found (Debian: apt-get install {package})"
        if require_tools():
            pytest.fail(f"{reason}, and CONNMAN_REQUIRE_TOOLS=1 forbids skipping", pytrace=False)
        pytest.skip(reason)

    return find


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """structlog's configuration is process-wide; a test that configures it (or uses
    structlog.testing.capture_logs, which leaves it "configured") must not change how
    connman logs in the tests after it."""
    import structlog

    was_configured = structlog.is_configured()
    config = structlog.get_config()
    yield
    if was_configured:
        structlog.configure(**config)
    else:
        structlog.reset_defaults()
