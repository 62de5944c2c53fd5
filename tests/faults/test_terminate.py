"""Backends killed under the pool (pg_terminate_backend from an admin connection), the
way a DBA, a failover or an idle-session reaper does it."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import anyio
import asyncpg
import pytest

from connman import ConnectionLost
from tests.support.faultkit import (
    admin_connect,
    app_name,
    backends,
    counters,
    is_another_operation,
    is_connection_error,
    outcome,
    wait_until,
)

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE application_name = $1 AND backend_type = 'client backend'"
)


async def _open(manager, n: int) -> list:
    """Make the pool hold ``n`` connections (idle once this returns); their raw
    asyncpg connections, to watch (never to use)."""
    leases = [await manager.acquire("warmup", timeout=5) for _ in range(n)]
    raws = [lease.connection for lease in leases]
    for lease in leases:
        await lease.release()
    return raws


async def test_all_backends_killed_next_leases_succeed(postgres_database, make_manager):
    """Every idle backend of the pool is terminated: the next 20 sequential and 20
    concurrent leases all succeed, and the pool counts what it lost."""
    app = app_name("killed")
    manager = await make_manager(postgres_database, application_name=app, min_size=2, max_size=8)
    raws = await _open(manager, 8)
    admin = await admin_connect(postgres_database)
    try:
        assert await backends(admin, app) == 8
        assert await admin.fetchval(TERMINATE, app) == 8
        await wait_until(
            lambda: _none_left(admin, app), timeout=10, what="terminated backends to go"
        )
        # pg_stat_activity forgets a backend before it closes its socket; wait for the
        # client to see it too (the FATAL-read-but-no-EOF window is covered by
        # test_lease_never_gets_connection_server_said_goodbye_to below).
        await wait_until(
            lambda: all(raw.is_closed() for raw in raws), timeout=10, what="client-side close"
        )

        with anyio.fail_after(20):
            for i in range(20):
                async with manager.lease("sequential", timeout=5) as lease:
                    assert await lease.connection.fetchval("SELECT $1::int", i) == i

            async def one(i: int) -> int:
                async with manager.lease(f"concurrent{i % 3}", timeout=5) as lease:
                    return int(await lease.connection.fetchval("SELECT $1::int", i))

            assert await asyncio.gather(*(one(i) for i in range(20))) == list(range(20))

        c = counters(manager)
        assert c["connections_lost"] >= 8, c
        stats = manager.stats()[0]
        assert stats.in_use == 0
        assert stats.waiting == 0
        assert 1 <= await backends(admin, app) <= 8
    finally:
        await admin.close()


async def _none_left(admin, app: str) -> bool:
    return await backends(admin, app) == 0


async def test_backends_killed_while_leased(postgres_database, make_manager):
    """Backends killed under leases in use: each holder gets a connection error (not a
    hang, not "another operation is in progress"), its release returns at once, and the
    pool serves again."""
    app = app_name("killed_leased")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=4)
    admin = await admin_connect(postgres_database)
    try:
        leases = [await manager.acquire(f"holder{i}", timeout=5) for i in range(4)]
        assert await admin.fetchval(TERMINATE, app) == 4
        await wait_until(lambda: _none_left(admin, app), timeout=10, what="backends to go")
        # A holder using its connection between asyncpg reading the server's FATAL and
        # reading the EOF gets asyncpg's own "another operation (2) is in progress":
        # that race is asyncpg's, out of the pool's hands while the lease is held (at
        # lease time it is the pool's: test_lease_never_gets_connection_server_said_...).
        # So wait until the client side has seen the close.
        await wait_until(
            lambda: all(lease.connection.is_closed() for lease in leases),
            timeout=10,
            what="the client to see the connections close",
        )
        with anyio.fail_after(10):
            for lease in leases:
                error = await outcome(lease.connection.fetchval("SELECT 1"))
                assert is_connection_error(error), repr(error)
                await lease.release(failed=True)
            assert manager.stats()[0].in_use == 0
            for i in range(10):
                async with manager.lease("after", timeout=5) as lease:
                    assert await lease.connection.fetchval("SELECT $1::int", i) == i
        assert counters(manager)["connections_lost"] >= 4
    finally:
        await admin.close()


def _peek(sock: socket.socket) -> bytes | None:
    """What the kernel holds for this socket, without consuming it (None: nothing)."""
    try:
        return sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    except ConnectionError:
        return b""


async def test_lease_never_gets_connection_server_said_goodbye_to(postgres_database, make_manager):
    """The race behind "another operation is in progress" during a server restart,
    made deterministic.

    When a backend is terminated, the server sends ``FATAL 57P01`` and closes the
    socket. asyncpg reads the FATAL in one loop iteration (the idle protocol does not
    expect it and moves to its error-consume state) and the EOF in a later one; only
    then is the connection closed. A lease taken in between gets a connection whose
    every query fails with ``InternalClientError: cannot switch to state 11; another
    operation (2) is in progress``. Under a restart with 8 busy tasks this happens a
    few times a second (test_outage.test_restart_mid_load_recovers_by_itself).

    Here the window is held open: reading is paused on the client socket exactly when
    the FATAL has been consumed and the EOF is pending in the kernel. The pool can see
    the pending EOF without a round trip (a non-blocking MSG_PEEK returns b"").
    """
    app = app_name("goodbye")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=1)
    async with manager.lease("first") as lease:
        raw = lease.connection
        pid = raw.get_server_pid()
    transport = raw._transport  # asyncpg's asyncio transport for this connection
    sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    admin = await admin_connect(postgres_database)
    try:
        transport.pause_reading()
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await wait_until(lambda: _none_left(admin, app), timeout=10, what="the backend to go")
        assert _peek(sock)[:1] == b"E"  # the FATAL, then the EOF, wait in the kernel
        # Let the loop read once: the FATAL is consumed, the EOF is left.
        transport.resume_reading()
        with anyio.fail_after(5):
            while _peek(sock) != b"":
                await asyncio.sleep(0)
        transport.pause_reading()
        assert not raw.is_closed()

        async def lease_and_query() -> int:
            async with manager.lease("second", timeout=5) as lease:
                return int(await lease.connection.fetchval("SELECT 1"))

        result = await outcome(lease_and_query())
        assert not is_another_operation(result), f"the lease got a dying connection: {result!r}"
        # Best: a working connection; acceptable: a connection error.
        assert result == 1 or is_connection_error(result), repr(result)
    finally:
        transport.resume_reading()
        sock.close()
        await admin.close()


async def _read_goodbye_between_operations(raw, sock, admin, app: str) -> None:
    """Terminate ``raw``'s backend and let the client read the FATAL, not the EOF (held
    in the kernel: reading is paused on return), while no operation is in progress."""
    transport = raw._transport
    transport.pause_reading()
    await admin.fetchval("SELECT pg_terminate_backend($1)", raw.get_server_pid())
    await wait_until(lambda: _none_left(admin, app), timeout=10, what="the backend to go")
    assert _peek(sock)[:1] == b"E"
    transport.resume_reading()
    with anyio.fail_after(5):
        while _peek(sock) != b"":
            await asyncio.sleep(0)
    transport.pause_reading()
    assert not raw.is_closed()  # asyncpg does not know yet


def _let_go(raw, sock) -> None:
    """Undo :func:`_read_goodbye_between_operations`' hold on the socket."""
    if sock is None:
        return
    if not raw.is_closed():
        raw._transport.resume_reading()
    sock.close()


