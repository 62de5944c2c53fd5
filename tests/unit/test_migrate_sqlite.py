"""The SQLite source's parents-first check (the copy reads a causal chain in rowid
order when it passes, and sorts the chain by depth when it does not)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from connman.migrate.sqlite_side import SqliteFile

CHAIN = [("a", None), ("b", "a"), ("c", "b"), ("d", "a"), ("e", "missing")]


def source(path: Path, rows: list[tuple[str, str | None]]) -> SqliteFile:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE data (id TEXT PRIMARY KEY, causal_parent TEXT)")
    conn.executemany("INSERT INTO data VALUES (?, ?)", rows)
    conn.commit()
    conn.close()
    return SqliteFile(str(path))


@pytest.mark.parametrize(
    ("rows", "ordered"),
    [
        (CHAIN, True),  # appended: every parent first (a missing parent is no obstacle)
        (CHAIN[::-1], False),  # children written before their parents
        ([("a", None), ("b", "b")], False),  # its own parent: a cycle of one
        ([("a", "b"), ("b", "a")], False),  # a cycle of two
        ([], True),
    ],
)
def test_parents_precede(tmp_path: Path, rows: list[tuple[str, str | None]], ordered: bool) -> None:
    assert source(tmp_path / "m.db", rows).parents_precede("data", "id", "causal_parent") is ordered
