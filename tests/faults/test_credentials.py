"""Credentials that rotate, against a throwaway cluster with scram-sha-256: the
password changes with ALTER ROLE under load, a credential provider hands out the new
one, ``expire_connections()`` replaces every connection, and no lease fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import anyio
import asyncpg
import pytest

from connman import ConnectionManager, PoolConfig
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import throwaway_cluster
from tests.support.faultkit import admin_connect, app_name, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

ROLE = "rotating"


@pytest.fixture(scope="module")
def scram_cluster() -> Iterator[LocalCluster]:
    with throwaway_cluster(f"CREATE ROLE {ROLE} LOGIN PASSWORD 'first-secret-1'") as cluster:
        cluster.require_password("scram-sha-256")
        yield cluster


@dataclass
class Load:
    """Workers leasing and querying until stopped; every failure kept."""

    manager: ConnectionManager
    done: int = 0
    failures: list[BaseException] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self) -> None:
        while not self.stop.is_set():
            try:
                async with self.manager.lease("rotation", timeout=10) as lease:
                    assert await lease.connection.fetchval("SELECT 1 + 1") == 2
                self.done += 1
            except Exception as exc:
                self.failures.append(exc)
            await asyncio.sleep(0)  # let the others in: a tight loop, not a wait


@pytest.fixture
async def admin(scram_cluster: LocalCluster) -> AsyncIterator[asyncpg.Connection]:
    conn = await admin_connect(scram_cluster.url)
    await conn.execute(f"ALTER ROLE {ROLE} PASSWORD 'first-secret-1'")
    try:
        yield conn
    finally:
        await conn.close()


async def _pids(admin: asyncpg.Connection, app: str) -> set[int]:
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 "
        "AND backend_type = 'client backend'",
        app,
    )
    return {row["pid"] for row in rows}


async def _rotate_under_load(
    cluster: LocalCluster,
    admin: asyncpg.Connection,
    provider: Callable[[], str | Awaitable[str]],
    rotate: Callable[[str], None],
) -> tuple[Load, set[int], set[int]]:
    """12 workers on a pool of 6; ALTER ROLE; ``rotate(new)`` (the secret store gets
    the new password); ``expire_connections()``; load goes on until every connection
    is new and 200 more leases went through."""
    app = app_name("rotate")
    url = f"postgresql://{ROLE}@127.0.0.1:{cluster.port}/postgres?application_name={app}"
    config = PoolConfig(min_size=6, max_size=6, reconnect_initial_delay=0.05)
    async with ConnectionManager(
        url, config=config, credential_provider=provider, degrade=False
    ) as manager:
        load = Load(manager)
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(load.worker)
            await wait_until(lambda: load.done >= 200, what="load before the rotation")
            before = await wait_until(
                lambda: _exactly(admin, app, 6), what="6 connections before the rotation"
            )
            await admin.execute(f"ALTER ROLE {ROLE} PASSWORD 'second-secret-2'")
            rotate("second-secret-2")
            await manager.expire_connections()
            after = await wait_until(
                lambda: _exactly(admin, app, 6, frozenset(before)),
                timeout=15,
                what="6 new connections",
            )
            target = load.done + 200
            await wait_until(lambda: load.done >= target, what="load after the rotation")
            load.stop.set()
    return load, before, after


async def _exactly(
    admin: asyncpg.Connection, app: str, n: int, avoid: frozenset[int] = frozenset()
) -> set[int] | None:
    """The pids of our ``n`` backends once there are exactly ``n``, none in ``avoid``."""
    pids = await _pids(admin, app)
    return pids if len(pids) == n and not pids & avoid else None


async def test_alter_role_under_load_with_a_provider_fails_no_lease(scram_cluster, admin):
    store = {"password": "first-secret-1"}
    calls: list[str] = []

    async def provider() -> str:  # async, as a secrets manager client would be
        calls.append(store["password"])
        return store["password"]

    def rotate(new: str) -> None:
        store["password"] = new

    load, before, after = await _rotate_under_load(scram_cluster, admin, provider, rotate)
    assert not load.failures, load.failures[:3]
    assert not before & after  # every backend is new...
    assert calls.count("second-secret-2") >= 6  # ...and logged in with the new secret


async def test_an_authentication_failure_asks_the_provider_again(scram_cluster, admin):
    """A provider that caches: after the rotation it answers once more with the old
    secret. The refused login asks it again before anyone is failed, so a pool with
    no connection yet (where a refused login fails every waiter at once) works."""
    store = {"password": "first-secret-1"}
    state = {"cached": "first-secret-1", "stale_answers": 0}

    def provider() -> str:  # sync
        if state["cached"] != store["password"]:
            state["stale_answers"] += 1  # answer stale once, then refresh
            stale, state["cached"] = state["cached"], store["password"]
            return stale
        return state["cached"]

    await admin.execute(f"ALTER ROLE {ROLE} PASSWORD 'second-secret-2'")
    store["password"] = "second-secret-2"
    url = f"postgresql://{ROLE}@127.0.0.1:{scram_cluster.port}/postgres"
    config = PoolConfig(min_size=1, acquire_timeout=10)
    async with ConnectionManager(
        url, config=config, credential_provider=provider, degrade=False
    ) as manager:
        async with manager.lease("rotation") as lease:
            assert await lease.connection.fetchval("SELECT current_user") == ROLE
        assert manager.stats()[0].counters["connect_errors"] == 0
    assert state["stale_answers"] == 1  # the stale answer was given, and refused


async def test_expire_connections_and_discard_replace_connections(postgres_url):
    app = app_name("expire")
    url = f"{postgres_url}?application_name={app}"
    config = PoolConfig(min_size=4, max_size=4)
    async with ConnectionManager(url, config=config, degrade=False) as manager:
        admin = await admin_connect(postgres_url)
        try:
            load = Load(manager)
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(load.worker)
                before = await wait_until(
                    lambda: _exactly(admin, app, 4), what="4 connections under load"
                )
                await manager.expire_connections(url)
                after = await wait_until(
                    lambda: _exactly(admin, app, 4, frozenset(before)), what="4 new connections"
                )
                target = load.done + 100
                await wait_until(lambda: load.done >= target, what="load after expiry")
                load.stop.set()
            assert not load.failures, load.failures[:3]
            assert not before & after

            # one connection: release(discard=True) closes it, the pool opens another
            lease = await manager.acquire("discard")
            pid = await lease.connection.fetchval("SELECT pg_backend_pid()")
            await lease.release(discard=True)
            await wait_until(
                lambda: _exactly(admin, app, 4, frozenset({pid})), what="the discarded one replaced"
            )
        finally:
            await admin.close()


async def test_a_passfile_in_the_url_with_a_tilde(scram_cluster, admin, tmp_path, monkeypatch):
    """No password in the URL: ``?passfile=~/...`` (expanded here; asyncpg would look
    for a file literally named ``~``)."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{scram_cluster.port}:postgres:{ROLE}:first-secret-1\n")
    passfile.chmod(0o600)  # asyncpg ignores a passfile others can read
    monkeypatch.setenv("HOME", str(tmp_path))
    url = f"postgresql://{ROLE}@127.0.0.1:{scram_cluster.port}/postgres?passfile=~/pgpass"
    async with ConnectionManager(url, degrade=False) as manager, manager.lease("pf") as lease:
        assert await lease.connection.fetchval("SELECT current_user") == ROLE