async def test_goodbye_read_during_a_lease_never_reaches_the_next_lease(
    postgres_database, make_manager
):
    """The path of issue 10.6: the server's FATAL is read while a lease holds the
    connection between two operations, and the lease ends without touching it again
    (the EOF still pending). The release must not park that connection as clean: the
    next lease (max_size=1) gets a working connection, never "another operation is in
    progress"."""
    app = app_name("goodbye_leased")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=1)
    admin = await admin_connect(postgres_database)
    sock = None
    try:
        async with manager.lease("first") as lease:
            raw = lease.connection
            assert await raw.fetchval("SELECT 1") == 1
            sock = socket.socket(fileno=os.dup(raw._transport.get_extra_info("socket").fileno()))
            await _read_goodbye_between_operations(raw, sock, admin, app)

        async def lease_and_query() -> int:
            async with manager.lease("second", timeout=5) as lease:
                return int(await lease.connection.fetchval("SELECT 1"))

        result = await outcome(lease_and_query())
        assert not is_another_operation(result), f"the lease got a dying connection: {result!r}"
        assert result == 1, repr(result)
        assert counters(manager)["connections_lost"] == 1
        assert manager.stats()[0].in_use == 0
    finally:
        if sock is not None:
            raw._transport.resume_reading()
            sock.close()
        await admin.close()


async def test_driver_internal_error_reaches_the_holder_as_a_lost_connection(
    postgres_database, make_manager
):
    """The holder itself uses the connection after the FATAL was read between two of
    its operations: asyncpg raises InternalClientError ("cannot switch to state ...").
    The caller sees connman's ConnectionLost (the driver's error as its cause), the
    connection is dropped, and the next lease works."""
    app = app_name("internal")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=1)
    admin = await admin_connect(postgres_database)
    sock = None
    try:
        with pytest.raises(ConnectionLost) as caught:
            async with manager.lease("holder") as lease:
                raw = lease.connection
                assert await raw.fetchval("SELECT 1") == 1
                sock = socket.socket(
                    fileno=os.dup(raw._transport.get_extra_info("socket").fileno())
                )
                await _read_goodbye_between_operations(raw, sock, admin, app)
                await raw.fetchval("SELECT $1::int", 2)
        assert isinstance(caught.value.__cause__, asyncpg.InternalClientError)
        assert isinstance(caught.value, ConnectionError)  # what retry code catches
        assert raw.is_closed()
        assert counters(manager)["connections_lost"] == 1
        async with manager.lease("next", timeout=5) as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1
    finally:
        _let_go(raw if sock is not None else None, sock)
        await admin.close()


TERMINATIONS = 1000


