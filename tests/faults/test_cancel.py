"""Cancellation at every point of a lease: waiting, connecting, querying, releasing.

The pain points these guard against (pool-anchors.md): leaked connections after a
cancelled acquire or query, "another operation is in progress" on the next lease of a
connection whose query was cancelled, and transactions left open."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import anyio
import asyncpg
import pytest

from tests.support.faultkit import (
    PeakMonitor,
    admin_connect,
    app_name,
    backends,
    counters,
    outcome,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

MAX_SIZE = 10
CONSUMERS = ("sqlalchemy", "dgent", "brain")


async def _settled(manager) -> bool:
    stats = manager.stats()[0]
    return stats.in_use == 0 and stats.waiting == 0 and stats.connecting == 0


async def _check_every_connection(manager, url: str, app: str) -> None:
    """Lease max_size connections at once (so every pooled connection is seen) and
    check each is idle, outside a transaction, with default session state, and usable."""
    leases = [await manager.acquire(f"check{i}", timeout=10) for i in range(MAX_SIZE)]
    try:
        for i, lease in enumerate(leases):
            conn = lease.connection
            assert not conn.is_in_transaction()
            # A server-side check: SAVEPOINT fails outside a transaction block.
            with pytest.raises(asyncpg.NoActiveSQLTransactionError):
                await conn.execute("SAVEPOINT probe")
            assert await conn.fetchval("SHOW TimeZone") == await conn.fetchval(
                "SELECT reset_val FROM pg_settings WHERE name = 'TimeZone'"
            )
            assert await conn.fetchval("SELECT $1::int", i) == i
    finally:
        for lease in leases:
            await lease.release()
    admin = await admin_connect(url)
    try:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state <> 'idle'",
            app,
        )
        assert left == 0, "a backend of ours is not idle (open transaction or running query)"
    finally:
        await admin.close()


async def test_two_thousand_cancellations(postgres_database, make_manager):
    """2,000 tasks on max_size=10, three consumers, each cancelled at a random point
    (or at a chosen one: mid-query, mid-release). Afterwards nothing is in use or
    waiting, no connection leaked, the server never saw more than max_size of ours,
    and every connection is clean and usable."""
    app = app_name("storm")
    manager = await make_manager(
        postgres_database,
        application_name=app,
        min_size=2,
        max_size=MAX_SIZE,
        acquire_timeout=30,
        # Short lifetime: connections retire and are reopened during the storm, so
        # waiters are also cancelled while the pool is connecting for them.
        max_lifetime=0.15,
        health_check_after=0.0,  # every lease pings first: cancelled mid-ping too
        reset_timeout=5,
    )
    async with manager.lease("setup") as lease:
        await lease.connection.execute("CREATE TABLE t (id int)")
    rng = random.Random(20240611)
    loop = asyncio.get_running_loop()
    hit: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    unexpected: list[BaseException] = []

    async def victim(i: int, plan: str) -> None:
        phase = "waiting"
        try:
            async with manager.lease(CONSUMERS[i % 3]) as lease:
                conn = lease.connection
                phase = "query"
                if plan == "cancel_mid_query":
                    loop.call_soon(task_of[i].cancel)  # fires once the query is on the wire
                    await conn.fetchval("SELECT pg_sleep(5)")
                elif plan in ("tx", "cancel_mid_release"):
                    await conn.execute("SET TimeZone = 'Asia/Tokyo'")  # session state
                    tx = conn.transaction()
                    await tx.start()  # never committed: the release must roll back
                    await conn.execute("INSERT INTO t VALUES ($1)", i)
                    await conn.fetchval("SELECT pg_sleep(0.002)")
                    if plan == "cancel_mid_release":
                        task_of[i].cancel()  # lands on the release's first await
                else:
                    await conn.fetchval("SELECT pg_sleep($1)", rng.choice((0, 0.001, 0.003)))
                phase = "releasing"
            phase = "done"
        except asyncio.CancelledError:
            hit[phase] += 1
            raise
        except Exception as exc:
            # Any error is a defect: "another operation is in progress" (a connection
            # reused mid-protocol), QueryCanceledError (a stray cancel from an earlier
            # holder hitting this one's query), an AcquireTimeout (a leaked slot)...
            unexpected.append(exc)

    task_of: dict[int, asyncio.Task[None]] = {}
    plans = ("random", "random", "random", "tx", "cancel_mid_query", "cancel_mid_release")
    async with PeakMonitor(postgres_database, app) as monitor:
        with anyio.fail_after(60):
            for batch in range(20):
                for i in range(batch * 100, batch * 100 + 100):
                    plan = rng.choice(plans)
                    task = task_of[i] = loop.create_task(victim(i, plan))
                    # "random" and "tx": 1 in 5 left alone, the rest cancelled at a
                    # random moment.
                    if plan in ("random", "tx") and rng.random() < 0.8:
                        loop.call_later(rng.uniform(0, 0.05), task.cancel)
                await asyncio.sleep(0)
            results = await asyncio.gather(*task_of.values(), return_exceptions=True)
            for result in results:
                outcomes["cancelled" if isinstance(result, asyncio.CancelledError) else "ok"] += 1
            await wait_until(lambda: _settled(manager), timeout=15, what="the pool to settle")

    assert not unexpected, unexpected[:5]
    # Every kind of cancellation happened.
    assert hit["waiting"] > 50, hit
    assert hit["query"] > 50, hit
    assert hit["releasing"] > 50, hit
    assert outcomes["ok"] > 100, outcomes
    stats = manager.stats()[0]
    assert stats.in_use == 0
    assert stats.waiting == 0
    assert stats.consumers == {}
    assert stats.size <= MAX_SIZE
    c = counters(manager)
    assert c["connections_opened"] - c["connections_closed"] == stats.size
    assert c["connections_opened"] > MAX_SIZE  # reconnects happened during the storm
    assert c["cancelled"] > 0
    assert monitor.samples > 20
    assert monitor.peak <= MAX_SIZE, f"the server saw {monitor.peak} connections of ours"

    admin = await admin_connect(postgres_database)
    try:
        # No leak on the server side either: what the pool holds, and nothing more.
        async def matches() -> bool:
            return await backends(admin, app) == manager.stats()[0].size

        await wait_until(matches, timeout=10, what="server backends == pool size")
        # Every INSERT ran in a transaction that was never committed: all rolled back.
        assert await admin.fetchval("SELECT count(*) FROM t") == 0
    finally:
        await admin.close()
    with anyio.fail_after(30):
        await _check_every_connection(manager, postgres_database, app)


@pytest.mark.parametrize("how", ["task_cancel", "cancel_scope", "asyncio_timeout"])
async def test_cancel_mid_query_in_transaction(postgres_database, make_manager, how):
    """A lease's task is cancelled while a query runs inside a transaction. The next
    lease of that connection (max_size=1: the same one) has no open transaction, sees
    none of the cancelled work, and works."""
    app = app_name("midtx")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=1)
    async with manager.lease("setup") as lease:
        await lease.connection.execute("CREATE TABLE t (id int)")
        pid = lease.connection.get_server_pid()
    admin = await admin_connect(postgres_database)

    async def running() -> bool:
        return bool(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
                "AND query LIKE '%pg_sleep(30)%'",
                pid,
            )
        )

    async def doomed() -> None:
        async with manager.lease("doomed") as lease:
            conn = lease.connection
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
                await conn.execute("SELECT pg_sleep(30)")

    try:
        with anyio.fail_after(20):
            if how == "task_cancel":
                task = asyncio.get_running_loop().create_task(doomed())
                await wait_until(running, timeout=5, what="the query to run")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "cancel_scope":
                async with anyio.create_task_group() as tg:

                    async def run_then_cancel(scope: anyio.CancelScope) -> None:
                        await wait_until(running, timeout=5, what="the query to run")
                        scope.cancel()

                    with anyio.CancelScope() as scope:
                        tg.start_soon(run_then_cancel, scope)
                        await doomed()
                assert scope.cancelled_caught
            else:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(None) as deadline:

                        async def expire_once_running() -> None:
                            await wait_until(running, timeout=5, what="the query to run")
                            deadline.reschedule(asyncio.get_running_loop().time())

                        watcher = asyncio.get_running_loop().create_task(expire_once_running())
                        await doomed()
                await watcher

            async with manager.lease("next", timeout=10) as lease:
                conn = lease.connection
                assert conn.get_server_pid() == pid  # the same connection
                assert not conn.is_in_transaction()
                with pytest.raises(asyncpg.NoActiveSQLTransactionError):
                    await conn.execute("SAVEPOINT probe")
                assert await conn.fetchval("SELECT count(*) FROM t") == 0
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (2)")
                assert await conn.fetchval("SELECT count(*) FROM t") == 1

        # The sleep was cancelled on the server, not left running for 30 s.
        assert not await running()
        assert await admin.fetchval("SELECT count(*) FROM t") == 1
        assert await backends(admin, app) == 1
    finally:
        await admin.close()
    c = counters(manager)
    assert c["connections_opened"] == 1, c  # cleaned, not thrown away
    assert manager.stats()[0].in_use == 0


async def _lease_and_query(manager, consumer: str, sql: str = "SELECT 1", *args) -> object:
    async with manager.lease(consumer, timeout=10) as lease:
        return await lease.connection.fetchval(sql, *args)


async def test_cancelled_waiter_newcomer_and_releases_in_one_step(postgres_database, make_manager):
    """The interleaving behind issue 10.3, built with the public API: two leases held on
    max_size=2 and one waiter queued; then, in one synchronous block, a newcomer task
    is created, the waiter is cancelled and both leases are released without awaiting.
    The newcomer is served, nothing raises, and nothing stays in use. (Before the
    fix: the newcomer failed with IndexError and its connection stayed in use for the
    life of the pool.)"""
    manager = await make_manager(
        postgres_database, application_name=app_name("handoff"), min_size=0, max_size=2
    )
    first = await manager.acquire("first", timeout=5)
    second = await manager.acquire("second", timeout=5)
    loop = asyncio.get_running_loop()
    waiter = loop.create_task(_lease_and_query(manager, "waiter"))
    await wait_until(lambda: manager.stats()[0].waiting == 1, timeout=5, what="the waiter")

    newcomer = loop.create_task(_lease_and_query(manager, "newcomer"))
    waiter.cancel()
    assert first.release_nowait()
    assert second.release_nowait()

    with anyio.fail_after(10):
        assert await outcome(newcomer) == 1
        with pytest.raises(asyncio.CancelledError):
            await waiter
    await wait_until(
        lambda: manager.stats()[0].in_use == 0, timeout=1, what="every connection back"
    )
    stats = manager.stats()[0]
    assert (stats.waiting, stats.consumers) == (0, {})
    # Both connections serve again, at once.
    assert await asyncio.gather(*(_lease_and_query(manager, f"c{i}") for i in range(2))) == [1, 1]


class LoopStalls:
    """Blocks the event loop for 0-10 ms every 0-20 ms (a gen-2 GC pass, a CPU hog in
    a callback), from a loop callback, while the block runs."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._handle: asyncio.TimerHandle | None = None
        self.count = 0

    def _stall(self) -> None:
        time.sleep(self._rng.uniform(0, 0.010))  # the fault itself: the loop blocked
        self.count += 1
        self._handle = asyncio.get_running_loop().call_later(
            self._rng.uniform(0, 0.020), self._stall
        )

    def __enter__(self) -> LoopStalls:
        self._handle = asyncio.get_running_loop().call_later(0, self._stall)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handle is not None
        self._handle.cancel()


