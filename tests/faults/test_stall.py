"""A server that is up but silent (a StallingProxy in front of it, stalled): the
failure that deadlines exist for. Acquirers must fail by their deadline whatever the
pool was doing for them, and the pool must serve again once bytes flow."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import anyio
import pytest

from connman import AcquireTimeout, PoolUnavailable, parse_url
from connman.testing.proxy import StallingProxy
from tests.support.faultkit import Stopwatch, app_name, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

TIMEOUT = 1.0
SLACK = 0.5


@pytest.fixture
async def proxy(postgres_database: str) -> AsyncIterator[tuple[StallingProxy, str]]:
    """A StallingProxy to the test's database, and the database's URL through it."""
    target = parse_url(postgres_database)
    assert target.host is not None and target.port is not None
    async with StallingProxy(target.host, target.port) as p:
        yield p, p.route(postgres_database)


async def _acquire_fails_by_deadline(manager, consumer: str) -> BaseException:
    with Stopwatch() as sw, pytest.raises((AcquireTimeout, PoolUnavailable)) as info:
        async with manager.lease(consumer, timeout=TIMEOUT):
            pass
    assert sw.elapsed < TIMEOUT + SLACK, f"{consumer} failed after {sw.elapsed:.3f}s"
    return info.value


async def _serves_again(manager, n: int = 5) -> None:
    """After resume(): leases succeed, and their queries return, within a bound."""
    with anyio.fail_after(10):
        for i in range(n):
            async with manager.lease("after", timeout=5) as lease:
                assert await lease.connection.fetchval("SELECT $1::int", i) == i
        await wait_until(
            lambda: manager.stats()[0].in_use == 0, timeout=8, what="stalled work to settle"
        )


async def test_stall_while_pool_must_open_a_connection(proxy, make_manager):
    """The only connection is leased, so the pool must connect through the stalled
    proxy (connect_timeout is longer than the acquire deadline): acquirers still fail
    at their own deadline; after resume() the pool serves again."""
    p, url = proxy
    manager = await make_manager(
        url, application_name=app_name("stall_new"), min_size=1, max_size=3, connect_timeout=5.0
    )
    holder = await manager.acquire("holder", timeout=5)
    p.stall()
    with anyio.fail_after(TIMEOUT + 5):
        errors = await asyncio.gather(
            *(_acquire_fails_by_deadline(manager, f"waiter{i}") for i in range(4))
        )
    # The message says what the pool was doing: connections being opened.
    assert "connecting" in str(errors[0])
    assert manager.stats()[0].waiting == 0
    p.resume()
    await holder.release()
    await _serves_again(manager)


async def test_stall_while_idle_connections_need_a_health_check(proxy, make_manager):
    """Idle connections must be pinged before use (health_check_after=0): the pings
    hang in the stalled proxy, yet acquirers fail by their deadline; those that find
    no idle connection wait on a connect through the stall, and fail by it too."""
    p, url = proxy
    manager = await make_manager(
        url,
        application_name=app_name("stall_ping"),
        min_size=2,
        max_size=4,
        health_check_after=0.0,
        connect_timeout=5.0,
        reset_timeout=5.0,
    )
    await wait_until(lambda: manager.stats()[0].idle == 2, timeout=5, what="two idle")
    p.stall()
    with anyio.fail_after(TIMEOUT + 5):
        await asyncio.gather(*(_acquire_fails_by_deadline(manager, f"w{i}") for i in range(5)))
    stats = manager.stats()[0]
    assert stats.waiting == 0
    assert stats.counters["health_checks"] >= 2
    p.resume()
    await _serves_again(manager)


async def test_stall_sequential_acquirers_each_keep_their_deadline(proxy, make_manager):
    """One acquirer after another against the stall: none waits longer than its own
    deadline, whatever earlier ones left behind (pings in flight, pending connects)."""
    p, url = proxy
    manager = await make_manager(
        url,
        application_name=app_name("stall_seq"),
        min_size=1,
        max_size=2,
        health_check_after=0.0,
        connect_timeout=5.0,
    )
    p.stall()
    with anyio.fail_after(4 * (TIMEOUT + SLACK) + 5):
        for i in range(4):
            await _acquire_fails_by_deadline(manager, f"seq{i}")
    p.resume()
    await _serves_again(manager)


async def test_start_through_stalled_proxy_fails_by_connect_timeout(proxy, make_manager):
    """A manager started against a silent server raises PoolUnavailable after
    connect_timeout, rather than hanging."""
    p, url = proxy
    p.stall()
    manager = await make_manager(url, start=False, connect_timeout=TIMEOUT)
    with Stopwatch() as sw, anyio.fail_after(TIMEOUT + 5), pytest.raises(PoolUnavailable):
        await manager.start()
    assert sw.elapsed < TIMEOUT + SLACK


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("anyio.fail_after", id="anyio"),
        pytest.param("asyncio.timeout", id="asyncio"),
    ],
)
async def test_timeout_around_a_stalled_query_is_honoured(proxy, make_manager, scope):
    """A caller puts a 1 s timeout around a lease and its query; the server stalls
    mid-query. The caller gets TimeoutError after about 1 s: the cleanup of the
    connection (waiting for the cancel to be acknowledged, then rolling back) may go
    on in the background, but must not hold the caller past its own deadline."""
    p, url = proxy
    manager = await make_manager(
        url, application_name=app_name("stall_query"), min_size=1, max_size=2, reset_timeout=2.0
    )
    async with manager.lease("warm") as lease:
        assert await lease.connection.fetchval("SELECT 1") == 1
    p.stall()

    async def work() -> None:
        async with manager.lease("dgent") as lease:
            await lease.connection.fetchval("SELECT 1")

    with Stopwatch() as sw, anyio.fail_after(10), pytest.raises(TimeoutError):
        if scope == "asyncio.timeout":
            async with asyncio.timeout(TIMEOUT):
                await work()
        else:
            with anyio.fail_after(TIMEOUT):
                await work()
    p.resume()
    await _serves_again(manager)
    assert sw.elapsed < TIMEOUT + SLACK, f"the caller got its TimeoutError after {sw.elapsed:.2f}s"
