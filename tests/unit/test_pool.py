"""The pool's own rules, on a fake driver (no server): each test runs in milliseconds.

The fake implements the drivers' protocol (connman.drivers.Driver/DriverConnection)
and records what the pool asked of it; everything else is the real Pool. What needs a
real PostgreSQL (protocol states, resets, terminated backends) is in tests/faults.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest

from connman import AcquireTimeout, PoolClosed, PoolConfig, PoolUnavailable, parse_url
from connman.drivers import BROKEN, CLEAN, DIRTY, Verdict
from connman.pool import Pool, PooledConnection
from tests.support.helpers import captured_logs

pytestmark = pytest.mark.anyio


class PermanentError(Exception):
    """A wrong password, as the server reports it (SQLSTATE invalid_password)."""

    sqlstate = "28P01"


class FakeConnection:
    """One 'physical connection': tracks what the pool did with it."""

    def __init__(self, n: int) -> None:
        self.raw = f"conn{n}"
        self.closed = False
        self.terminated = False
        self.broken = False
        self.dirty = False
        self.checkins = 0
        self.resets = 0
        self.close_fails = False
        self.server = "fake:5432"
        self.demoted = False

    def saw_error(self, exc: BaseException) -> None:
        return None

    def is_closed(self) -> bool:
        return self.closed

    def checkout(self) -> bool:
        return not self.closed

    def checkin(self) -> None:
        self.checkins += 1

    def checked(self) -> None:
        return None

    def verdict(self, failed: bool) -> Verdict:
        if self.closed or self.broken:
            return BROKEN
        return DIRTY if self.dirty else CLEAN

    async def reset(self, full: bool) -> bool:
        self.resets += 1
        self.dirty = False
        return not self.closed

    async def ping(self) -> None:
        if self.closed:
            raise ConnectionError("closed")

    async def close(self) -> None:
        self.closed = True
        if self.close_fails:
            raise OSError("the goodbye got lost")

    def terminate(self) -> None:
        self.closed = self.terminated = True


class FakeDriver:
    """Opens FakeConnections; ``fail_with`` makes connect() raise instead."""

    dialect = "postgresql"

    def __init__(self) -> None:
        self.opened: list[FakeConnection] = []
        self.attempts: list[float] = []  # loop time of each connect attempt
        self.fail_with: Callable[[], Exception] | None = None
        self.gate: asyncio.Event | None = None  # when set: connect() waits for it
        self.raised: list[Exception] = []  # what each failed connect raised
        self.hosts: dict[str, str] = {}

    async def start(self) -> None:
        return None

    async def connect(self) -> FakeConnection:
        self.attempts.append(asyncio.get_running_loop().time())
        await asyncio.sleep(0)  # a connect always suspends, like a real one
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            self.raised.append(self.fail_with())
            raise self.raised[-1]
        conn = FakeConnection(len(self.opened))
        self.opened.append(conn)
        return conn

    async def stop(self) -> None:
        return None


PoolFactory = Callable[..., Awaitable[tuple[Pool, FakeDriver]]]


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """``await make_pool(wait=True, **config)``: an opened Pool on a FakeDriver."""
    pools: list[Pool] = []

    async def make(*, wait: bool = True, **config: Any) -> tuple[Pool, FakeDriver]:
        config.setdefault("min_size", 0)
        driver = FakeDriver()
        pool = Pool(parse_url("postgresql://u@127.0.0.1/db"), driver, PoolConfig(**config))
        pools.append(pool)
        await pool.open(wait=wait)
        return pool, driver

    yield make
    for pool in pools:
        with anyio.fail_after(5):
            await pool.aclose(timeout=0.1)


async def _until(check: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``check()`` holds (a few iterations; fails after 1 s)."""
    with anyio.fail_after(1):
        while not check():
            await asyncio.sleep(0)
    assert check(), what


async def _hold(pool: Pool, n: int) -> list[PooledConnection]:
    return [await pool.acquire(f"holder{i}", timeout=1) for i in range(n)]


# -- the cancel-after-handoff race (issue 10.3) --------------------------------------


async def test_cancelled_waiter_then_newcomer_then_releases(make_pool: PoolFactory) -> None:
    """The interleaving of issue 10.3, built step by step: two connections held, one
    waiter queued; then, with no await in between, a newcomer is created, the waiter
    cancelled and both connections released. The newcomer gets a connection, nothing
    raises, and nothing stays in use."""
    pool, _ = await make_pool(max_size=2)
    a, b = await _hold(pool, 2)
    loop = asyncio.get_running_loop()
    waiter = loop.create_task(pool.acquire("waiter", timeout=5))
    await _until(lambda: pool.stats().waiting == 1, "the waiter to queue")

    async def newcomer() -> str:
        pooled = await pool.acquire("newcomer", timeout=5)
        raw = str(pooled.conn.raw)
        await pool.release(pooled)
        return raw

    late = loop.create_task(newcomer())
    waiter.cancel()
    assert pool.release_nowait(a)
    assert pool.release_nowait(b)

    with anyio.fail_after(1):
        assert (await late).startswith("conn")
        with pytest.raises(asyncio.CancelledError):
            await waiter
    stats = pool.stats()
    assert (stats.in_use, stats.waiting, stats.idle) == (0, 0, 2), stats
    assert stats.consumers == {}
    # And the pool still serves everyone: both connections at once.
    again = await _hold(pool, 2)
    for pooled in again:
        assert pool.release_nowait(pooled)


