"""What can stop a migration, each with the exit code the CLI returns for it.

Messages name the problem and the fix; they never contain a password (every URL is
redacted before it gets here, driver messages go through ``redact_text``).
"""

from __future__ import annotations

from connman.errors import ConnmanError

__all__ = [
    "EXIT_DIFFERENCES",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SCHEMA",
    "EXIT_SOURCE",
    "EXIT_TARGET",
    "EXIT_TARGET_FULL",
    "EXIT_USAGE",
    "MigrationError",
    "SchemaIncompatible",
    "SourceError",
    "TargetFull",
    "TargetUnavailable",
]

EXIT_OK = 0
"""Every row is on the target (migrate), or both sides match (verify)."""
EXIT_DIFFERENCES = 1
"""Finished, but rows were rejected (migrate) or the sides differ (verify)."""
EXIT_USAGE = 2
"""Bad flags or a bad URL (argparse and ``ConfigError`` use 2 as well)."""
EXIT_SOURCE = 3
"""The source cannot be read: missing file, not a database, unreachable server."""
EXIT_TARGET = 4
"""The target cannot be reached or written: unreachable, wrong password, no such
database, permission denied."""
EXIT_SCHEMA = 5
"""A table on the target has a schema the source's rows cannot go into."""
EXIT_TARGET_FULL = 6
"""The target ran out of space (disk full); nothing half-written stays behind."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT): whole batches only are on the target; rerun to resume."""


class MigrationError(ConnmanError):
    """A migration or verification cannot go on; ``exit_code`` is the CLI's."""

    exit_code = EXIT_SOURCE


class SourceError(MigrationError):
    """The source cannot be read."""

    exit_code = EXIT_SOURCE


class TargetUnavailable(MigrationError):
    """The target cannot be reached, logged into, or written."""

    exit_code = EXIT_TARGET


class SchemaIncompatible(MigrationError):
    """A target table exists with a schema the source's rows do not fit."""

    exit_code = EXIT_SCHEMA


class TargetFull(MigrationError):
    """The target's disk is full. The batch being written was rolled back."""

    exit_code = EXIT_TARGET_FULL
