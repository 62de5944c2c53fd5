"""The pool's contract on a real PostgreSQL: FIFO handoff, limits, deadlines, resets,
leaks, lifetimes, close."""

from __future__ import annotations

import asyncio
import uuid

import anyio
import asyncpg
import pytest

from connman import (
    AcquireTimeout,
    ConnectionManager,
    LeaseError,
    PoolClosed,
    PoolConfig,
)
from tests.support.helpers import RecordingObserver, captured_logs, wait_until
from tests.support.pg_access import userinfo

pytestmark = pytest.mark.postgres


def manager_for(
    url: str, observer: RecordingObserver | None = None, **config: object
) -> ConnectionManager:
    return ConnectionManager(url, config=PoolConfig(**config), degrade=False, observer=observer)  # type: ignore[arg-type]


async def backend_pid(manager: ConnectionManager, consumer: str = "t") -> int:
    async with manager.lease(consumer) as lease:
        return int(await lease.connection.fetchval("SELECT pg_backend_pid()"))


# -- queueing ----------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order_and_newcomers_do_not_barge(
    postgres_database: str,
) -> None:
    order: list[str] = []
    async with manager_for(postgres_database, max_size=1, min_size=1) as manager:
        pool = manager.default_pool
        assert pool is not None
        held = await manager.acquire("holder")

        async def waiter(name: str) -> None:
            async with manager.lease(name):
                order.append(name)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(waiter, f"w{i}")
                await wait_until(lambda i=i: pool.stats().waiting == i + 1)
            await held.release()
            # The connection is already promised to w0: this newcomer queues last.
            tg.start_soon(waiter, "newcomer")
    assert order == ["w0", "w1", "w2", "w3", "w4", "newcomer"]


async def test_timed_out_waiter_gets_a_detailed_error_and_never_a_connection(
    postgres_database: str,
) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        held = await manager.acquire("brain")
        with pytest.raises(AcquireTimeout) as caught:
            async with manager.lease("dgent", timeout=0.05):
                pass
        message = str(caught.value)
        for part in (
            "'dgent'",
            "size 1/1",
            "in use 1 (brain 1)",
            "idle 0",
            "waiting 0",
            "postgresql+asyncpg://",
            "KGENTS_POOL_MAX_SIZE",
        ):
            assert part in message
        await held.release()
        [stats] = manager.stats()
        assert (stats.in_use, stats.idle, stats.waiting) == (0, 1, 0)
        assert stats.counters["timeouts"] == 1
        async with manager.lease("dgent", timeout=1) as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1


async def test_connection_handed_to_a_cancelled_waiter_comes_back(postgres_database: str) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        pool = manager.default_pool
        assert pool is not None
        held = await manager.acquire("a")

        async def wait_for_lease() -> None:
            async with manager.lease("b"):
                pytest.fail("a cancelled waiter must not run its body")

        task = asyncio.get_running_loop().create_task(wait_for_lease())
        await wait_until(lambda: pool.stats().waiting == 1)
        # Release hands the connection to the waiter; cancel it before it runs.
        await held.release()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = pool.stats()
        assert (stats.in_use, stats.idle, stats.waiting, stats.consumers) == (0, 1, 0, {})
        async with manager.lease("c", timeout=1) as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1


async def test_consumer_at_its_limit_waits_without_blocking_others(postgres_database: str) -> None:
    async with manager_for(
        postgres_database, max_size=4, min_size=4, consumer_limits={"sqlalchemy": 2}
    ) as manager:
        pool = manager.default_pool
        assert pool is not None
        a = await manager.acquire("sqlalchemy")
        b = await manager.acquire("sqlalchemy")
        third = asyncio.get_running_loop().create_task(manager.acquire("sqlalchemy", timeout=5))
        await wait_until(lambda: pool.stats().waiting == 1)
        # Queued behind the capped sqlalchemy waiter, dgent still gets a connection.
        with anyio.fail_after(1):
            async with manager.lease("dgent") as lease:
                assert await lease.connection.fetchval("SELECT 1") == 1
        assert not third.done()
        assert pool.stats().waiting_by_consumer == {"sqlalchemy": 1}
        await a.release()
        c = await third
        assert pool.stats().consumers == {"sqlalchemy": 2}
        for lease in (b, c):
            await lease.release()


# -- release: clean without a round trip, dirty cleaned ------------------------------