async def test_waiter_cancelled_in_the_iteration_it_was_served(make_pool: PoolFactory) -> None:
    """A connection handed to a waiter whose task is cancelled before it runs again
    goes back, and on to the next waiter."""
    pool, _ = await make_pool(max_size=1)
    (held,) = await _hold(pool, 1)
    loop = asyncio.get_running_loop()
    first = loop.create_task(pool.acquire("first", timeout=5))
    second = loop.create_task(pool.acquire("second", timeout=5))
    await _until(lambda: pool.stats().waiting == 2, "two waiters")
    assert pool.release_nowait(held)  # handed to `first`...
    first.cancel()  # ...which is cancelled before it could take it
    with anyio.fail_after(1):
        with pytest.raises(asyncio.CancelledError):
            await first
        pooled = await second
    assert pool.stats().consumers == {"second": 1}
    assert pool.release_nowait(pooled)
    stats = pool.stats()
    assert (stats.in_use, stats.waiting) == (0, 0)
    assert stats.counters["cancelled"] == 1


async def test_error_after_handoff_gives_the_connection_back(make_pool: PoolFactory) -> None:
    """Whatever raises between the handoff and the lease (here: the observer) gives
    the connection back instead of leaving it in use with no owner."""

    class FailingObserver:
        def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
            if wait > 0:  # the queued path only
                raise RuntimeError("observer failed")

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *args: None

    pool, _ = await make_pool(max_size=1)
    (held,) = await _hold(pool, 1)
    pool.set_observer(FailingObserver())  # type: ignore[arg-type]
    waiter = asyncio.get_running_loop().create_task(pool.acquire("waiter", timeout=5))
    await _until(lambda: pool.stats().waiting == 1, "the waiter to queue")
    assert pool.release_nowait(held)
    with anyio.fail_after(1), pytest.raises(RuntimeError, match="observer failed"):
        await waiter
    stats = pool.stats()
    assert (stats.in_use, stats.idle, stats.consumers) == (0, 1, {})


# -- deadlines -----------------------------------------------------------------------


async def test_deadline_timer_rearms_for_an_earlier_and_a_later_deadline(
    make_pool: PoolFactory,
) -> None:
    """One timer serves the queue: a later arrival with a shorter timeout re-arms it
    earlier, and after it fires it re-arms for the waiter still queued, which times out
    at its own deadline and not before."""
    pool, _ = await make_pool(max_size=1)
    (held,) = await _hold(pool, 1)
    loop = asyncio.get_running_loop()
    failed_at: dict[str, float] = {}

    async def wait(name: str, timeout: float) -> None:
        started = loop.time()
        try:
            await pool.acquire(name, timeout=timeout)
        except AcquireTimeout:
            failed_at[name] = loop.time() - started

    patient = loop.create_task(wait("patient", 0.15))
    await _until(lambda: pool.stats().waiting == 1, "the first waiter")
    hasty = loop.create_task(wait("hasty", 0.01))
    with anyio.fail_after(1):
        await hasty
        assert list(failed_at) == ["hasty"]  # before the earlier-queued waiter
        assert pool.stats().waiting_by_consumer == {"patient": 1}
        await patient
    assert 0.01 <= failed_at["hasty"] < 0.15
    assert failed_at["patient"] >= 0.15
    assert pool.stats().counters["timeouts"] == 2
    assert pool.release_nowait(held)
    assert pool.stats().in_use == 0


async def test_timed_out_waiter_is_never_handed_a_connection(make_pool: PoolFactory) -> None:
    pool, _ = await make_pool(max_size=1)
    (held,) = await _hold(pool, 1)
    with pytest.raises(AcquireTimeout, match="waiting 0"):
        await pool.acquire("late", timeout=0.005)
    assert pool.release_nowait(held)
    stats = pool.stats()
    assert (stats.in_use, stats.idle) == (0, 1)


# -- release ---------------------------------------------------------------------------