async def test_a_thousand_terminations_under_load(postgres_database, make_manager, record_property):
    """16 tasks on max_size=4 run short queries, transactions and pg_sleep, some
    cancelled at random, while an admin connection terminates one of the pool's
    backends at a random moment, 1,000 times. Callers see only connection errors
    (never asyncpg's InternalClientError or "another operation is in progress"), and
    nothing is left in use at the end."""
    app = app_name("thousand")
    # sslmode=disable (the throwaway server has no TLS anyway): with asyncpg's default
    # "prefer", a CancelRequest connection that asyncpg itself cancels while opening
    # it (its connection terminated meanwhile) leaves an orphaned SSL-negotiation
    # future behind, logged as "Future exception was never retrieved": asyncpg's
    # noise, not an error any caller sees, and not what this test is about.
    manager = await make_manager(
        f"{postgres_database}?sslmode=disable",
        application_name=app,
        min_size=4,
        max_size=4,
        acquire_timeout=20,
        reconnect_initial_delay=0.005,
        reconnect_max_delay=0.05,
    )
    async with manager.lease("setup") as lease:
        await lease.connection.execute("CREATE TABLE t (id int)")
    rng = random.Random(106)
    internal: list[BaseException] = []
    unexpected: list[BaseException] = []
    done = {"ok": 0, "lost": 0, "of which ConnectionLost": 0, "cancelled": 0}
    stop = asyncio.Event()

    async def work(conn, w: int) -> None:
        kind = rng.random()
        if kind < 0.4:
            assert await conn.fetchval("SELECT $1::int", w) == w
        elif kind < 0.7:
            await conn.execute("SELECT pg_sleep(0.002)")
        else:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES ($1)", w)
                await conn.fetchval("SELECT count(*) FROM t WHERE id = $1", w)

    async def worker(w: int) -> None:
        while not stop.is_set():
            try:
                with anyio.move_on_after(rng.choice((0.001, 0.005, 10, 10, 10))) as scope:
                    async with manager.lease(f"worker{w % 4}") as lease:
                        await work(lease.connection, w)
                done["cancelled" if scope.cancelled_caught else "ok"] += 1
            except Exception as exc:
                if is_another_operation(exc) or isinstance(exc, asyncpg.InternalClientError):
                    internal.append(exc)
                elif is_connection_error(exc):
                    done["lost"] += 1
                    done["of which ConnectionLost"] += isinstance(exc, ConnectionLost)
                else:
                    unexpected.append(exc)

    admin = await admin_connect(postgres_database)
    terminated = 0
    try:
        with anyio.fail_after(90):
            workers = [asyncio.get_running_loop().create_task(worker(w)) for w in range(16)]
            while terminated < TERMINATIONS:
                await asyncio.sleep(rng.uniform(0, 0.02))
                terminated += bool(
                    await admin.fetchval(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = $1 AND backend_type = 'client backend' "
                        "ORDER BY random() LIMIT 1",
                        app,
                    )
                )
            stop.set()
            await asyncio.gather(*workers)
    finally:
        stop.set()
        await admin.close()

    record_property("outcomes", done)
    print(f"\n{TERMINATIONS} terminations: {done}")
    # Errors first: a failure names its cause.
    assert not internal, f"{len(internal)} driver-internal errors reached callers: {internal[:3]!r}"
    assert not unexpected, unexpected[:5]
    await wait_until(lambda: manager.stats()[0].in_use == 0, timeout=5, what="nothing left in use")
    assert done["ok"] > TERMINATIONS, done
    assert done["lost"] > 0, done
    assert counters(manager)["connections_lost"] >= TERMINATIONS // 2
    async with manager.lease("after", timeout=5) as lease:
        assert await lease.connection.fetchval("SELECT 1") == 1


async def test_driver_internal_error_reaches_an_engine_user_as_a_lost_connection(
    postgres_database, make_manager
):
    """The same through the SQLAlchemy engine, whose errors never pass a lease's
    ``async with``: the caller sees ConnectionLost (SQLAlchemy's and asyncpg's errors
    as its causes), never asyncpg's internal state, and the engine works afterwards."""
    from sqlalchemy import text

    from connman.adapters.sqlalchemy import create_async_engine

    app = app_name("internal_sa")
    manager = await make_manager(postgres_database, application_name=app, min_size=1, max_size=1)
    engine = create_async_engine(manager)
    admin = await admin_connect(postgres_database)
    sock = None
    try:
        with pytest.raises(ConnectionLost) as caught:
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1
                raw = (await conn.get_raw_connection()).driver_connection
                sock = socket.socket(
                    fileno=os.dup(raw._transport.get_extra_info("socket").fileno())
                )
                await _read_goodbye_between_operations(raw, sock, admin, app)
                await conn.execute(text("SELECT 2"))
        # SQLAlchemy chains it to its DBAPI adapter's error, itself from asyncpg's.
        assert isinstance(caught.value.__cause__.__cause__, asyncpg.InternalClientError)
        assert counters(manager)["connections_lost"] == 1
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 3"))).scalar() == 3
        assert manager.stats()[0].in_use == 0
    finally:
        _let_go(raw if sock is not None else None, sock)
        await admin.close()
        await engine.dispose()