async def test_clean_release_costs_no_round_trip(postgres_database: str) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        marker = f"SELECT 'marker-{uuid.uuid4().hex}'"
        for _ in range(50):
            async with manager.lease("t") as lease:
                pid = await lease.connection.fetchval("SELECT pg_backend_pid()")
                await lease.connection.fetchval(marker)
        admin = await asyncpg.connect(manager.default_pool.url.connect_dsn())  # type: ignore[union-attr]
        try:
            last = await admin.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        finally:
            await admin.close()
        # The server saw the lease's query last: no reset query after it.
        assert last == marker
        [stats] = manager.stats()
        assert stats.counters["resets"] == 0
        assert stats.counters["connections_opened"] == 1


async def test_session_settings_do_not_leak_into_the_next_lease(postgres_database: str) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        async with manager.lease("a") as lease:
            original = await lease.connection.fetchval("SHOW TimeZone")
            await lease.connection.execute("SET TimeZone = 'Pacific/Chatham'")
            await lease.connection.execute("SET DateStyle = 'German'")
        async with manager.lease("b") as lease:
            assert await lease.connection.fetchval("SHOW TimeZone") == original
            assert await lease.connection.fetchval("SHOW DateStyle") == "ISO, MDY"
        [stats] = manager.stats()
        assert stats.counters["resets"] == 1
        assert stats.counters["connections_opened"] == 1


async def test_open_and_failed_transactions_are_rolled_back(postgres_database: str) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        async with manager.lease("a") as lease:
            await lease.connection.execute("CREATE TABLE t (x int)")
        async with manager.lease("a") as lease:
            await lease.connection.execute("BEGIN; INSERT INTO t VALUES (1)")
        async with manager.lease("b") as lease:
            assert not lease.connection.is_in_transaction()
            assert await lease.connection.fetchval("SELECT count(*) FROM t") == 0
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with manager.lease("a") as lease:
                await lease.connection.execute("BEGIN")
                await lease.connection.execute("SELECT 1/0")
        async with manager.lease("b") as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1
        [stats] = manager.stats()
        assert stats.counters["connections_opened"] == 1


async def test_listen_is_undone_and_full_reset_cleans_unreported_state(
    postgres_database: str,
) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        async with manager.lease("a") as lease:
            await lease.connection.add_listener("chan", lambda *a: None)
        async with manager.lease("b") as lease:
            assert await lease.connection.fetch("SELECT pg_listening_channels()") == []
            # search_path is not reported by PG < 18 and advisory locks never are:
            # without a full reset they survive (documented), with one they do not.
            await lease.connection.execute("SET search_path = nowhere")
            await lease.connection.execute("SELECT pg_advisory_lock(42)")
            await lease.connection.execute("CREATE TEMP TABLE scratch (x int)")
            lease.request_full_reset()
        async with manager.lease("c") as lease:
            conn = lease.connection
            assert await conn.fetchval("SHOW search_path") == '"$user", public'
            assert await conn.fetchval("SELECT to_regclass('scratch')") is None
            locks = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            assert await conn.fetchval(locks) == 0
        [stats] = manager.stats()
        assert stats.counters["full_resets"] == 2
        assert stats.counters["connections_opened"] == 1


async def test_session_authorization_that_cannot_be_undone_closes_the_connection(
    postgres_database: str,
) -> None:
    async with manager_for(postgres_database, max_size=1) as manager:
        pid = await backend_pid(manager)
        async with manager.lease("a") as lease:
            await lease.connection.execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cm_other') "
                "THEN CREATE ROLE cm_other; END IF; END $$"
            )
            await lease.connection.execute("SET SESSION AUTHORIZATION cm_other")
        # RESET ALL does not undo it: the connection was replaced, not reused.
        assert await backend_pid(manager) != pid
        async with manager.lease("b") as lease:
            assert await lease.connection.fetchval("SELECT current_user") != "cm_other"


# -- leases ------------------------------------------------------------------------


async def test_connection_is_unreachable_through_an_ended_lease(postgres_database: str) -> None:
    async with manager_for(postgres_database) as manager:
        lease = manager.lease("dgent")
        with pytest.raises(LeaseError, match="not started"):
            _ = lease.connection
        async with lease:
            assert lease.active
        with pytest.raises(LeaseError, match="ended"):
            _ = lease.connection
        with pytest.raises(LeaseError, match="single use"):
            async with lease:
                pass
        assert "dgent" in repr(lease) and "ended" in repr(lease)


