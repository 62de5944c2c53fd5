"""The portable tier: SQLite through the same pool, under concurrent writers."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading

import anyio
import pytest

from connman import ConnectionManager, PoolConfig
from connman.drivers.aiosqlite import AiosqliteDriver
from connman.urls import parse_url


def manager_for(url: str, **config: object) -> ConnectionManager:
    return ConnectionManager(url, config=PoolConfig(**config), degrade=False)  # type: ignore[arg-type]


async def test_every_connection_has_the_documented_pragmas(sqlite_url: str) -> None:
    async with manager_for(sqlite_url, min_size=3) as manager:
        for _ in range(3):
            async with manager.lease("t") as lease:
                conn = lease.connection
                values = []
                for pragma in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
                    cursor = await conn.execute(f"PRAGMA {pragma}")
                    values.append((await cursor.fetchone())[0])
                assert values == ["wal", 1, 1, 30000]
                assert lease.dialect == "sqlite"


async def test_32_writers_across_3_consumers_never_see_database_is_locked(
    sqlite_url: str,
) -> None:
    errors: list[BaseException] = []
    rows_each = 25
    async with manager_for(sqlite_url, max_size=10) as manager:
        async with manager.lease("setup") as lease:
            await lease.connection.execute(
                "CREATE TABLE w (writer INTEGER, n INTEGER, PRIMARY KEY (writer, n))"
            )
            await lease.connection.commit()

        async def writer(i: int) -> None:
            consumer = ("sqlalchemy", "dgent", "brain")[i % 3]
            for n in range(rows_each):
                try:
                    async with manager.lease(consumer) as lease:
                        conn = lease.connection
                        # Read, then write in one transaction: the pattern that fails
                        # with a deferred BEGIN.
                        cursor = await conn.execute("SELECT count(*) FROM w WHERE writer = ?", (i,))
                        assert (await cursor.fetchone())[0] == n
                        await conn.execute("INSERT INTO w VALUES (?, ?)", (i, n))
                        await conn.execute("UPDATE w SET n = n WHERE writer = ?", (i,))
                        await conn.commit()
                except Exception as exc:
                    errors.append(exc)

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(writer, i)
        async with manager.lease("check") as lease:
            cursor = await lease.connection.execute("SELECT count(*) FROM w")
            total = (await cursor.fetchone())[0]
        [stats] = manager.stats()
    assert errors == []
    assert total == 32 * rows_each
    assert stats.size <= 10


async def test_explicit_begin_immediate_transactions_serialise(sqlite_url: str) -> None:
    async with manager_for(sqlite_url, max_size=8) as manager:
        async with manager.lease("setup") as lease:
            await lease.connection.execute("CREATE TABLE c (v INTEGER)")
            await lease.connection.execute("INSERT INTO c VALUES (0)")
            await lease.connection.commit()

        async def increment() -> None:
            async with manager.lease("dgent") as lease:
                conn = lease.connection
                await conn.execute("BEGIN IMMEDIATE")
                cursor = await conn.execute("SELECT v FROM c")
                value = (await cursor.fetchone())[0]
                await conn.execute("UPDATE c SET v = ?", (value + 1,))
                await conn.commit()

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(increment)
        async with manager.lease("check") as lease:
            cursor = await lease.connection.execute("SELECT v FROM c")
            assert (await cursor.fetchone())[0] == 40


async def test_uncommitted_work_is_rolled_back_on_release(sqlite_url: str) -> None:
    async with manager_for(sqlite_url, max_size=1) as manager:
        async with manager.lease("a") as lease:
            await lease.connection.execute("CREATE TABLE t (x)")
            await lease.connection.commit()
            await lease.connection.execute("INSERT INTO t VALUES (1)")  # never committed
        async with manager.lease("b") as lease:
            assert not lease.connection.in_transaction
            cursor = await lease.connection.execute("SELECT count(*) FROM t")
            assert (await cursor.fetchone())[0] == 0
        # The write lock went with the rollback: another process can write.
        path = sqlite_url.split(":///", 1)[1]
        other = sqlite3.connect(path, timeout=0.1)
        other.execute("INSERT INTO t VALUES (2)")
        other.commit()
        other.close()


async def test_memory_database_is_one_database_for_every_lease() -> None:
    async with manager_for("sqlite:///:memory:", max_size=4) as manager:
        a = await manager.acquire("a")
        b = await manager.acquire("b")
        await a.connection.execute("CREATE TABLE shared (x)")
        await a.connection.execute("INSERT INTO shared VALUES (42)")
        await a.connection.commit()
        cursor = await b.connection.execute("SELECT x FROM shared")
        assert await cursor.fetchall() == [(42,)]
        await a.release()
        await b.release()
    # A second manager's :memory: is a different, empty database.
    async with manager_for("sqlite://") as other, other.lease("c") as lease:
        cursor = await lease.connection.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'shared'"
        )
        assert (await cursor.fetchone())[0] == 0


async def test_memory_database_outlives_every_pool_connection() -> None:
    """min_size=0 and every connection closed (expired): the driver's anchor keeps
    the in-memory database, so the next lease reads what an earlier one wrote."""
    async with manager_for("sqlite:///:memory:", min_size=0, max_size=2) as manager:
        async with manager.lease("writer") as lease:
            raw = lease.connection
            await raw.execute("CREATE TABLE kept (x)")
            await raw.execute("INSERT INTO kept VALUES (7)")
            await raw.commit()
        await manager.expire_connections()
        with anyio.fail_after(5):
            while raw._connection is not None or manager.stats()[0].size:
                await asyncio.sleep(0.01)  # the close runs on the connection's thread
        async with manager.lease("reader") as lease:
            assert lease.connection is not raw
            cursor = await lease.connection.execute("SELECT x FROM kept")
            assert await cursor.fetchall() == [(7,)]


async def test_database_directory_is_created_private(tmp_path: object) -> None:
    target = os.path.join(str(tmp_path), "deep", "er", "membrane.db")
    async with manager_for(f"sqlite:///{target}") as manager, manager.lease("t") as lease:
        await lease.connection.execute("CREATE TABLE t (x)")
    for directory in (os.path.dirname(target), os.path.dirname(os.path.dirname(target))):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert os.path.exists(target)


async def test_unopenable_file_fails_fast_with_the_reason(tmp_path: object) -> None:
    from connman import PoolUnavailable

    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w") as f:
        f.write("not a directory")
    with pytest.raises(PoolUnavailable, match="unable to open database file"):
        with anyio.fail_after(5):
            await manager_for(f"sqlite:///{blocker}/membrane.db").start()


def test_a_failed_open_leaves_no_thread_behind_its_event_loop(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiosqlite stops the thread of a failed open without waiting for it; a caller
    whose event loop ends right after the failure must not leave that thread to die
    on "Event loop is closed" (it did in about 1 open in 8 here)."""
    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w") as f:
        f.write("not a directory")
    driver = AiosqliteDriver(parse_url(f"sqlite:///{blocker}/membrane.db"), PoolConfig())
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))

    async def open_once() -> None:
        with pytest.raises(sqlite3.OperationalError, match="unable to open"):
            await driver.connect()

    workers = {t for t in threading.enumerate() if "_connection_worker" in t.name}
    for _ in range(200):
        asyncio.run(open_once())  # the loop closes as soon as the open has failed
    for thread in threading.enumerate():
        if "_connection_worker" in thread.name and thread not in workers:
            thread.join(5)
    assert died == []


async def test_a_locked_database_is_waited_for_not_failed_at_once(tmp_path: object) -> None:
    """SQLITE_BUSY while connecting is transient: the waiter keeps its place and is
    served once the other process lets the database go."""
    from connman.pool import Pool

    path = os.path.join(str(tmp_path), "busy.db")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # journal_mode=WAL at connect now gets SQLITE_BUSY
    url = parse_url(f"sqlite:///{path}")
    config = PoolConfig(min_size=0, sqlite_busy_timeout=0.01, reconnect_initial_delay=0.01)
    pool = Pool(url, AiosqliteDriver(url, config), config)
    await pool.open(wait=False)
    try:
        waiter = asyncio.get_running_loop().create_task(pool.acquire("w", timeout=10))
        with anyio.fail_after(5):
            while pool.stats().counters["connect_errors"] < 2:
                await asyncio.sleep(0.01)
        assert "locked" in (pool.stats().last_error or "")
        assert not waiter.done()
        holder.close()
        with anyio.fail_after(5):
            pooled = await waiter
        assert pool.release_nowait(pooled)
    finally:
        holder.close()
        await pool.aclose()
