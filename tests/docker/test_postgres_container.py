"""The plugin's testcontainers path, run for real: PostgreSQL in a container started by
testcontainers' PostgresContainer (``postgres_container``), connman's pool on it.

The ``docker`` group: without a Docker engine these tests skip with the reason; under
``CONNMAN_REQUIRE_DOCKER=1`` (``.ci/run``) a skip is a failure. Images are never
pulled: ``deploy/images/build`` makes ``postgres:15`` from Debian packages where no
registry answers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time

import anyio
import asyncpg
import pytest

from connman import ConnectionManager, PoolConfig
from connman.testing.containers import OWNER_LABEL, docker_engine, owner
from tests.support.faultkit import (
    LoadThroughOutage,
    admin_connect,
    app_name,
    backends,
    counters,
    wait_until,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

FAST_RECONNECT = {"reconnect_initial_delay": 0.05, "reconnect_max_delay": 0.3}


def manager_for(url: str, **config: object) -> ConnectionManager:
    return ConnectionManager(url, config=PoolConfig(**config), degrade=False)  # type: ignore[arg-type]


async def test_the_server_is_a_container_started_by_testcontainers(postgres_container):
    """Not the local binaries: the server's own address is on the engine's bridge, the
    container carries testcontainers' labels and ours, its port is published on
    127.0.0.1 only, and the password is checked (scram-sha-256)."""
    client = docker_engine()
    try:
        container = client.containers.get(postgres_container.container_id)
        labels = container.labels
        bindings = container.attrs["HostConfig"]["PortBindings"]["5432/tcp"]
    finally:
        client.close()
    assert labels["org.testcontainers"] == "true"
    assert labels[OWNER_LABEL] == owner()
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(postgres_container.port)}]

    async with manager_for(postgres_container.url) as manager, manager.lease("t") as lease:
        server_addr = await lease.connection.fetchval("SELECT host(inet_server_addr())")
        method = await lease.connection.fetchval("SHOW password_encryption")
        version = await lease.connection.fetchval("SHOW server_version_num")
    assert not ipaddress.ip_address(server_addr).is_loopback, server_addr
    assert method == "scram-sha-256"
    assert int(version) >= 150000

    wrong = postgres_container.dsn.replace(":connman@", ":wrong@", 1)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong, timeout=10)


async def test_leases_are_served_first_come_first_served(postgres_container):
    """One connection, five waiters and a newcomer: served in arrival order, each
    lease a working connection, nothing left in use."""
    order: list[str] = []
    async with manager_for(postgres_container.url, max_size=1, min_size=1) as manager:
        pool = manager.default_pool
        assert pool is not None
        held = await manager.acquire("holder")

        async def waiter(name: str) -> None:
            async with manager.lease(name, timeout=10) as lease:
                assert await lease.connection.fetchval("SELECT $1::text", name) == name
                order.append(name)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(waiter, f"w{i}")
                await wait_until(lambda i=i: pool.stats().waiting == i + 1, what=f"w{i} queued")
            await held.release()
            tg.start_soon(waiter, "newcomer")
        stats = pool.stats()
    assert order == ["w0", "w1", "w2", "w3", "w4", "newcomer"]
    assert (stats.in_use, stats.waiting) == (0, 0)


async def test_terminated_backends_are_replaced(postgres_container):
    """pg_terminate_backend on every connection of the pool: the next leases succeed,
    and the pool counts what it lost."""
    app = app_name("docker_kill")
    async with manager_for(
        postgres_container.url, application_name=app, min_size=1, max_size=4
    ) as manager:
        leases = [await manager.acquire("warmup", timeout=10) for _ in range(4)]
        raws = [lease.connection for lease in leases]
        for lease in leases:
            await lease.release()
        admin = await admin_connect(postgres_container.url)
        try:
            assert await backends(admin, app) == 4
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND backend_type = 'client backend'",
                app,
            )
            assert killed == 4
            await wait_until(
                lambda: all(raw.is_closed() for raw in raws), what="the client to see the close"
            )
            with anyio.fail_after(20):
                results = await asyncio.gather(*(_select(manager, i) for i in range(12)))
            assert results == list(range(12))
            assert counters(manager)["connections_lost"] >= 4
            assert 1 <= await backends(admin, app) <= 4
        finally:
            await admin.close()


async def _select(manager: ConnectionManager, i: int) -> int:
    async with manager.lease(f"c{i % 3}", timeout=10) as lease:
        return int(await lease.connection.fetchval("SELECT $1::int", i))


async def test_container_stopped_and_started_under_load_the_pool_recovers(postgres_container):
    """Eight tasks lease and query in a loop; the container is stopped (docker stop)
    and started again. Nothing hangs, the only errors are connection errors, and
    leases succeed again on the same URL soon after the container is back."""
    app = app_name("docker_restart")
    async with manager_for(
        postgres_container.url,
        application_name=app,
        min_size=2,
        max_size=5,
        acquire_timeout=2.0,
        connect_timeout=2.0,
        **FAST_RECONNECT,
    ) as manager:
        load = LoadThroughOutage(manager)
        before = counters(manager)
        with anyio.fail_after(90):  # no task may hang
            async with anyio.create_task_group() as tg:
                load.start(tg, tasks=8)
                await wait_until(lambda: load.ok_before >= 50, timeout=20, what="load before")
                load.breaking = True
                await anyio.to_thread.run_sync(postgres_container.stop)
                await wait_until(lambda: load.outage_errors, timeout=20, what="the outage")
                await anyio.to_thread.run_sync(postgres_container.start)
                load.back()
                await wait_until(lambda: load.ok_after >= 50, timeout=20, what="leases after")
                recovery = time.monotonic() - load.back_at
                load.stop()
        after = counters(manager)
        stats = manager.stats()[0]

    assert not load.unexpected, f"errors other than connection errors: {load.unexpected!r}"
    assert recovery < 10.0, f"the pool took {recovery:.2f}s to serve again"
    assert after["connections_lost"] > before["connections_lost"], after
    assert after["connections_opened"] > before["connections_opened"], after
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert stats.size <= 5
