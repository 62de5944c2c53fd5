"""SQL on a lease's raw connection, the same four calls on asyncpg and aiosqlite.

The adapters render their SQL for the dialect (``$1`` for asyncpg, ``?1`` for
sqlite3: :mod:`connman.dialect`, which :attr:`RawSQL.sql` gives) and hand positional
arguments here. What differs between the drivers is settled once in this module, in
one :class:`RawSQL` subclass per driver:

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

from connman.dialect import SQLDialect, dialect_of
from connman.manager import Lease

__all__ = ["RawSQL", "transaction"]


class RawSQL:
    """One lease's connection, seen through the same calls on both dialects.

    ``RawSQL(lease, autocommit=...)`` is the calls of the lease's driver (a subclass
    per driver, picked by the lease's dialect)."""

    __slots__ = ("_autocommit", "_lease", "sql")

    sql: SQLDialect
    """How this connection's SQL spells what differs (:mod:`connman.dialect`)."""

    def __new__(cls, lease: Lease, *, autocommit: bool) -> RawSQL:
        if cls is RawSQL:
            cls = _AsyncpgSQL if lease.dialect == "postgresql" else _SqliteSQL
        return object.__new__(cls)

    def __init__(self, lease: Lease, *, autocommit: bool) -> None:
        self._lease = lease
        self.sql = dialect_of(lease.dialect)
        self._autocommit = autocommit

    @property
    def dialect(self) -> str:
        """``"postgresql"`` or ``"sqlite"``."""
        return self.sql.name

    @property
    def postgres(self) -> bool:
        """True on PostgreSQL."""
        return self.sql.postgres

    @property
    def _conn(self) -> Any:
        # Through the lease every time: once the lease has ended this raises
        # LeaseError instead of reaching a connection someone else now holds.
        return self._lease.connection

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it affected (0 when it has none)."""
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per argument row in one batch (asyncpg pipelines them,
        sqlite3 steps one prepared statement); atomic on both. The number of rows."""
        raise NotImplementedError

    async def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row, as dicts."""
        raise NotImplementedError

    async def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row as a dict, or None."""
        raise NotImplementedError

    async def fetch_value(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """The first column of the first row, or None."""
        raise NotImplementedError

    async def _commit(self) -> None:
        raise NotImplementedError


class _AsyncpgSQL(RawSQL):
    __slots__ = ()

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        return _status_count(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        batch = [tuple(row) for row in rows]
        if batch:
            await self._conn.executemany(sql, batch)
        return len(batch)

    async def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(record) for record in await self._conn.fetch(sql, *args)]

    async def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        record = await self._conn.fetchrow(sql, *args)
        return None if record is None else dict(record)

    async def fetch_value(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return await self._conn.fetchval(sql, *args)

    async def _commit(self) -> None:
        await self._conn.execute("COMMIT")


class _SqliteSQL(RawSQL):
    __slots__ = ()

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(sql, tuple(args))
        count = int(cursor.rowcount)
        await cursor.close()
        await self._settle()
        return max(count, 0)

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        batch = [tuple(row) for row in rows]
        if not batch:
            return 0
        cursor = await self._conn.executemany(sql, batch)
        await cursor.close()
        await self._settle()
        return len(batch)

    async def fetch_all(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = await self._conn.execute(sql, tuple(args))
        try:
            rows = await cursor.fetchall()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        await self._settle()
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def fetch_one(self, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
        cursor = await self._conn.execute(sql, tuple(args))
        try:
            row = await cursor.fetchone()
            names = [d[0] for d in cursor.description or ()]
        finally:
            await cursor.close()
        await self._settle()
        return None if row is None else dict(zip(names, row, strict=True))

    async def fetch_value(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = await self.fetch_one(sql, args)
        return None if row is None else next(iter(row.values()))

    async def _commit(self) -> None:
        await self._conn.commit()

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
    await lease.connection.execute(raw.sql.begin)
    yield raw
    await raw._commit()


def _status_count(status: str) -> int:
    # "INSERT 0 3", "UPDATE 2", "DELETE 0", "SELECT 5", "CREATE TABLE" -> 3, 2, 0, 5, 0
    tail = status.rsplit(" ", 1)[-1] if status else ""
    return int(tail) if tail.isdigit() else 0
