"""SQL on a lease's raw connection, the same four calls on asyncpg and aiosqlite.

The adapters write their SQL per dialect already (``$1`` for asyncpg, ``?`` for
sqlite3) and hand positional arguments here. What differs between the drivers, and
is settled once in this module:

- **Commit.** asyncpg runs a statement outside a transaction in autocommit; sqlite3
  (``isolation_level="IMMEDIATE"``) opens a ``BEGIN IMMEDIATE`` before the first write
  and keeps it open. With ``autocommit=True`` every call commits what it opened, so a
  write outside :func:`transaction` is durable when the call returns, as on Postgres.
- **Row counts.** asyncpg returns a status tag (``INSERT 0 3``); sqlite3 a
  ``rowcount`` that is -1 for statements without one. Both become an int >= 0.
- **Rows.** Both become ``dict`` (column name -> value).
- **Transactions.** ``BEGIN`` / ``BEGIN IMMEDIATE`` (take SQLite's write lock at the
  start, so concurrent writers queue on ``busy_timeout`` instead of failing with
  "database is locked"), ``COMMIT`` on success. On an error or a cancellation nothing
  is done here: the lease is released as failed, and the pool rolls the transaction
  back before anyone else gets the connection (a rollback attempted from a cancelled
  task could itself be interrupted).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from connman.manager import Lease

__all__ = ["RawSQL", "transaction"]


class RawSQL:
    """One lease's connection, seen through the same calls on both dialects."""

    __slots__ = ("_autocommit", "_lease", "dialect", "postgres")

    def __init__(self, lease: Lease, *, autocommit: bool) -> None:
        self._lease = lease
        self.dialect = lease.dialect
        self.postgres = self.dialect == "postgresql"
        self._autocommit = autocommit

    @property
    def _conn(self) -> Any:
        # Through the lease every time: once the lease has ended this raises
        # LeaseError instead of reaching a connection someone else now holds.
        return self._lease.connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it affected (0 when it has none)."""
        if self.postgres:
            status = await self._conn.execute(sql, *args)
            return _status_count(status)
        cursor = await self._conn.execute(sql, tuple(args))
        count = int(cursor.rowcount)
        await cursor.close()
        await self._settle()
        return max(count, 0)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per argument row in one batch (asyncpg pipelines them,
        sqlite3 steps one prepared statement); atomic on both. The number of rows."""
        batch = [tuple(row) for row in rows]
        if not batch:
            return 0
        if self.postgres:
            await self._conn.executemany(sql, batch)
        else:
            cursor = await self._conn.executemany(sql, batch)
            await cursor.close()
            await self._settle()
        return len(batch)

    async def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row, as dicts."""
        if self.postgres:
            return [dict(record) for record in await self._conn.fetch(sql, *args)]
        cursor = await self._conn.execute(sql, tuple(args))
        try:
            rows = await cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        await self._settle()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row as a dict, or None."""
        if self.postgres:
            record = await self._conn.fetchrow(sql, *args)
            return None if record is None else dict(record)
        cursor = await self._conn.execute(sql, tuple(args))
        try:
            row = await cursor.fetchone()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        await self._settle()
        return None if row is None else dict(zip(names, row, strict=True))

    async def fetch_value(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        if self.postgres:
            return await self._conn.fetchval(sql, *args)
        row = await self.fetch_one(sql, args)
        return None if row is None else next(iter(row.values()))

    async def _settle(self) -> None:
        # sqlite3 opened a transaction for a write (or an INSERT ... RETURNING read
        # through fetch_*): outside transaction(), commit it now.
        if self._autocommit and self._conn.in_transaction:
            await self._conn.commit()


@asynccontextmanager
async def transaction(lease: Lease) -> AsyncIterator[RawSQL]:
    """``BEGIN`` (``BEGIN IMMEDIATE`` on SQLite) ... ``COMMIT`` on the lease. On an
    exception the transaction is left open for the lease's release to roll back
    (see the module docstring); the caller must let the exception leave the lease."""
    raw = RawSQL(lease, autocommit=False)
    conn: Any = lease.connection
    await conn.execute("BEGIN" if raw.postgres else "BEGIN IMMEDIATE")
    yield raw
    if raw.postgres:
        await conn.execute("COMMIT")
    else:
        await conn.commit()


def _status_count(status: str) -> int:
    # "INSERT 0 3", "UPDATE 2", "DELETE 0", "SELECT 5", "CREATE TABLE" -> 3, 2, 0, 5, 0
    tail = status.rsplit(" ", 1)[-1] if status else ""
    return int(tail) if tail.isdigit() else 0
