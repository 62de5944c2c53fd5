"""Open the two sides of a migration from their URLs, and read either side as a
stream of batches (SQLite in a worker thread, PostgreSQL through a cursor)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from connman.config import PoolConfig
from connman.errors import PoolUnavailable
from connman.manager import ConnectionManager
from connman.migrate.errors import SourceError, TargetUnavailable
from connman.migrate.model import Catalog
from connman.migrate.postgres_side import PostgresSide
from connman.migrate.sqlite_side import SqliteFile, SqliteWriter
from connman.urls import DatabaseURL, parse_url

__all__ = ["Endpoints", "open_endpoints", "read_batches"]

T = TypeVar("T")


@dataclass(slots=True)
class Endpoints:
    """The source, the target, and the manager whose leases reach them."""

    source_url: DatabaseURL
    target_url: DatabaseURL
    manager: ConnectionManager | None
    source: SqliteFile | PostgresSide
    target: SqliteWriter | PostgresSide | None
    """None in a dry run towards a SQLite file (nothing is opened for writing)."""

    @property
    def target_dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.target_url.dialect

    async def target_catalog(self) -> Catalog:
        """The target's tables (a SQLite target that does not exist has none)."""
        if self.target is None:
            path = self.target_url.database or ""
            return SqliteFile(path).catalog() if _exists(path) else Catalog()
        return await self.target.catalog()

    async def source_catalog(self) -> Catalog:
        """The source's tables."""
        if isinstance(self.source, SqliteFile):
            return await anyio.to_thread.run_sync(self.source.catalog)
        return await self.source.catalog()

    async def aclose(self) -> None:
        """Close the pools (a SQLite target's WAL is checkpointed into the file)."""
        if self.manager is not None:
            await self.manager.aclose()


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


async def open_endpoints(source: str, target: str, *, dry_run: bool) -> Endpoints:
    """Parse both URLs and connect what must be connected; raise
    :class:`SourceError` / :class:`TargetUnavailable` with a clear message (never the
    password) when a side cannot be reached. No pool degrades to another database."""
    src = parse_url(source, source="--from")
    dst = parse_url(target, source="--to")
    if src.is_memory or dst.is_memory:
        raise SourceError(
            "an in-memory SQLite database cannot be migrated (it lives in one process)"
        )
    if src.key == dst.key:
        raise SourceError("--from and --to are the same database")
    # The source first: a missing file is reported as such, whatever the target.
    source_file: SqliteFile | None = None
    if src.dialect == "sqlite":
        source_file = await anyio.to_thread.run_sync(SqliteFile, src.database or "")
    postgres = [u for u in (dst, src) if u.dialect == "postgresql"]
    writes_sqlite = dst.dialect == "sqlite" and not dry_run
    manager: ConnectionManager | None = None
    if postgres or writes_sqlite:
        default = postgres[0] if postgres else dst
        manager = ConnectionManager(default.key, degrade=False, config=PoolConfig.from_env())
    try:
        for url in postgres:
            await _connect(manager, url, role="target" if url is dst else "source")
        source_side: SqliteFile | PostgresSide
        if source_file is not None:
            source_side = source_file
        else:
            assert manager is not None
            source_side = PostgresSide(manager, src.key)
        target_side: SqliteWriter | PostgresSide | None
        if dst.dialect == "postgresql":
            assert manager is not None
            target_side = PostgresSide(manager, dst.key)
        elif writes_sqlite:
            assert manager is not None
            target_side = SqliteWriter(manager, dst.key, dst.database or "")
        else:
            target_side = None
    except BaseException:
        if manager is not None:
            await manager.aclose()
        raise
    return Endpoints(src, dst, manager, source_side, target_side)


async def _connect(manager: ConnectionManager | None, url: DatabaseURL, *, role: str) -> None:
    assert manager is not None
    error = SourceError if role == "source" else TargetUnavailable
    try:
        async with manager.lease("migrate", url=url.key) as lease:
            await lease.connection.fetchval("SELECT 1")
    except PoolUnavailable as exc:
        raise error(f"cannot connect to the {role} {url.redacted()}: {_hint(str(exc))}") from None


def _hint(message: str) -> str:
    lower = message.lower()
    if "password authentication failed" in lower or ("password" in lower and "auth" in lower):
        return "authentication failed (wrong user or password; the password is not shown)"
    if "does not exist" in lower and "database" in lower:
        found = re.search(r'database "[^"]*" does not exist', message)
        return (found[0] if found else "the database does not exist") + " (create it first)"
    if "refused" in lower:
        return "connection refused: is the server running, on that host and port?"
    if "timeout" in lower or "timed out" in lower:
        return "no answer within the connect timeout (KGENTS_POOL_CONNECT_TIMEOUT)"
    # The pool's message suggests degradation; a migration never degrades.
    return message.split(". Start the database", 1)[0]


async def read_batches(
    side: SqliteFile | PostgresSide,
    sql: str,
    *,
    batch_rows: int,
    batch_bytes: int,
    prepare: Callable[[list[tuple[Any, ...]]], T],
    raw_text: bool = False,
) -> AsyncIterator[T]:
    """``prepare(batch)`` for each batch of ``sql`` on ``side``. For SQLite the read
    and ``prepare`` run in a worker thread, and the next batch is read while the
    caller works on the current one (one batch ahead: memory stays bounded);
    ``raw_text``: its text values come as UTF-8 bytes."""
    if isinstance(side, SqliteFile):
        rows = side.stream(sql, batch_rows=batch_rows, batch_bytes=batch_bytes, raw_text=raw_text)

        def step() -> T | None:
            batch = next(rows, None)
            return None if batch is None else prepare(batch)

        ahead = _Ahead(step)
        try:
            while True:
                item = await ahead.take()
                if item is None:
                    return
                yield item
        finally:
            await ahead.settle()
            rows.close()
    else:
        async for batch in side.stream(sql, batch_rows=batch_rows, batch_bytes=batch_bytes):
            yield prepare(batch)


class _Ahead:
    """Runs ``step`` in a worker thread one call ahead of the consumer."""

    def __init__(self, step: Callable[[], Any]) -> None:
        import asyncio

        self._step = step
        self._next: asyncio.Future[Any] | None = None

    def _start(self) -> None:
        import asyncio

        self._next = asyncio.ensure_future(anyio.to_thread.run_sync(self._step))

    async def settle(self) -> None:
        """Wait for a read still running in its thread (the generator must not be
        closed under it)."""
        pending, self._next = self._next, None
        if pending is not None:
            import contextlib

            with contextlib.suppress(BaseException):
                await pending

    async def take(self) -> Any:
        if self._next is None:
            self._start()
        assert self._next is not None
        item = await self._next
        self._next = None
        if item is not None:
            self._start()
        return item
