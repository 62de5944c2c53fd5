"""Moving kgents storage between tiers: SQLite <-> PostgreSQL, with a dry run,
resumable batched copies, type conversion and a content verify.

``connman migrate --from URL --to URL (--dry-run | --execute)`` and ``connman verify``
(:mod:`connman.migrate.cli`); :func:`migrate` and :func:`verify` from Python.
Modules: :mod:`.kinds` (types), :mod:`.convert` (values), :mod:`.checksum`,
:mod:`.pgcopy` (PostgreSQL's binary COPY format), :mod:`.plan` (what each table
becomes), :mod:`.sqlite_side` / :mod:`.postgres_side`
(reading and writing each dialect), :mod:`.endpoints`, :mod:`.copy` (the run),
:mod:`.compare`, :mod:`.report`.

The names below load their modules on first use, so that registering the CLI
subcommands costs ``connman status`` nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from connman.migrate.errors import (
    MigrationError,
    SchemaIncompatible,
    SourceError,
    TargetFull,
    TargetUnavailable,
)

if TYPE_CHECKING:
    from connman.migrate.compare import Comparison
    from connman.migrate.copy import MigrateOptions, Migration, TableOutcome, migrate, verify

__all__ = [
    "Comparison",
    "MigrateOptions",
    "Migration",
    "MigrationError",
    "SchemaIncompatible",
    "SourceError",
    "TableOutcome",
    "TargetFull",
    "TargetUnavailable",
    "migrate",
    "verify",
]

_LAZY = {
    "MigrateOptions": "connman.migrate.copy",
    "Migration": "connman.migrate.copy",
    "TableOutcome": "connman.migrate.copy",
    "migrate": "connman.migrate.copy",
    "verify": "connman.migrate.copy",
    "Comparison": "connman.migrate.compare",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'connman.migrate' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
