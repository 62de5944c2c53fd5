"""Failover: a primary and a streaming standby on loopback, one multi-host URL.

Eight writers insert numbered rows and record the ones acknowledged; the primary stops,
the standby is promoted, and the pool must find the new primary by itself: no
acknowledged row lost, none written twice, writes back within 2 s of the promotion.
Then the old primary rejoins as a standby of the new one and the pool, reconnecting,
must not settle on it. Each test builds its own two clusters (a base backup takes about
a second); the blocking cluster calls run in a worker thread so the pool keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator

import anyio
import asyncpg
import pytest

from connman import AcquireTimeout, ConnectionLost, ConnectionManager, PoolUnavailable
from connman.testing.cluster import ClusterUnavailable, LocalCluster
from connman.testing.plugin import throwaway_cluster, unavailable
from tests.support.faultkit import (
    ManagerFactory,
    admin_connect,
    app_name,
    counters,
    is_connection_error,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.anyio, pytest.mark.slow]

TABLE = "CREATE TABLE failover_rows (writer int NOT NULL, seq int NOT NULL)"
# What a writer may see while there is no primary: the session ended by the shutdown,
# the lost connection, no connection within its deadline.
OUTAGE_ERRORS = (
    ConnectionLost,
    AcquireTimeout,
    PoolUnavailable,
    asyncpg.AdminShutdownError,  # 57P01: terminating connection (server shutdown)
    asyncpg.CannotConnectNowError,  # 57P03: the server is shutting down
)


@pytest.fixture
def replicated() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """A primary with the test table, and a streaming standby of it."""
    with throwaway_cluster(TABLE) as primary:
        try:
            standby = LocalCluster()
        except ClusterUnavailable as exc:
            unavailable(str(exc))
        try:
            standby.make_standby_of(primary)
            standby.start()
            yield primary, standby
        finally:
            standby.destroy()


def multi_host_url(*clusters: LocalCluster) -> str:
    """The URL as a user writes it: every host, in order, no target_session_attrs."""
    hosts = ",".join(f"127.0.0.1:{c.port}" for c in clusters)
    return f"postgresql://postgres@{hosts}/postgres"


async def start(
    make_manager: ManagerFactory, primary: LocalCluster, standby: LocalCluster, app: str
) -> ConnectionManager:
    """A manager on both clusters with default reconnect settings, short deadlines."""
    return await make_manager(
        multi_host_url(primary, standby),
        application_name=app,
        min_size=2,
        max_size=6,
        acquire_timeout=2.0,
        connect_timeout=2.0,
    )


class Writers:
    """``tasks`` writers, each inserting (writer, seq) with a new seq per attempt, so a
    row present twice can only be the pool's doing. ``acked`` holds the rows whose
    INSERT returned; ``ok_at`` the monotonic time of each acknowledgement."""

    def __init__(self, manager: ConnectionManager) -> None:
        self.manager = manager
        self.acked: list[tuple[int, int]] = []
        self.ok_at: list[float] = []
        self.outage: list[BaseException] = []
        self.read_only: list[BaseException] = []
        self.unexpected: list[BaseException] = []
        self.widest_gap = 0.0  # between failed reconnect attempts, during the outage
        self._stop = asyncio.Event()

    def start(self, tg: anyio.abc.TaskGroup, tasks: int = 8) -> None:
        for w in range(tasks):
            tg.start_soon(self._writer, w)

    def stop(self) -> None:
        self._stop.set()

    def acked_since(self, t: float) -> int:
        return sum(1 for at in self.ok_at if at > t)

    def first_ok_after(self, t: float) -> float:
        return min(at for at in self.ok_at if at > t)

    async def _writer(self, w: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            try:
                async with self.manager.lease(f"writer{w % 2}", timeout=1.0) as lease:
                    await lease.connection.execute(
                        "INSERT INTO failover_rows (writer, seq) VALUES ($1, $2)", w, seq
                    )
            except asyncpg.ReadOnlySQLTransactionError as exc:
                self.read_only.append(exc)
            except Exception as exc:
                if isinstance(exc, OUTAGE_ERRORS) or is_connection_error(exc):
                    self.outage.append(exc)
                else:
                    self.unexpected.append(exc)
            else:
                self.acked.append((w, seq))
                self.ok_at.append(time.monotonic())
            await asyncio.sleep(0)


async def lost_and_duplicated(url: str, acked: list[tuple[int, int]]) -> tuple[int, int]:
    """Acknowledged rows missing from the (new) primary, and rows present twice."""
    admin = await admin_connect(url)
    try:
        rows = await admin.fetch(
            "SELECT writer, seq, count(*) AS n FROM failover_rows GROUP BY writer, seq"
        )
    finally:
        await admin.close()
    present = {(r["writer"], r["seq"]) for r in rows}
    return len(set(acked) - present), sum(1 for r in rows if r["n"] > 1)


async def fail_over(
    primary: LocalCluster,
    standby: LocalCluster,
    manager: ConnectionManager,
    writers: Writers,
    outage: float = 0.5,
) -> float:
    """Stop the primary under load, wait until the pool names both hosts' outcomes
    (and ``outage`` seconds more), promote the standby; returns the seconds from the
    promotion to the first acknowledged write."""
    await wait_until(lambda: len(writers.acked) >= 200, timeout=15, what="writes before")
    await anyio.to_thread.run_sync(primary.stop, "fast")
    # While nothing accepts writes, the pool says what each host did.
    expected = f"127.0.0.1:{primary.port} refused; 127.0.0.1:{standby.port} read-only"
    await wait_until(
        lambda: expected in (manager.stats()[0].last_error or ""),
        timeout=10,
        what=f"last_error naming {expected!r}",
    )
    assert manager.stats()[0].hosts == {
        f"127.0.0.1:{primary.port}": "refused",
        f"127.0.0.1:{standby.port}": "read-only",
    }
    # A long outage, as when an operator promotes by hand: uncapped, the reconnect
    # backoff (0.1 s doubling, 5 s ceiling) would space attempts 1.6, 3.2, 5 s apart
    # (within 6 s: a gap of 2.9 s at least).
    # Watch when the pool's connect attempts fail: never more than ~1 s apart.
    seen = counters(manager)["connect_errors"]
    failed_at = [time.monotonic()]
    end = failed_at[0] + outage
    while time.monotonic() < end:
        await anyio.sleep(0.05)  # a sampling period, not a synchronisation
        if (n := counters(manager)["connect_errors"]) > seen:
            seen = n
            failed_at.append(time.monotonic())
    failed_at.append(end)
    writers.widest_gap = max(b - a for a, b in itertools.pairwise(failed_at))
    await anyio.to_thread.run_sync(standby.promote)
    promoted = time.monotonic()
    await wait_until(lambda: writers.acked_since(promoted) >= 200, timeout=10, what="writes after")
    return writers.first_ok_after(promoted) - promoted


async def test_failover_to_promoted_standby_loses_no_write(
    replicated: tuple[LocalCluster, LocalCluster], make_manager: ManagerFactory
) -> None:
    primary, standby = replicated
    manager = await start(make_manager, primary, standby, app_name("failover"))
    writers = Writers(manager)
    with anyio.fail_after(50):
        async with anyio.create_task_group() as tg:
            writers.start(tg)
            recovery = await fail_over(primary, standby, manager, writers, outage=6.0)
            writers.stop()

    lost, duplicated = await lost_and_duplicated(standby.url, writers.acked)
    print(
        f"\nfailover: recovery {recovery:.2f}s, lost {lost}, duplicated {duplicated}, "
        f"widest reconnect gap {writers.widest_gap:.2f}s"
    )
    assert not writers.unexpected, writers.unexpected[:5]
    assert not writers.read_only, "a write reached the standby before its promotion"
    assert lost == 0
    assert duplicated == 0
    assert writers.widest_gap < 1.6, f"reconnect attempts {writers.widest_gap:.2f}s apart"
    assert recovery < 2.0, f"writes resumed {recovery:.2f}s after the promotion"
    stats = manager.stats()[0]
    assert stats.hosts[f"127.0.0.1:{standby.port}"] == "ok"
    assert stats.last_error is None
    assert stats.in_use == 0


async def test_old_primary_rejoining_as_standby_is_not_used(
    replicated: tuple[LocalCluster, LocalCluster], make_manager: ManagerFactory
) -> None:
    primary, standby = replicated
    app = app_name("rejoin")
    manager = await start(make_manager, primary, standby, app)
    writers = Writers(manager)
    with anyio.fail_after(55):
        async with anyio.create_task_group() as tg:
            writers.start(tg)
            await fail_over(primary, standby, manager, writers)
            # The old primary comes back as a standby of the new one: first in the URL,
            # and answering, so every reconnect below tries it first.
            await anyio.to_thread.run_sync(primary.make_standby_of, standby)
            await anyio.to_thread.run_sync(primary.start)
            read_only_before = len(writers.read_only)
            admin = await admin_connect(standby.url)
            try:
                # Every pooled connection ends: the pool must reconnect, host by host.
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1",
                    app,
                )
            finally:
                await admin.close()
            rejoined = time.monotonic()
            await wait_until(
                lambda: writers.acked_since(rejoined) >= 300, timeout=15, what="writes after"
            )
            writers.stop()
    recovery = writers.first_ok_after(rejoined) - rejoined

    lost, duplicated = await lost_and_duplicated(standby.url, writers.acked)
    print(f"\nrejoin: recovery {recovery:.2f}s, lost {lost}, duplicated {duplicated}")
    assert not writers.unexpected, writers.unexpected[:5]
    assert len(writers.read_only) == read_only_before == 0
    assert lost == 0
    assert duplicated == 0
    assert manager.stats()[0].hosts == {
        f"127.0.0.1:{primary.port}": "read-only",
        f"127.0.0.1:{standby.port}": "ok",
    }


async def test_fenced_primary_is_left_after_one_refused_write(
    replicated: tuple[LocalCluster, LocalCluster], make_manager: ManagerFactory
) -> None:
    """A switchover by hand: the primary is fenced read-only (ALTER SYSTEM SET
    default_transaction_read_only), the standby promoted. The first write refused
    with SQLSTATE 25006 retires every connection to the fenced server, the idle ones
    at once: no other lease meets the fenced server, writes go to the new primary."""
    primary, standby = replicated
    manager = await make_manager(
        multi_host_url(primary, standby), min_size=4, max_size=4, acquire_timeout=2.0
    )
    # Four connections to the primary, all idle.
    async with contextlib.AsyncExitStack() as stack:
        for i in range(4):
            await stack.enter_async_context(manager.lease(f"warm{i}"))
    assert manager.stats()[0].idle == 4
    admin = await admin_connect(primary.url)
    try:
        await admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()

    async def write() -> Exception | None:
        """One write: None if acknowledged, else the error."""
        try:
            async with manager.lease("writer") as lease:
                await lease.connection.execute("INSERT INTO failover_rows VALUES (1, 1)")
        except Exception as exc:
            return exc
        return None

    with anyio.fail_after(30):
        # Until the backend has read the reload, writes still pass.
        while not isinstance(error := await write(), asyncpg.ReadOnlySQLTransactionError):
            assert error is None, error
        primary_host = f"127.0.0.1:{primary.port}"
        await wait_until(
            lambda: manager.stats()[0].hosts.get(primary_host) == "read-only",
            timeout=5,
            what="the fenced primary marked read-only",
        )
        stats = manager.stats()[0]
        assert stats.size == 0, f"connections to the fenced primary kept: {stats}"
        await anyio.to_thread.run_sync(standby.promote)
        refused = 0
        while (error := await write()) is not None:
            refused += isinstance(error, asyncpg.ReadOnlySQLTransactionError)
            assert isinstance(error, (*OUTAGE_ERRORS, asyncpg.ReadOnlySQLTransactionError))
    assert refused == 0, f"{refused} more writes met the fenced primary"
    assert manager.stats()[0].hosts == {
        primary_host: "read-only",
        f"127.0.0.1:{standby.port}": "ok",
    }
