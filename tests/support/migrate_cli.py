"""``connman migrate`` / ``verify`` run as a user runs them, and what their summary says
(shared by the migration test modules)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from connman.urls import parse_url

__all__ = ["pg", "run_cli", "sqlite_file_url", "table_counts", "tier_cli"]


def run_cli(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``python -m connman.cli *args`` in a child process (120 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "connman.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        **kw,
    )


def tier_cli(
    command: str, source: str, target: str, *args: str, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``connman migrate|verify --from source --to target ...`` as a user types it."""
    return run_cli(command, "--from", source, "--to", target, *args, **kw)


def sqlite_file_url(path: Path) -> str:
    """The plain ``sqlite:///`` URL of a file, as a user writes it on the command line
    (not the plugin's ``sqlite_url`` fixture, which is a fresh aiosqlite URL)."""
    return f"sqlite:///{path}"


async def pg(url: str) -> asyncpg.Connection:
    """A bare asyncpg connection to ``url`` (any spelling connman accepts)."""
    return await asyncpg.connect(parse_url(url).connect_dsn())


def table_counts(out: str) -> dict[str, dict[str, int]]:
    """The per-table counts (read, written, present, rejected) of a migrate report."""
    rows: dict[str, dict[str, int]] = {}
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("table ") and "written" in x)
    for line in lines[start + 2 :]:
        parts = line.split()
        if len(parts) != 6:
            break
        name, read, written, present, rejected, _ = parts
        rows[name] = {
            "read": int(read.replace(",", "")),
            "written": int(written.replace(",", "")),
            "present": int(present.replace(",", "")),
            "rejected": int(rejected.replace(",", "")),
        }
    return rows