async def test_checkin_once_per_kept_lease_never_for_a_dropped_one(make_pool: PoolFactory) -> None:
    """The driver is told once per lease that its connection is parked again: after a
    clean release (no reset), after a reset, and for a handoff to a waiter; not for a
    connection that is dropped."""
    pool, driver = await make_pool(max_size=1)
    conn = driver.opened[0]
    assert pool.release_nowait(await pool.acquire("a"))
    assert (conn.checkins, conn.resets) == (1, 0)
    pooled = await pool.acquire("a")
    conn.dirty = True
    assert not pool.release_nowait(pooled)  # needs a reset: nothing happened yet
    assert conn.checkins == 1
    await pool.release(pooled)
    assert (conn.checkins, conn.resets) == (2, 1)
    pooled = await pool.acquire("a")
    waiter = asyncio.get_running_loop().create_task(pool.acquire("b", timeout=1))
    await _until(lambda: pool.stats().waiting == 1, "b queued")
    assert pool.release_nowait(pooled)  # straight to b
    assert pool.release_nowait(await waiter)
    assert conn.checkins == 4
    pooled = await pool.acquire("a")
    conn.broken = True
    assert pool.release_nowait(pooled)
    assert conn.checkins == 4 and conn.terminated


async def test_a_handoff_nobody_used_goes_back_parked(make_pool: PoolFactory) -> None:
    """A waiter cancelled in the loop iteration of its handoff never uses the
    connection: it goes back to the idle list, and the driver is told it is parked
    again (whatever arrives before the next checkout is then suspect)."""
    pool, driver = await make_pool(max_size=1)
    conn = driver.opened[0]
    pooled = await pool.acquire("a")
    waiter = asyncio.get_running_loop().create_task(pool.acquire("b", timeout=1))
    await _until(lambda: pool.stats().waiting == 1, "b queued")
    assert pool.release_nowait(pooled)  # handed to b, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert conn.checkins == 2
    assert pool.stats().idle == 1 and pool.stats().in_use == 0


# -- background tasks ------------------------------------------------------------------


async def test_background_tasks_are_named_after_their_job(make_pool: PoolFactory) -> None:
    """What asyncio.all_tasks() (a debugger, aiomonitor) shows while a connect runs."""
    pool, driver = await make_pool(wait=False, max_size=1)
    driver.gate = asyncio.Event()
    waiter = asyncio.get_running_loop().create_task(pool.acquire("w", timeout=5))
    await _until(lambda: len(driver.attempts) == 1, "a connect started")
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert {"AddConnection", "MaintenanceTask"} <= names
    driver.gate.set()
    assert pool.release_nowait(await waiter)


async def test_a_failed_background_task_is_logged_with_its_name(make_pool: PoolFactory) -> None:
    pool, driver = await make_pool(max_size=1)
    driver.opened[0].close_fails = True
    with captured_logs() as records:
        pool.expire_connections()  # the idle connection is closed politely: that fails
        await pool.aclose()  # waits for every background task
    failed = [r for r in records if r["event"] == "background_task_failed"]
    assert [(r["task"], r["error"]) for r in failed] == [
        ("CloseConnection", "OSError: the goodbye got lost")
    ]


# -- connecting ------------------------------------------------------------------------


async def test_permanent_connect_error_fails_waiters_at_once(make_pool: PoolFactory) -> None:
    """A wrong password does not go away by waiting: every waiter fails now, with the
    cause, not at its 30 s deadline."""
    pool, driver = await make_pool(wait=False, max_size=2, reconnect_initial_delay=0.01)
    driver.fail_with = lambda: PermanentError("password authentication failed")
    loop = asyncio.get_running_loop()
    with anyio.fail_after(1):
        results = await asyncio.gather(
            *(pool.acquire(f"c{i}", timeout=30) for i in range(3)), return_exceptions=True
        )
    for result in results:
        assert isinstance(result, PoolUnavailable), result
        assert "password authentication failed" in str(result)
    assert pool.stats().waiting == 0
    assert loop.time() - driver.attempts[0] < 1


async def test_transient_connect_errors_back_off_then_recover(make_pool: PoolFactory) -> None:
    """Failed connects are retried with exponentially growing delays (capped), and the
    waiter is served once the server answers again."""
    pool, driver = await make_pool(
        wait=False, max_size=1, reconnect_initial_delay=0.004, reconnect_max_delay=0.02
    )
    driver.fail_with = lambda: ConnectionRefusedError("refused")
    waiter = asyncio.get_running_loop().create_task(pool.acquire("w", timeout=5))
    await _until(lambda: len(driver.attempts) >= 5, "five connect attempts")
    gaps = [b - a for a, b in zip(driver.attempts, driver.attempts[1:], strict=False)][:4]
    # 4, 8, 16, 20 ms (jitter 10 %): each at least the last one, capped at the max.
    assert gaps[0] >= 0.004 * 0.9
    assert gaps[1] >= 0.008 * 0.9
    assert gaps[2] >= 0.016 * 0.9
    assert all(gap <= 0.02 * 1.1 + 0.05 for gap in gaps)
    assert pool.stats().last_error is not None
    driver.fail_with = None
    with anyio.fail_after(1):
        pooled = await waiter
    assert pool.stats().last_error is None
    assert pool.release_nowait(pooled)


