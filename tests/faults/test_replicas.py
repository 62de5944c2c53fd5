"""Read leases on a real primary with a streaming standby (pg_basebackup -R), on
loopback: reads go to the standby, writes to the primary; a standby that lags beyond
max_lag (replay paused while the primary writes) or was promoted leaves the rotation,
and reads fall back to the primary.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from connman import ConnectionManager, PoolStats, ReplicaPolicy
from connman.adapters.sqlalchemy import create_async_engine
from connman.kgents.brain import BrainStore
from connman.kgents.dgent import Datum, DgentStore
from connman.metrics import Metrics
from connman.status import pool_report
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import throwaway_cluster
from tests.support.faultkit import admin_connect, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

# Checks every 100 ms so rotation changes show within a fraction of a second.
FAST = {"check_interval": 0.1, "check_timeout": 2.0}
WHERE = "SELECT inet_server_port() AS port, pg_is_in_recovery() AS standby"


@pytest.fixture
def replicated() -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """A primary and a started hot standby streaming from it."""
    with throwaway_cluster() as primary:
        standby = primary.standby()
        try:
            standby.start()
            yield primary, standby
        finally:
            standby.destroy()


@pytest.fixture
async def manager_of() -> AsyncIterator[Any]:
    """``manager_of(primary, standby, max_lag=...)``: a started manager with the
    standby as its read replica; closed at teardown."""
    made: list[ConnectionManager] = []

    async def make(primary: LocalCluster, standby: LocalCluster, **policy: Any) -> Any:
        manager = ConnectionManager(
            primary.url,
            replicas=[standby.url],
            replica_policy=ReplicaPolicy(**{**FAST, **policy}),
            degrade=False,
        )
        made.append(manager)
        await manager.start()
        return manager

    yield make
    for manager in made:
        await manager.aclose(timeout=5)


async def where(manager: ConnectionManager, *, readonly: bool) -> tuple[int, bool]:
    """(server port, in recovery?) of the server a lease lands on."""
    async with manager.lease("app", readonly=readonly) as lease:
        row = await lease.connection.fetchrow(WHERE)
    return row["port"], row["standby"]


def replica_stats(manager: ConnectionManager) -> PoolStats:
    (replica,) = [st for st in manager.stats() if st.role == "replica"]
    return replica


def in_rotation(manager: ConnectionManager) -> bool:
    status = replica_stats(manager).replica
    assert status is not None
    return status.in_rotation


async def test_reads_go_to_the_replica_and_writes_to_the_primary(replicated, manager_of):
    primary, standby = replicated
    manager = await manager_of(primary, standby)
    assert in_rotation(manager)  # the first check ran in start()

    assert await where(manager, readonly=False) == (primary.port, False)
    for _ in range(3):
        assert await where(manager, readonly=True) == (standby.port, True)
    lease = await manager.acquire("app", readonly=True)
    try:
        assert lease.readonly
        assert await lease.connection.fetchval("SELECT inet_server_port()") == standby.port
    finally:
        await lease.release()

    # A write through a read lease is refused by the standby, not applied anywhere.
    with pytest.raises(Exception, match="read-only transaction"):
        async with manager.lease("app", readonly=True) as lease:
            await lease.connection.execute("CREATE TABLE t (v int)")

    stats = {st.role: st for st in manager.stats()}
    assert stats["replica"].reads == 5 and stats["replica"].url.endswith(
        f":{standby.port}/postgres"
    )
    assert stats["primary"].reads == 0
    scrape = _scrape(manager)
    assert (
        f'connman_pool_reads_total{{pool="{stats["replica"].name}",role="replica"}} 5.0' in scrape
    )
    assert f'connman_replica_in_rotation{{pool="{stats["replica"].name}"}} 1.0' in scrape
    # connman status shows the roles and the reads per pool.
    report = pool_report(manager.stats())
    assert [(p["role"], p["reads"], p["in_rotation"]) for p in report] == [
        ("primary", 0, None),
        ("replica", 5, True),
    ]


def _scrape(manager: ConnectionManager) -> str:
    registry = CollectorRegistry()
    Metrics(registry).instrument(manager)
    return generate_latest(registry).decode()


async def test_a_replica_lagging_beyond_max_lag_leaves_the_rotation_and_returns(
    replicated, manager_of
):
    primary, standby = replicated
    manager = await manager_of(primary, standby, max_lag=0.5)
    admin_primary = await admin_connect(primary.url)
    admin_standby = await admin_connect(standby.url)
    try:
        await admin_primary.execute("CREATE TABLE w (v int)")
        await wait_until(lambda: in_rotation(manager), what="the replica caught up")

        await admin_standby.execute("SELECT pg_wal_replay_pause()")
        await admin_primary.execute("INSERT INTO w VALUES (1)")
        await wait_until(lambda: not in_rotation(manager), what="the paused replica left")
        status = replica_stats(manager).replica
        assert status is not None and status.reason and "lagging" in status.reason
        assert status.lag is not None and status.lag > 0.5
        # Reads fall back to the primary, and say so in the stats.
        assert await where(manager, readonly=True) == (primary.port, False)
        assert manager.stats()[0].reads == 1

        await admin_standby.execute("SELECT pg_wal_replay_resume()")
        await wait_until(lambda: in_rotation(manager), what="the resumed replica returned")
        assert await where(manager, readonly=True) == (standby.port, True)
    finally:
        await admin_standby.execute("SELECT pg_wal_replay_resume()")
        await admin_primary.close()
        await admin_standby.close()


async def test_an_idle_primary_does_not_make_its_replica_lag(replicated, manager_of):
    """The replay timestamp of an idle primary's standby ages; the lag must not."""
    primary, standby = replicated
    manager = await manager_of(primary, standby, max_lag=0.2)
    admin_primary = await admin_connect(primary.url)
    try:
        await admin_primary.execute("CREATE TABLE idle (v int)")
        await wait_until(lambda: in_rotation(manager), what="the replica caught up")
        # Nothing is written now: after several max_lag spans the replica still serves.
        loop_time = asyncio.get_running_loop().time
        until = loop_time() + 1.0
        while loop_time() < until:
            await manager.check_replicas()
            assert in_rotation(manager), replica_stats(manager).replica
        assert await where(manager, readonly=True) == (standby.port, True)
    finally:
        await admin_primary.close()


