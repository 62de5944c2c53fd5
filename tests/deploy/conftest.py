"""Fixtures of the deploy tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest


@pytest.fixture(scope="session")
def compose_cli(find_tool: Callable[..., str]) -> list[str]:
    """The compose command: ``docker compose`` when the docker CLI has the plugin,
    else Debian's ``docker-compose``; missing: skipped, or failed under
    ``CONNMAN_REQUIRE_TOOLS=1``."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=60, check=False
        )
        if plugin.returncode == 0:
            return [docker, "compose"]
    return [find_tool("docker-compose", "/usr/bin/docker-compose", package="docker-compose")]