STORMS = 50
STORM_TASKS = 400


async def test_cancellation_storms_with_loop_stalls_leave_nothing_in_use(
    postgres_database, make_manager, record_property
):
    """Issue 10.3's storm, 50 times: tasks leasing on max_size=10 (pg_sleep), each
    under anyio.move_on_after with a random deadline, while the loop stalls 0-10 ms
    every 0-20 ms. Every time: no task fails with anything but its own cancellation,
    and the pool is back to nothing in use within 1 s."""
    manager = await make_manager(
        postgres_database,
        application_name=app_name("stalls"),
        min_size=2,
        max_size=MAX_SIZE,
        acquire_timeout=30,
        # As in the storm above: connections retire and reopen during the storm, and
        # every lease takes the queued path and pings first (cancelled mid-ping too).
        max_lifetime=0.15,
        health_check_after=0.0,
    )
    rng = random.Random(20261204)
    loop = asyncio.get_running_loop()
    worst_settle = 0.0
    cancelled = 0

    async def victim(i: int, errors: list[BaseException]) -> None:
        nonlocal cancelled
        try:
            with anyio.move_on_after(rng.uniform(0, 0.03)) as scope:
                async with manager.lease(CONSUMERS[i % 3]) as lease:
                    await lease.connection.fetchval(
                        "SELECT pg_sleep($1)", rng.choice((0, 0.001, 0.005))
                    )
            cancelled += scope.cancelled_caught
        except Exception as exc:  # IndexError, AcquireTimeout, "another operation"...
            errors.append(exc)

    for storm in range(STORMS):
        errors: list[BaseException] = []
        with LoopStalls(rng), anyio.fail_after(30):
            # Arrivals go on all through the storm, in bursts: newcomers keep meeting
            # waiters that were just cancelled and connections just released.
            tasks: list[asyncio.Task[None]] = []
            while len(tasks) < STORM_TASKS:
                for _ in range(rng.randint(1, 12)):
                    tasks.append(loop.create_task(victim(len(tasks), errors)))
                await asyncio.sleep(rng.choice((0, 0, 0.001, 0.003)))
            await asyncio.gather(*tasks)
        # Errors first: a failure names its cause, not only its symptom.
        assert not errors, f"storm {storm}: {errors[:5]!r}"
        settled = loop.time()
        stats = await wait_until(
            lambda: (s := manager.stats()[0]).in_use == 0 and s.waiting == 0 and s,
            timeout=1,
            what=f"nothing in use after storm {storm}",
        )
        worst_settle = max(worst_settle, loop.time() - settled)
        assert stats.consumers == {}
        assert stats.size <= MAX_SIZE
    record_property("worst_settle_seconds", round(worst_settle, 4))
    print(f"\n{STORMS} storms x {STORM_TASKS} tasks: worst settle {worst_settle * 1000:.1f} ms")
    assert cancelled > STORMS * STORM_TASKS // 4  # the deadlines did cut leases short
    async with manager.lease("after") as lease:
        assert await lease.connection.fetchval("SELECT 1") == 1