async def test_a_promoted_replica_leaves_the_rotation(replicated, manager_of):
    primary, standby = replicated
    manager = await manager_of(primary, standby)
    assert await where(manager, readonly=True) == (standby.port, True)
    admin_standby = await admin_connect(standby.url)
    try:
        assert await admin_standby.fetchval("SELECT pg_promote()")
    finally:
        await admin_standby.close()
    await wait_until(lambda: not in_rotation(manager), what="the promoted replica left")
    status = replica_stats(manager).replica
    assert status is not None and status.reason and "promoted" in status.reason
    assert await where(manager, readonly=True) == (primary.port, False)


async def test_adapters_read_from_the_replica(replicated, manager_of):
    primary, standby = replicated
    manager = await manager_of(primary, standby)

    # D-gent: writes to the primary, reads (reads="replica") from the standby.
    writer = DgentStore(manager)
    await writer.ensure_schema()
    datum = Datum.create(b"hello")
    await writer.put(datum)
    reader = DgentStore(manager, reads="replica")

    async def replicated_datum() -> Datum | None:
        try:
            return await reader.get(datum.id)
        except asyncpg.UndefinedTableError:  # the table has not reached the replica yet
            return None

    assert await wait_until(replicated_datum, what="the datum on the replica") == datum
    before = replica_stats(manager).reads
    assert await reader.exists(datum.id)
    assert await reader.count() == 1
    assert replica_stats(manager).reads == before + 2

    # Brain: fetches on the standby, executes on the primary.
    brain = BrainStore(manager, reads="replica")
    assert await brain.fetch_one("SELECT pg_is_in_recovery() AS standby") == {"standby": True}
    await brain.execute("CREATE TABLE b (v int)")

    # SQLAlchemy: a read-only engine.
    from sqlalchemy import text

    engine = create_async_engine(manager, readonly=True)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar() is True
    finally:
        await engine.dispose()
    writer_engine = create_async_engine(manager)
    try:
        async with writer_engine.connect() as conn:
            assert (await conn.execute(text("SELECT pg_is_in_recovery()"))).scalar() is False
    finally:
        await writer_engine.dispose()


async def test_without_replicas_read_leases_use_the_primary(postgres_database):
    manager = ConnectionManager(postgres_database, degrade=False)
    try:
        async with manager.lease("app", readonly=True) as lease:
            assert lease.readonly
            assert await lease.connection.fetchval("SELECT pg_is_in_recovery()") is False
        (stats,) = manager.stats()
        assert stats.role == "primary" and stats.reads == 1 and stats.replica is None
        assert manager.replicas == []
    finally:
        await manager.aclose()


async def test_a_stopped_replica_leaves_the_rotation_without_failing_healthz(
    replicated, manager_of
):
    primary, standby = replicated
    manager = await manager_of(primary, standby)
    metrics = Metrics(CollectorRegistry())
    metrics.instrument(manager)
    assert await where(manager, readonly=True) == (standby.port, True)

    await anyio.to_thread.run_sync(standby.stop)
    await wait_until(lambda: not in_rotation(manager), what="the stopped replica left")
    status = replica_stats(manager).replica
    assert status is not None and status.reason and "unreachable" in status.reason
    assert await where(manager, readonly=True) == (primary.port, False)
    health = await anyio.to_thread.run_sync(metrics.health)
    assert health.ok, health.reason

    await anyio.to_thread.run_sync(standby.start)
    await wait_until(lambda: in_rotation(manager), what="the restarted replica returned")
    assert await where(manager, readonly=True) == (standby.port, True)


async def test_a_read_on_a_replica_that_died_since_the_last_check_goes_to_the_primary(
    replicated, manager_of
):
    """No check runs during the test (check_interval=60): the read lease itself gives
    up on the dead replica after check_timeout and is served by the primary, instead
    of waiting its whole deadline."""
    primary, standby = replicated
    manager = await manager_of(primary, standby, check_interval=60, check_timeout=1.0)
    assert await where(manager, readonly=True) == (standby.port, True)
    await anyio.to_thread.run_sync(standby.stop)
    with anyio.fail_after(10):  # acquire_timeout is 30 s
        assert await where(manager, readonly=True) == (primary.port, False)
    stats = {st.role: st for st in manager.stats()}
    assert (stats["replica"].reads, stats["primary"].reads) == (1, 1)
