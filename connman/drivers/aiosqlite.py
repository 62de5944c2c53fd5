"""The SQLite driver: aiosqlite connections tuned for several writers at once.

Every connection gets ``busy_timeout``, ``journal_mode=WAL``, ``synchronous=NORMAL`` and
``foreign_keys=ON``, and opens its implicit transactions with ``BEGIN IMMEDIATE``
(``isolation_level="IMMEDIATE"``): a write transaction takes SQLite's write lock when it
starts, waiting up to ``busy_timeout`` for it. A deferred ``BEGIN`` that upgrades to a
write later fails at once with "database is locked" whatever the timeout (aiosqlite#251);
code that opens transactions by hand should write ``BEGIN IMMEDIATE`` too.

``:memory:`` is one database shared by every lease of that URL: SQLite's ``memdb`` VFS
with a name unique to the pool, kept alive by an anchor connection that the pool holds
from start to stop (an in-memory database dies with its last connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
from typing import Any
from urllib.parse import quote, urlencode

import aiosqlite
import anyio
import anyio.to_thread

from connman.config import PoolConfig
from connman.drivers import BROKEN, CLEAN, DIRTY, Verdict
from connman.urls import DatabaseURL, Dialect

__all__ = ["AiosqliteConnection", "AiosqliteDriver", "ensure_parent_dir"]

_memory_ids = itertools.count(1)


class AiosqliteConnection:
    """One aiosqlite connection (a sqlite3 connection on its own thread)."""

    __slots__ = ("_pragmas", "_stopping", "raw", "server")

    demoted = False  # a SQLite file has no standby

    def __init__(
        self,
        raw: aiosqlite.Connection,
        pragmas: tuple[str, ...],
        stopping: set[asyncio.Future[Any]],
        server: str = "",
    ) -> None:
        self.raw = raw
        self.server = server
        self._pragmas = pragmas
        self._stopping = stopping

    def is_closed(self) -> bool:
        return self.raw._connection is None or not self.raw._running

    def checkout(self) -> bool:
        return not self.is_closed()

    def checkin(self) -> None:
        return None  # nothing arrives unasked on a SQLite connection

    def checked(self) -> None:
        return None

    def saw_error(self, exc: BaseException) -> None:
        return None

    def is_lost_error(self, exc: BaseException) -> bool:
        # aiosqlite's "no active connection" / "Connection closed" (ValueError).
        return isinstance(exc, ValueError) and self.is_closed()

    def verdict(self, failed: bool) -> Verdict:
        if self.is_closed():
            return BROKEN
        # After a failure (a cancellation included) an operation may still be queued on
        # the connection's thread and open a transaction after we look: reset() queues a
        # ROLLBACK behind it.
        if failed or self.raw.in_transaction:
            return DIRTY
        return CLEAN

    async def reset(self, full: bool) -> bool:
        await self.raw.rollback()
        if full:
            for pragma in self._pragmas:
                await self.raw.execute(pragma)
        return not self.raw.in_transaction

    async def ping(self) -> None:
        # A file database does not drop connections; one thread hop proves the
        # worker is alive.
        await self.raw.execute("SELECT 1")

    async def close(self) -> None:
        await self.raw.close()

    def terminate(self) -> None:
        if self.raw._running:
            # stop() queues the close on the connection's thread and returns a future
            # of this loop; the driver awaits it at stop(), so the thread never
            # reports into a loop that has closed meanwhile.
            future = self.raw.stop()
            if future is not None:
                self._stopping.add(future)
                future.add_done_callback(self._stopping.discard)


class AiosqliteDriver:
    """Opens aiosqlite connections to one SQLite database."""

    dialect: Dialect = "sqlite"

    @property
    def hosts(self) -> dict[str, str]:
        return {}

    def __init__(self, url: DatabaseURL, config: PoolConfig) -> None:
        assert url.database is not None
        self._config = config
        self._url = url
        self._anchor: sqlite3.Connection | None = None
        self._stopping: set[asyncio.Future[Any]] = set()
        query = dict(url.query)
        read_only = query.get("mode") == "ro" or query.get("immutable") == "1"
        if url.is_memory:
            self._path = None
            self._target = f"file:/connman-memory-{os.getpid()}-{next(_memory_ids)}?vfs=memdb"
        else:
            self._path = url.database
            # Query parameters (mode=ro, immutable=1...) are SQLite URI parameters.
            suffix = ("?" + urlencode(sorted(query.items()))) if query else ""
            self._target = "file:" + quote(url.database) + suffix
        busy_ms = int(config.sqlite_busy_timeout * 1000)
        pragmas = [f"PRAGMA busy_timeout = {busy_ms}"]
        if not url.is_memory and not read_only:
            # WAL: readers never block the writer nor each other. memdb has no WAL.
            pragmas.append("PRAGMA journal_mode = WAL")
        pragmas += ["PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON"]
        self._pragmas = tuple(pragmas)

    async def start(self) -> None:
        if self._path is None:
            self._anchor = sqlite3.connect(self._target, uri=True, check_same_thread=False)
        else:
            ensure_parent_dir(self._path)

    async def connect(self) -> AiosqliteConnection:
        pending = aiosqlite.connect(
            self._target,
            uri=True,
            isolation_level="IMMEDIATE",
            timeout=self._config.sqlite_busy_timeout,
        )
        # aiosqlite runs each connection on a thread of its own, non-daemon by default:
        # a connection nobody closed (a process-wide manager, a manager without
        # aclose(), a pool whose tasks a finished asyncio.run cancelled) would then
        # keep the interpreter waiting forever in threading._shutdown after the code
        # returned. A daemon thread lets the process exit; SQLite needs no goodbye (a
        # committed transaction is in the WAL, an open one is rolled back on the next
        # open, as after a crash). Set before the await, which starts the thread.
        pending._thread.daemon = True
        try:
            raw = await pending
        except BaseException:
            # A failed open makes aiosqlite queue its thread's stop without awaiting
            # it: the thread then reports into this loop, and if the loop has closed
            # meanwhile (a caller that gives up at once), it dies with an unhandled
            # "Event loop is closed". Wait for the thread while the loop still runs.
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pending._thread.join, self._config.close_timeout)
            raise
        try:
            for pragma in self._pragmas:
                await raw.execute(pragma)
        except BaseException:
            await raw.close()
            raise
        return AiosqliteConnection(raw, self._pragmas, self._stopping, self._url.database or "")

    async def stop(self) -> None:
        if self._stopping:
            await asyncio.wait(list(self._stopping), timeout=self._config.close_timeout)
        if self._anchor is not None:
            self._anchor.close()
            self._anchor = None


def ensure_parent_dir(path: str) -> None:
    """Create the missing directories above ``path``, each with mode 0700 (the XDG
    spec's mode for data directories; ``os.makedirs`` applies its mode to the last
    level only)."""
    parent = os.path.dirname(path)
    missing: list[str] = []
    while parent and not os.path.isdir(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