async def test_every_spelling_of_a_url_reaches_one_pool(postgres_database: str) -> None:
    from connman import parse_url

    url = parse_url(postgres_database)
    host = url.host or "127.0.0.1"
    auth = userinfo(url)  # user, and the password when the server wants one
    spellings = [
        f"postgres://{auth}{host}:{url.port}/{url.database}",
        f"postgresql://{auth}{host.upper()}:{url.port}/{url.database}",
        f"postgresql+asyncpg://{auth}{host}:{url.port}/{url.database}",
        f"postgresql+psycopg://{auth}{host}:{url.port}/{url.database}",
    ]
    async with manager_for(postgres_database, max_size=1) as manager:
        pids = set()
        for spelling in spellings:
            async with manager.lease("brain", url=spelling) as lease:
                pids.add(await lease.connection.fetchval("SELECT pg_backend_pid()"))
        assert len(pids) == 1
        assert len(manager.stats()) == 1


async def test_consumer_name_is_required(postgres_database: str) -> None:
    from connman import ConfigError

    async with manager_for(postgres_database) as manager:
        for bad in ("", None, 3):
            with pytest.raises(ConfigError, match="consumer"):
                manager.lease(bad)  # type: ignore[arg-type]


async def test_leak_is_reported_with_consumer_and_stack_then_its_return(
    postgres_database: str,
) -> None:
    observer = RecordingObserver()
    with captured_logs("warning") as records:
        async with manager_for(postgres_database, observer, leak_threshold=0.05) as manager:
            async with manager.lease("brain"):
                await observer.wait_for(lambda: observer.count("leak_detected") == 1)
            [stats] = manager.stats()
            assert stats.counters["leaks"] == 1
    leak = next(r for r in records if r["event"] == "lease_leak_suspected")
    assert leak["consumer"] == "brain"
    assert "test_leak_is_reported_with_consumer_and_stack_then_its_return" in leak["stack"]
    back = next(r for r in records if r["event"] == "lease_returned_after_leak")
    assert back["consumer"] == "brain" and back["held_seconds"] >= 0.05


# -- lifetime, idle, health ----------------------------------------------------------


async def test_connections_are_retired_after_max_lifetime(postgres_database: str) -> None:
    observer = RecordingObserver()
    async with manager_for(postgres_database, observer, max_size=1, max_lifetime=0.2) as manager:
        first = await backend_pid(manager)
        await observer.wait_for(lambda: observer.count("connection_closed") >= 1)
        assert await backend_pid(manager) != first


async def test_idle_connections_expire_but_never_below_min_size(postgres_database: str) -> None:
    observer = RecordingObserver()
    async with manager_for(
        postgres_database, observer, min_size=2, max_size=6, max_idle=0.1
    ) as manager:
        pool = manager.default_pool
        assert pool is not None
        leases = [await manager.acquire("t") for _ in range(6)]
        for lease in leases:
            await lease.release()
        assert pool.stats().size == 6
        await observer.wait_for(lambda: observer.count("connection_closed") >= 4)
        assert pool.stats().size == 2
        # More maintenance rounds keep min_size.
        closed = observer.count("connection_closed")
        await observer.wait_for(lambda: len(observer.events) > 0)
        assert pool.stats().size == 2
        assert observer.count("connection_closed") == closed


async def test_idle_connection_is_pinged_before_lease(postgres_database: str) -> None:
    async with manager_for(postgres_database, health_check_after=0.0) as manager:
        for _ in range(3):
            await backend_pid(manager)
        [stats] = manager.stats()
        assert stats.counters["health_checks"] >= 2
        assert stats.counters["health_checks_failed"] == 0


# -- close ---------------------------------------------------------------------------


async def test_aclose_fails_waiters_waits_for_leases_then_terminates(
    postgres_database: str,
) -> None:
    manager = manager_for(postgres_database, max_size=1)
    await manager.start()
    held = await manager.acquire("a")
    waiter = asyncio.get_running_loop().create_task(manager.acquire("b"))
    pool = manager.default_pool
    assert pool is not None
    await wait_until(lambda: pool.stats().waiting == 1)
    with anyio.fail_after(5):
        await manager.aclose(timeout=0.1)
    with pytest.raises(PoolClosed):
        await waiter
    with pytest.raises(PoolClosed):
        manager.lease("c")
    # The lease outlived the grace period: its connection was terminated.
    with pytest.raises(asyncpg.InterfaceError):
        await held.connection.fetchval("SELECT 1")
    await held.release()
    assert pool.stats().in_use == 0
