"""The server goes away and comes back: restart under load, stop and start.

Each test runs on a cluster of its own (``postgres_cluster``); the blocking cluster
calls run in a worker thread so the event loop, and the pool, keep running.
"""

from __future__ import annotations

import itertools
import time

import anyio
import pytest

from connman import AcquireTimeout, PoolUnavailable
from tests.support.faultkit import (
    LoadThroughOutage,
    ManagerFactory,
    Stopwatch,
    admin_connect,
    app_name,
    backends,
    counters,
    is_connection_error,
    outcome,
    wait_until,
)
from tests.support.helpers import captured_logs

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

# Reconnect quickly in tests: the default backoff ceiling (5 s) would dominate runtime.
FAST_RECONNECT = {"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.3}


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_restart_mid_load_recovers_by_itself(postgres_cluster, make_manager, mode):
    """Eight tasks lease and query in a loop while the server restarts (``fast``: clients
    told to go; ``immediate``: a crash-stop, then crash recovery): nothing hangs, the
    only errors are connection errors, and leases succeed again soon after."""
    app = app_name("restart")
    manager = await make_manager(
        postgres_cluster.url,
        application_name=app,
        min_size=2,
        max_size=5,
        acquire_timeout=2.0,
        connect_timeout=2.0,
        **FAST_RECONNECT,
    )
    load = LoadThroughOutage(manager)
    before = counters(manager)
    with anyio.fail_after(30):  # no task may hang
        async with anyio.create_task_group() as tg:
            load.start(tg, tasks=8)
            await wait_until(lambda: load.ok_before >= 50, timeout=10, what="load before restart")
            load.breaking = True
            await anyio.to_thread.run_sync(postgres_cluster.restart, mode)
            load.back()
            await wait_until(lambda: load.ok_after >= 50, timeout=10, what="leases after restart")
            recovery = time.monotonic() - load.back_at
            load.stop()

    assert not load.unexpected, f"errors other than connection errors: {load.unexpected!r}"
    assert recovery < 5.0, f"the pool took {recovery:.2f}s to serve again after the restart"
    after = counters(manager)
    assert after["connections_lost"] > before["connections_lost"], after
    assert after["connections_opened"] > before["connections_opened"], after
    stats = manager.stats()[0]
    assert stats.in_use == 0
    assert stats.waiting == 0
    assert stats.size <= 5
    admin = await admin_connect(postgres_cluster.url)
    try:
        # Only the new connections remain on the server, within max_size.
        assert await backends(admin, app) <= 5
    finally:
        await admin.close()


async def test_stopped_server_fails_fast_then_refills_by_itself(
    postgres_cluster, make_manager: ManagerFactory
):
    """With the server down, acquirers fail within their deadline with a connman error;
    when it is back, the pool reopens min_size connections with no lease asking."""
    app = app_name("stopped")
    min_size = 3
    manager = await make_manager(
        postgres_cluster.url,
        application_name=app,
        min_size=min_size,
        max_size=5,
        connect_timeout=2.0,
        **FAST_RECONNECT,
    )
    await wait_until(
        lambda: manager.stats()[0].idle == min_size, timeout=5, what="min_size at start"
    )
    held = await manager.acquire("holder")  # a lease that spans the outage

    await anyio.to_thread.run_sync(postgres_cluster.stop)

    # The holder's connection is gone: its query fails with a connection error, and its
    # release neither hangs nor raises. (Wait for asyncpg to read the EOF first: before
    # that, asyncpg itself may answer "another operation (2) is in progress", a race
    # out of the pool's hands while a lease is held; see test_terminate.py.)
    await wait_until(held.connection.is_closed, timeout=5, what="the client to see the close")
    with anyio.fail_after(5):
        error = await outcome(held.connection.fetchval("SELECT 1"))
        assert is_connection_error(error), repr(error)
        await held.release()

    timeout = 1.0
    results: list[tuple[BaseException | None, float]] = []

    async def acquirer(i: int) -> None:
        async def lease_once() -> None:
            async with manager.lease(f"consumer{i % 3}", timeout=timeout):
                pass

        with Stopwatch() as sw:
            result = await outcome(lease_once())
        results.append((result, sw.elapsed))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(acquirer, i)
    for exc, elapsed in results:
        assert isinstance(exc, PoolUnavailable | AcquireTimeout), repr(exc)
        assert elapsed <= timeout + 0.3, f"failed after {elapsed:.3f}s (deadline {timeout}s)"
    # With nothing left to lease and connecting refused, the error says the database
    # is unreachable, and why.
    assert any(isinstance(exc, PoolUnavailable) for exc, _ in results), results
    unavailable = next(exc for exc, _ in results if isinstance(exc, PoolUnavailable))
    assert "unreachable" in str(unavailable)
    stats = manager.stats()[0]
    assert stats.in_use == 0
    assert stats.waiting == 0
    assert stats.last_error is not None

    # Back up: no lease is made from here until the pool is full again.
    acquired_before = counters(manager)["acquired"]
    await anyio.to_thread.run_sync(postgres_cluster.start)
    admin = await admin_connect(postgres_cluster.url)
    try:
        await wait_until(
            lambda: manager.stats()[0].idle == min_size,
            timeout=5,
            what="the pool to refill to min_size after the restart",
        )

        # ...and the server agrees: min_size live connections of ours.
        async def server_agrees() -> bool:
            return await backends(admin, app) == min_size

        await wait_until(server_agrees, timeout=5, what="min_size backends on the server")
    finally:
        await admin.close()
    assert counters(manager)["acquired"] == acquired_before
    assert manager.stats()[0].last_error is None
    with anyio.fail_after(5):
        async with manager.lease("after", timeout=2.0) as lease:
            assert await lease.connection.fetchval("SELECT 42") == 42


async def test_quiet_restart_refills_without_traffic(postgres_cluster, make_manager):
    """The server restarts while nobody uses the pool (a night-time maintenance
    window). Within a few seconds the pool should hold min_size live connections
    again, and its stats should say what the server sees."""
    app = app_name("quiet")
    min_size = 3
    manager = await make_manager(
        postgres_cluster.url, application_name=app, min_size=min_size, max_size=5, **FAST_RECONNECT
    )
    await wait_until(
        lambda: manager.stats()[0].idle == min_size, timeout=5, what="min_size at start"
    )
    await anyio.to_thread.run_sync(postgres_cluster.restart)
    admin = await admin_connect(postgres_cluster.url)

    async def refilled() -> bool:
        return await backends(admin, app) == min_size

    try:
        await wait_until(refilled, timeout=10, what="min_size live connections after restart")
        # A backend exists a round trip before its connection is the pool's (each new
        # connection checks for a pooler first): the stats follow within the moment.
        await wait_until(
            lambda: manager.stats()[0].idle == min_size, timeout=2, what="the stats to agree"
        )
    finally:
        await admin.close()


async def test_an_outage_logs_a_few_lines_and_one_recovery(postgres_cluster, make_manager):
    """The server is stopped, then started: the pool retries every 0.05-0.3 s, but
    connect_failed is logged at the outage's start and when the reason changes (the
    server shutting down, refusing, starting up), not per attempt; the recovery is one
    connect_recovered line that counts the failed attempts."""
    manager = await make_manager(
        postgres_cluster.url, application_name=app_name("outage-log"), min_size=1, **FAST_RECONNECT
    )
    await wait_until(lambda: manager.stats()[0].idle == 1, timeout=5, what="min_size at start")
    before = counters(manager)["connect_errors"]
    with captured_logs() as records:
        await anyio.to_thread.run_sync(postgres_cluster.stop)
        await wait_until(
            lambda: counters(manager)["connect_errors"] - before >= 8,
            timeout=10,
            what="eight failed reconnects",
        )
        await anyio.to_thread.run_sync(postgres_cluster.start)
        await wait_until(
            lambda: manager.stats()[0].last_error is None, timeout=10, what="the reconnect"
        )
    failures = counters(manager)["connect_errors"] - before
    failed = [r for r in records if r["event"] == "connect_failed"]
    assert 1 <= len(failed) < failures
    assert failed[0]["failures"] == 1
    # Within 10 s of the last line, a line only when the reason is new.
    for a, b in itertools.pairwise(failed):
        assert a["reason"] != b["reason"] or b["outage_seconds"] - a["outage_seconds"] >= 10, failed
    (recovered,) = [r for r in records if r["event"] == "connect_recovered"]
    assert recovered["failures"] == failures
    assert recovered["outage_seconds"] > 0
    assert recovered["consumer"] is None
