"""asyncpg's internals, and the driver without them (connman/drivers/_asyncpg_private.py).

The probe is the only thing patched: with it off, the driver runs on asyncpg's public
API, against a real server, and every lease must still start clean.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest

from connman import ConnectionManager, PoolConfig
from connman.drivers import _asyncpg_private

pytestmark = pytest.mark.postgres


def manager_for(url: str, **config: object) -> ConnectionManager:
    return ConnectionManager(url, config=PoolConfig(**config), degrade=False)  # type: ignore[arg-type]


def test_the_installed_asyncpg_has_every_internal_the_fast_path_uses() -> None:
    """Else every release would silently cost a round trip: the pinned asyncpg must
    keep the fast path."""
    assert _asyncpg_private.AVAILABLE


@pytest.fixture(params=["internals", "public"])
def internals(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "public":
        monkeypatch.setattr(_asyncpg_private, "AVAILABLE", False)
    return str(request.param)


async def test_the_next_lease_starts_clean_with_and_without_internals(
    postgres_database: str, internals: str
) -> None:
    """One physical connection (max_size=1): a lease leaves a transaction open, a
    setting changed, a LISTEN, an advisory lock and a temp table; the next lease sees
    none of them. Without the internals each release is one full reset."""
    async with manager_for(postgres_database, max_size=1, min_size=1) as manager:
        async with manager.lease("dirty") as lease:
            conn = lease.connection
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.add_listener("chan", lambda *args: None)
            await conn.execute("SET TimeZone = 'Pacific/Auckland'")
            await conn.execute("SELECT pg_advisory_lock(42)")
            await conn.execute("CREATE TEMP TABLE scratch (x int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO scratch VALUES (1)")
        async with manager.lease("next") as lease:
            conn = lease.connection
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SHOW TimeZone") != "Pacific/Auckland"
            assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            assert (
                await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                == 0
            )
            assert await conn.fetchval("SELECT to_regclass('pg_temp.scratch')") is None
        counters = manager.stats()[0].counters
        # With the internals: the first release needed a full reset (LISTEN), the
        # second was clean. Without: a full reset after each lease.
        assert counters["full_resets"] == (1 if internals == "internals" else 2)


async def test_a_cancelled_query_leaves_a_usable_connection_without_internals(
    postgres_database: str, internals: str
) -> None:
    """A lease cancelled mid-query: the release waits for the server's acknowledgement
    (asyncpg's own wait before the reset query, on the public path) and the next lease
    runs its queries on the same connection."""
    async with manager_for(postgres_database, max_size=1, min_size=1) as manager:

        async def sleeper() -> None:
            async with manager.lease("slow") as lease:
                await lease.connection.execute("SELECT pg_sleep(30)")

        task = asyncio.get_running_loop().create_task(sleeper())
        async with manager_for(postgres_database) as other, other.lease("watch") as watch:
            with anyio.fail_after(10):
                while not await watch.connection.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'"
                ):
                    await asyncio.sleep(0.005)  # polled until the query runs
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with anyio.fail_after(10):
            async with manager.lease("next") as lease:
                assert await lease.connection.fetchval("SELECT 1") == 1
                assert not lease.connection.is_in_transaction()
        assert manager.stats()[0].counters["connections_opened"] == 1