class ServerFull(Exception):
    """A server at max_connections, as it reports it (SQLSTATE too_many_connections)."""

    sqlstate = "53300"


async def test_an_outage_is_logged_at_its_start_on_a_new_reason_then_at_intervals(
    make_pool: PoolFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not one line per attempt: connect_failed at the outage's start, at most every
    interval after that (10 s; 0.2 s here), at once when the reason changes; then one
    connect_recovered with the outage's failures and length."""
    every = 0.2
    monkeypatch.setattr("connman.outage.LOG_EVERY", every)
    pool, driver = await make_pool(
        max_size=1, min_size=1, reconnect_initial_delay=0.005, reconnect_max_delay=0.01
    )
    loop = asyncio.get_running_loop()
    with captured_logs() as records:
        driver.fail_with = lambda: ConnectionRefusedError(111, "refused")
        pool.expire_connections()  # the pool reconnects at once, into the outage
        with anyio.fail_after(5):
            while len(driver.attempts) < 2 or loop.time() - driver.attempts[1] < 2.5 * every:
                await asyncio.sleep(0.01)
        refusing = loop.time() - driver.attempts[1]  # how long connects were refused
        driver.fail_with = lambda: ServerFull("sorry, too many clients already")
        with anyio.fail_after(5):
            while sum(isinstance(e, ServerFull) for e in driver.raised) < 3:
                await asyncio.sleep(0.01)
        driver.fail_with = None
        with anyio.fail_after(5):
            while pool.stats().last_error is not None:
                await asyncio.sleep(0.01)
    failed = [r for r in records if r["event"] == "connect_failed"]
    refused = sum(isinstance(e, ConnectionRefusedError) for e in driver.raised)
    assert refused >= 10  # many attempts...
    unreachable = [r for r in failed if r["reason"] == "unreachable"]
    # ...few lines: t=0, 0.2, 0.4 (0.5 s or a little more, on a busy machine)
    assert 2 <= len(unreachable) <= 2 + refusing / every, unreachable
    assert unreachable[0]["failures"] == 1 and unreachable[0]["outage_seconds"] < every
    gaps = [b["outage_seconds"] - a["outage_seconds"] for a, b in itertools.pairwise(unreachable)]
    assert all(gap >= every - 0.001 for gap in gaps), gaps  # (rounded to the ms)
    full = [r for r in failed if r["reason"] == "too_many_clients"]
    assert full[0]["failures"] == refused + 1  # the first attempt with the new reason
    assert "too many clients" in full[0]["error"]
    (recovered,) = [r for r in records if r["event"] == "connect_recovered"]
    assert recovered["failures"] == len(driver.raised)
    assert recovered["outage_seconds"] >= 2.5 * every - 0.01
    assert "too many clients" in recovered["after_error"]


# -- closing ---------------------------------------------------------------------------


async def test_aclose_fails_waiters_waits_for_leases_then_terminates(
    make_pool: PoolFactory,
) -> None:
    """aclose(): waiters fail with PoolClosed at once, idle connections are closed
    politely, a lease returned within the timeout is closed politely, one never
    returned is terminated; acquiring afterwards raises PoolClosed."""
    pool, driver = await make_pool(max_size=3, consumer_limits={"busy": 1})
    returned = await pool.acquire("busy", timeout=1)
    kept = await pool.acquire("keeper", timeout=1)
    parked = await pool.acquire("parker", timeout=1)
    assert pool.release_nowait(parked)
    # An idle connection, and still a waiter: its consumer is at its limit.
    waiter = asyncio.get_running_loop().create_task(pool.acquire("busy", timeout=5))
    await _until(lambda: pool.stats().waiting == 1, "the waiter to queue")
    closing = asyncio.get_running_loop().create_task(pool.aclose(timeout=0.05))
    with anyio.fail_after(1):
        with pytest.raises(PoolClosed):
            await waiter
        await pool.release(returned)
        await closing
    with pytest.raises(PoolClosed):
        await pool.acquire("after", timeout=1)
    assert returned.conn.is_closed() and not returned.conn.terminated  # type: ignore[attr-defined]
    assert parked.conn.is_closed() and not parked.conn.terminated  # type: ignore[attr-defined]
    assert kept.conn.terminated  # type: ignore[attr-defined]
    assert len(driver.opened) == 3
    stats = pool.stats()
    assert stats.closed
    assert (stats.in_use, stats.idle, stats.waiting) == (1, 0, 0), stats  # `kept` is out
    assert pool.release_nowait(kept)  # its holder comes back late: nothing to clean
    assert pool.stats().in_use == 0
    assert pool.stats().counters["connections_closed"] == 3
