"""Connect failures: each host's outcome, one reason for the pool, and whether retrying
can help."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest

from connman import UnavailableReason
from connman.diagnose import HostsFailed, diagnose, host_outcome
from connman.urls import parse_url

URL = parse_url("postgresql://u:secret-pw@127.0.0.1:5601,127.0.0.1:5602/db")
ONE = parse_url("postgresql://u@127.0.0.1:5601/db")


def test_each_host_outcome_is_a_short_word() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed")
    standby = asyncpg.TargetServerAttributeNotMatched("no match")
    assert host_outcome(refused, ONE) == ("refused", UnavailableReason.UNREACHABLE)
    assert host_outcome(standby, ONE) == ("read-only", UnavailableReason.READ_ONLY)
    assert host_outcome(TimeoutError(), ONE) == ("timed out", UnavailableReason.UNREACHABLE)


def test_a_refused_host_and_a_standby_say_no_host_accepts_writes() -> None:
    exc = HostsFailed(
        [("127.0.0.1:5601", "refused"), ("127.0.0.1:5602", "read-only")],
        [UnavailableReason.UNREACHABLE, UnavailableReason.READ_ONLY],
    )
    assert str(exc) == "127.0.0.1:5601 refused; 127.0.0.1:5602 read-only"
    found = diagnose(exc, URL)
    assert found.reason is UnavailableReason.READ_ONLY
    assert "promote a standby" in found.hint
    assert "127.0.0.1:5601 refused; 127.0.0.1:5602 read-only" in found.hint
    assert "secret-pw" not in found.hint


def test_nothing_answering_on_any_host_is_unreachable() -> None:
    exc = HostsFailed(
        [("127.0.0.1:5601", "refused"), ("127.0.0.1:5602", "timed out")],
        [UnavailableReason.UNREACHABLE, UnavailableReason.UNREACHABLE],
    )
    assert diagnose(exc, URL).reason is UnavailableReason.UNREACHABLE


def test_sqlite_busy_is_transient_and_an_unopenable_file_permanent(tmp_path: Path) -> None:
    """Decided by SQLite's result code, whatever the message says: a database
    locked by another connection (SQLITE_BUSY) is worth retrying, a directory given
    as the database file (SQLITE_CANTOPEN) is not."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sqlite3.OperationalError) as busy:
            sqlite3.connect(path, timeout=0).execute("SELECT 1 FROM sqlite_master")
    finally:
        holder.close()
    with pytest.raises(sqlite3.OperationalError) as cantopen:
        sqlite3.connect(tmp_path)  # a directory, its name has no "locked" in it
    url = parse_url(f"sqlite:///{path}")
    assert busy.value.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    assert not diagnose(busy.value, url).permanent
    assert diagnose(cantopen.value, url).permanent
    assert diagnose(PermissionError(13, "Permission denied"), url).permanent


def test_postgres_refusals_that_retrying_cannot_fix_are_permanent() -> None:
    wrong_password = asyncpg.InvalidPasswordError("password authentication failed")
    no_database = asyncpg.InvalidCatalogNameError('database "db" does not exist')
    full = asyncpg.TooManyConnectionsError("sorry, too many clients already")
    assert diagnose(wrong_password, ONE).permanent
    assert diagnose(no_database, ONE).permanent
    assert not diagnose(full, ONE).permanent
    assert not diagnose(ConnectionRefusedError(111, "refused"), ONE).permanent
