"""Shared tools of the fault tests: unique application names, an admin connection to
count our server backends, condition polling with a deadline, and a monitor that
samples the server-side connection count while a test runs.

Nothing here sleeps to synchronise: every wait is a condition polled under a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import asyncpg

from connman import AcquireTimeout, ConnectionManager, PoolConfig, PoolUnavailable, parse_url

T = TypeVar("T")

ADMIN_APP = "connman_fault_admin"

# What a lease holder may see while the server goes away: connman's own "no connection"
# errors, and asyncpg's "the connection broke" family. Anything else (an
# InterfaceError such as "another operation is in progress", a TypeError, a hang) is a
# defect.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    PoolUnavailable,
    AcquireTimeout,
    asyncpg.PostgresConnectionError,  # ConnectionDoesNotExistError, ConnectionFailureError
    asyncpg.exceptions.AdminShutdownError,  # 57P01 terminating connection
    asyncpg.exceptions.CannotConnectNowError,  # 57P03 the database system is shutting down
    asyncpg.exceptions.CrashShutdownError,
    ConnectionError,  # ConnectionResetError, BrokenPipeError, ConnectionRefusedError
)


def is_connection_error(exc: BaseException) -> bool:
    """A connection error as a lease holder may see it during an outage (asyncpg says
    "connection is closed" with an InterfaceError once it knows)."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


def is_another_operation(exc: BaseException) -> bool:
    """asyncpg's "another operation is in progress" family: a connection used while
    its protocol is busy or confused. Never acceptable from a pool."""
    return isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError) and (
        "another operation" in str(exc)
    )


async def outcome(awaitable: Awaitable[T]) -> T | Exception:
    """The awaitable's value, or the exception it raised (for tests that accept a
    family of errors judged by a predicate rather than by type)."""
    try:
        return await awaitable
    except Exception as exc:
        return exc


def app_name(tag: str) -> str:
    """A unique ``application_name`` so a test can count its own backends."""
    return f"cmf_{tag}_{uuid.uuid4().hex[:10]}"


def dsn_of(url: str) -> str:
    """libpq DSN of a connman URL (for the admin connection)."""
    return parse_url(url).connect_dsn()


async def admin_connect(url: str) -> asyncpg.Connection:
    """A plain asyncpg connection outside any pool, under its own application_name."""
    return await asyncpg.connect(
        dsn_of(url), timeout=10, server_settings={"application_name": ADMIN_APP}
    )


async def backends(admin: asyncpg.Connection, app: str) -> int:
    """Server backends with this application_name (client backends only)."""
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND backend_type = 'client backend'",
            app,
        )
    )


async def wait_until(
    check: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.01,
) -> T:
    """Poll ``check`` (sync or async) until it returns a truthy value; fail with
    ``what`` after ``timeout`` seconds. Returns that value."""
    last: Any = None
    try:
        with anyio.fail_after(timeout):
            while True:
                result = check()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    result = await result
                last = result
                if result:
                    return result  # type: ignore[return-value]
                await anyio.sleep(interval)  # polling cadence, not synchronisation
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what} (last: {last!r})"
        ) from None


class PeakMonitor:
    """Samples ``backends(app)`` as fast as the server answers, in a task of its own,
    and remembers the peak. Use as ``async with PeakMonitor(url, app) as mon:``."""

    def __init__(self, url: str, app: str) -> None:
        self.url = url
        self.app = app
        self.peak = 0
        self.samples = 0
        self._task: asyncio.Task[None] | None = None
        self._admin: asyncpg.Connection | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> PeakMonitor:
        self._admin = await admin_connect(self.url)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._admin is not None
        while not self._stop.is_set():
            n = await backends(self._admin, self.app)
            self.samples += 1
            self.peak = max(self.peak, n)
            await asyncio.sleep(0)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None and self._admin is not None
        try:
            await self._task
        finally:
            await self._admin.close()


class ManagerFactory:
    """Creates started managers and closes them all at teardown."""

    def __init__(self) -> None:
        self.managers: list[ConnectionManager] = []

    async def __call__(self, url: str, *, start: bool = True, **config: Any) -> ConnectionManager:
        manager = ConnectionManager(url, config=PoolConfig(**config), degrade=False)
        self.managers.append(manager)
        if start:
            await manager.start()
        return manager

    async def aclose(self) -> None:
        for manager in self.managers:
            with anyio.move_on_after(15):
                await manager.aclose(timeout=5)


def counters(manager: ConnectionManager) -> dict[str, int]:
    """The default pool's counters."""
    return dict(manager.stats()[0].counters)


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.elapsed``."""

    elapsed: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._t0


class LoadThroughOutage:
    """Tasks that lease and query in a loop while a test breaks the server, sorting
    what they see: successes before and after the server is back, connection errors,
    asyncpg's "another operation" race (only while the server goes away; the pool no
    longer lends such a connection, see test_terminate.py) and anything else.

    ``load.start(tg, tasks=8)``; ``load.breaking = True`` before the fault;
    ``load.back()`` once the server is up again; ``load.stop()``."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.ok_before = 0
        self.ok_after = 0
        self.outage_errors: list[BaseException] = []
        self.known_race: list[BaseException] = []
        self.unexpected: list[BaseException] = []
        self.breaking = False
        self.back_at: float | None = None
        self._stop = asyncio.Event()

    def start(self, tg: anyio.abc.TaskGroup, *, tasks: int = 8) -> None:
        for i in range(tasks):
            tg.start_soon(self._worker, i)

    def back(self) -> None:
        self.back_at = time.monotonic()

    def stop(self) -> None:
        self._stop.set()

    async def _worker(self, i: int) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                async with self.manager.lease(f"consumer{i % 3}", timeout=1.0) as lease:
                    assert await lease.connection.fetchval("SELECT $1::int", i) == i
            except Exception as exc:
                if is_connection_error(exc):
                    self.outage_errors.append(exc)
                elif is_another_operation(exc) and self.breaking and self.back_at is None:
                    self.known_race.append(exc)
                else:
                    self.unexpected.append(exc)
            else:
                if self.back_at is not None and began > self.back_at:
                    self.ok_after += 1
                else:
                    self.ok_before += 1
            await asyncio.sleep(0)
