"""SQLAlchemy on connman: every test runs on a real PostgreSQL and on a SQLite file.

What a user of the engine would notice: one physical connection serves successive
checkouts (same backend), the dialect's per-connection setup runs once per physical
connection, dispose gives everything back, connman's max_size and consumer limits
hold under load, a failed transaction leaves nothing behind for the next consumer,
the ORM round-trips JSON and aware datetimes, Alembic migrates up and down.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import uuid
from argparse import Namespace
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import JSON, DateTime, Integer, String, event, exc, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

import connman
from connman import AcquireTimeout, ConfigError, ConnectionManager, ConnmanError, PoolConfig
from connman.adapters.sqlalchemy import PoolTimeout, create_async_engine
from connman.kgents.schema.types import AwareDateTime
from tests.support.helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = ROOT / "deploy" / "alembic" / "alembic.ini"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each dialect: a PostgreSQL database, a SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_database"))
    return str(request.getfixturevalue("sqlite_url"))


@asynccontextmanager
async def open_manager(url: str, **config: Any) -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager(url, config=PoolConfig(**config)) as manager:
        yield manager


def pool_stats(manager: ConnectionManager) -> connman.PoolStats:
    [stats] = manager.stats()
    return stats


async def backend_of(conn: AsyncConnection) -> object:
    """Which physical connection serves ``conn``: the server's backend pid on
    PostgreSQL, the driver connection object on SQLite (no pid in a file)."""
    if conn.dialect.name == "postgresql":
        return (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    raw = await conn.get_raw_connection()
    return _identity(raw.driver_connection)


async def lease_backend(lease: connman.Lease) -> object:
    if lease.dialect == "postgresql":
        return await lease.connection.fetchval("SELECT pg_backend_pid()")
    return _identity(lease.connection)


def _identity(connection: Any) -> str:
    """A tag that names one connection object for good (id() is reused once the
    object is freed, so a replaced connection could look like the old one)."""
    tag: str | None = getattr(connection, "_test_identity", None)
    if tag is None:
        tag = uuid.uuid4().hex
        connection._test_identity = tag
    return tag


def lease_in_transaction(lease: connman.Lease) -> bool:
    raw = lease.connection
    return bool(raw.is_in_transaction() if lease.dialect == "postgresql" else raw.in_transaction)


def count_connect_events(engine: AsyncEngine) -> list[object]:
    """Records each pool ``connect`` event: the event the dialect's on_connect
    (JSON codecs on asyncpg, SQL functions on SQLite) runs in."""
    seen: list[object] = []

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, record: Any) -> None:
        seen.append(dbapi_connection)

    return seen


def instrument_dialect_setup(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Counts, per driver connection, the calls of the dialect's own per-connection
    setup: the asyncpg dialect's JSON codec hook (which connman's engine turns into a
    no-op, see test_engine_returns_what_native_sqlalchemy_returns), the SQLite
    functions (regexp, floor)."""
    calls: Counter[int] = Counter()
    dialect = engine.sync_engine.dialect
    if dialect.name == "postgresql":
        original = dialect.setup_asyncpg_json_codec  # type: ignore[attr-defined]

        async def json_codec(conn: Any) -> None:
            calls[id(conn._connection)] += 1
            await original(conn)

        monkeypatch.setattr(dialect, "setup_asyncpg_json_codec", json_codec)
    else:
        from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection

        create_function = AsyncAdapt_aiosqlite_connection.create_function

        def counted(self: Any, *args: Any, **kw: Any) -> None:
            calls[id(self._connection)] += 1
            create_function(self, *args, **kw)

        monkeypatch.setattr(AsyncAdapt_aiosqlite_connection, "create_function", counted)
    return calls


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    doc: Mapped[dict[str, Any]] = mapped_column(JSON().with_variant(JSONB(), "postgresql"))
    tags: Mapped[list[str]] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(AwareDateTime)


class PlainStamp(Base):
    __tablename__ = "plain_stamps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


async def create_tables(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


# ====================================================================== one physical connection


async def test_successive_checkouts_reuse_one_physical_connection(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=4) as manager:
        engine = create_async_engine(manager)
        backends = []
        for _ in range(5):
            async with engine.connect() as conn:
                backends.append(await backend_of(conn))
        assert len(set(backends)) == 1
        counters = pool_stats(manager).counters
        assert counters["connections_opened"] == 1 and counters["acquired"] == 5
        # The same connection as any other consumer of connman would get.
        async with manager.lease("dgent") as lease:
            assert await lease_backend(lease) == backends[0]
        await engine.dispose()


async def test_dialect_setup_runs_once_per_physical_connection(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_manager(db_url, min_size=1, max_size=3) as manager:
        engine = create_async_engine(manager)
        connects = count_connect_events(engine)
        setups = instrument_dialect_setup(engine, monkeypatch)
        seen: set[object] = set()
        async with engine.connect() as conn:
            seen.add(await backend_of(conn))
        first = dict(setups)
        assert len(connects) == 1 and len(first) == 1 and next(iter(first.values())) >= 1
        for _ in range(4):  # three at a time: the pool grows to three connections
            conns = [await engine.connect() for _ in range(3)]
            for conn in conns:
                seen.add(await backend_of(conn))
            for conn in conns:
                await conn.close()
        for _ in range(10):
            async with engine.connect() as conn:
                seen.add(await backend_of(conn))
        opened = pool_stats(manager).counters["connections_opened"]
        assert len(seen) == opened == 3
        assert len(connects) == 3  # one connect event per physical connection
        assert len(setups) == 3 and set(setups.values()) == set(first.values())
        await engine.dispose()


async def test_dispose_gives_everything_back_and_the_manager_stays_usable(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=4) as manager:
        engine = create_async_engine(manager)
        connects = count_connect_events(engine)
        conns = [await engine.connect() for _ in range(3)]
        for conn in conns:
            await conn.execute(text("SELECT 1"))
        assert pool_stats(manager).consumers == {"sqlalchemy": 3}
        for conn in conns:
            await conn.close()
        await engine.dispose()
        stats = pool_stats(manager)
        assert stats.in_use == 0 and stats.consumers == {} and not stats.closed
        assert stats.size == 3  # still open, in connman, for everyone
        async with manager.lease("brain") as lease:
            assert lease.connection is not None
        # The engine works after dispose (a new SQLAlchemy pool, the same connections;
        # honest count: the new pool runs the dialect setup once per connection again).
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 41 + 1"))).scalar_one() == 42
            assert "consumer='sqlalchemy' checked out 1" in engine.pool.status()
        assert len(connects) == 4
        assert pool_stats(manager).counters["connections_opened"] == 3
        async with manager.lease("brain") as lease:  # the disposed pool's entry is gone
            slots = [k for k in lease.connection_state if type(k).__name__ == "_Slot"]
            assert len(slots) == 1
        await engine.dispose()
        assert pool_stats(manager).in_use == 0


# ====================================================================== limits


async def test_sixteen_sessions_never_exceed_max_size(db_url: str) -> None:
    max_size = 4
    async with open_manager(db_url, min_size=1, max_size=max_size) as manager:
        engine = create_async_engine(manager)
        await create_tables(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        peaks: list[int] = []
        server_peaks: list[int] = []
        postgres = engine.dialect.name == "postgresql"

        async def work(i: int) -> None:
            async with sessions() as session:
                for j in range(3):
                    session.add(
                        Note(
                            id=100 * i + j, slug=f"s{i}-{j}", doc={}, tags=[], at=datetime.now(UTC)
                        )
                    )
                    await session.flush()
                    peaks.append(pool_stats(manager).size)
                    if postgres:  # what the server itself counts
                        count = await session.scalar(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database()"
                            )
                        )
                        server_peaks.append(int(count or 0))
                await session.commit()

        await asyncio.gather(*(work(i) for i in range(16)))
        stats = pool_stats(manager)
        assert max(peaks) <= max_size and stats.counters["connections_opened"] <= max_size
        assert stats.counters["waited"] > 0  # the sessions did contend
        if postgres:
            assert max(server_peaks) <= max_size
        async with sessions() as session:
            assert await session.scalar(select(Note.id).order_by(Note.id.desc())) == 1502
            assert len((await session.scalars(select(Note.id))).all()) == 48
        await engine.dispose()
        assert pool_stats(manager).in_use == 0


async def test_consumer_limit_holds_while_sessions_wait(db_url: str) -> None:
    limits = {"sqlalchemy": 2}
    async with open_manager(db_url, min_size=1, max_size=4, consumer_limits=limits) as manager:
        engine = create_async_engine(manager)
        sessions = async_sessionmaker(engine)
        gate = asyncio.Event()
        held: list[int] = []

        async def work() -> None:
            async with sessions() as session:
                await session.execute(text("SELECT 1"))  # holds its connection from here
                held.append(pool_stats(manager).consumers["sqlalchemy"])
                await gate.wait()

        tasks = [asyncio.create_task(work()) for _ in range(6)]
        await wait_until(lambda: pool_stats(manager).waiting_by_consumer.get("sqlalchemy") == 4)
        stats = pool_stats(manager)
        assert stats.consumers == {"sqlalchemy": 2} and stats.consumer_limits == limits
        # Another consumer is not stuck behind the engine's queue.
        async with manager.lease("dgent", timeout=5) as lease:
            assert pool_stats(manager).consumers == {"sqlalchemy": 2, "dgent": 1}
            assert lease.active
        gate.set()
        await asyncio.gather(*tasks)
        assert len(held) == 6 and max(held) == 2
        await engine.dispose()


async def test_acquire_timeout_is_both_connman_and_sqlalchemy_error(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager, pool_timeout=0.1)
        async with manager.lease("brain"):
            with pytest.raises(PoolTimeout) as caught:
                await engine.connect()
        assert isinstance(caught.value, exc.TimeoutError)
        assert isinstance(caught.value, AcquireTimeout)
        assert "sqlalchemy" in str(caught.value) and "brain 1" in str(caught.value)
        async with engine.connect() as conn:  # and it recovers
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()


def test_pool_options_connman_owns_are_refused() -> None:
    manager = ConnectionManager("sqlite:///:memory:")
    for option in ("pool_size", "max_overflow", "poolclass", "pool_recycle", "async_creator"):
        with pytest.raises(ConfigError, match=option):
            create_async_engine(manager, **{option: 1})


# ====================================================================== transactions


async def test_failed_transaction_leaves_nothing_for_the_next_consumer(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager)
        await create_tables(engine)
        sessions = async_sessionmaker(engine)
        now = datetime.now(UTC)
        async with engine.connect() as conn:
            backend = await backend_of(conn)
        with pytest.raises(exc.IntegrityError):
            async with sessions() as session, session.begin():
                session.add(Note(id=1, slug="same", doc={}, tags=[], at=now))
                await session.flush()
                session.add(Note(id=2, slug="same", doc={}, tags=[], at=now))
                await session.flush()
        with pytest.raises(RuntimeError):
            async with sessions() as session:
                session.add(Note(id=3, slug="half-done", doc={}, tags=[], at=now))
                await session.flush()
                raise RuntimeError("application error mid-transaction")
        # Another consumer, on the same physical connection (max_size=1).
        async with manager.lease("dgent") as lease:
            assert await lease_backend(lease) == backend
            assert not lease_in_transaction(lease)
            if lease.dialect == "postgresql":
                assert await lease.connection.fetchval("SELECT count(*) FROM notes") == 0
            else:
                cursor = await lease.connection.execute("SELECT count(*) FROM notes")
                assert (await cursor.fetchone())[0] == 0
        assert pool_stats(manager).counters["returns_bad"] == 0
        await engine.dispose()


async def test_transaction_opened_below_sqlalchemy_is_rolled_back(db_url: str) -> None:
    """A transaction SQLAlchemy does not know of (opened on the driver connection)
    is still open at checkin: connman rolls it back before the next consumer, and the
    engine drops its adapter for that connection (its transaction state is stale)."""
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager)
        connects = count_connect_events(engine)
        await create_tables(engine)
        fairy: PoolProxiedConnection = await engine.raw_connection()
        driver = fairy.driver_connection
        assert driver is not None
        if engine.dialect.name == "postgresql":
            await driver.execute("BEGIN; INSERT INTO plain_stamps (id, at) VALUES (1, now())")
        else:  # the sqlite3 module opens the transaction itself (BEGIN IMMEDIATE)
            await driver.execute("INSERT INTO plain_stamps (id, at) VALUES (1, '2026-01-01')")
        await greenlet_spawn(fairy.close)  # SQLAlchemy's rollback-on-return is a no-op
        assert pool_stats(manager).in_use == 0
        async with manager.lease("dgent") as lease:
            assert not lease_in_transaction(lease)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM plain_stamps"))).scalar() == 0
            await conn.execute(PlainStamp.__table__.insert(), {"id": 2, "at": datetime.now(UTC)})
            await conn.commit()
        # PostgreSQL: the adapter was rebuilt (a second connect); SQLite: the sqlite3
        # module's own rollback on return had already ended the transaction.
        assert len(connects) == (2 if engine.dialect.name == "postgresql" else 1)
        await engine.dispose()


async def test_isolation_levels_set_through_sqlalchemy_do_not_leak(db_url: str) -> None:
    sqlite = db_url.startswith("sqlite")
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        # An engine-wide level (the SQLite dialect sets it on every new connection).
        engine = create_async_engine(manager, isolation_level="SERIALIZABLE")
        async with engine.connect() as conn:
            level = "AUTOCOMMIT"
            auto = await conn.execution_options(isolation_level=level)
            await auto.execute(text("SELECT 1"))
        async with manager.lease("dgent") as lease:
            if sqlite:  # connman's BEGIN IMMEDIATE survives SQLAlchemy's resets
                assert lease.connection.isolation_level == "IMMEDIATE"
            else:
                isolation = await lease.connection.fetchval("SHOW transaction_isolation")
                assert isolation == "read committed"
        await engine.dispose()


async def test_concurrent_orm_writers_do_not_fail(db_url: str) -> None:
    """On SQLite: writers queue on the write lock (BEGIN IMMEDIATE + busy_timeout)
    instead of failing with "database is locked", even when they read first."""
    async with open_manager(db_url, min_size=1, max_size=8) as manager:
        engine = create_async_engine(manager)
        await create_tables(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)

        async def writer(i: int) -> None:
            async with sessions() as session:
                await session.scalar(select(Note.id).where(Note.slug == f"w{i}-0"))  # read
                for j in range(5):
                    session.add(
                        Note(
                            id=10 * i + j,
                            slug=f"w{i}-{j}",
                            doc={"i": i},
                            tags=[],
                            at=datetime.now(UTC),
                        )
                    )
                    await session.flush()  # write, holding the write lock to commit
                await session.commit()

        await asyncio.gather(*(writer(i) for i in range(12)))
        async with sessions() as session:
            assert len((await session.scalars(select(Note.id))).all()) == 60
        await engine.dispose()


# ====================================================================== the ORM


async def test_orm_round_trip_with_json_and_aware_datetimes(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)
        await create_tables(engine)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        paris = timezone(timedelta(hours=2))
        at = datetime(2026, 3, 12, 12, 30, 15, 123456, tzinfo=paris)
        doc = {"summary": "ok", "nested": {"n": [1, 2.5, None, True]}, "unicode": "é"}
        async with sessions() as session, session.begin():
            session.add(Note(id=1, slug="one", doc=doc, tags=["a", "b"], at=at))
        async with sessions() as session:
            note = await session.get(Note, 1)
            assert note is not None
            assert note.doc == doc and note.tags == ["a", "b"]
            assert note.at == at and note.at.utcoffset() == timedelta(0)  # same instant, UTC
            found = await session.scalar(select(Note).where(Note.at > at - timedelta(seconds=1)))
            assert found is not None and found.slug == "one"
            note.doc = {**doc, "summary": "changed"}
            await session.commit()
        async with engine.connect() as conn:
            stored = (await conn.execute(select(Note.doc).where(Note.id == 1))).scalar_one()
            assert stored["summary"] == "changed"
        await engine.dispose()


# Values whose Python form depends on the codecs the asyncpg dialect installs (json,
# jsonb and their arrays) and a few whose form asyncpg decides alone.
NATIVE_VALUES_QUERY = """
SELECT '{"a": 1}'::json AS j, '{"b": [1, 2.5, null, true]}'::jsonb AS jb,
       'null'::jsonb AS jnull, '"text"'::json AS jstr, CAST(NULL AS jsonb) AS jmissing,
       ARRAY['{"x": 1}'::jsonb, '[2]'::jsonb] AS jarr, ARRAY[['1'::json], ['{}'::json]] AS j2d,
       1.50::numeric AS num, '7b1f4d0e-5c3a-4f6e-9d2b-1a2b3c4d5e6f'::uuid AS u,
       '2026-03-12 12:30:15+02'::timestamptz AS ts, '1 day 2 hours'::interval AS iv,
       '\\x0001ff'::bytea AS raw, ARRAY[1, 2] AS ints, '10.0.0.1/32'::inet AS ip
"""


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_engine_returns_what_native_sqlalchemy_returns(db_url: str) -> None:
    """Code moved onto connman gets the values native SQLAlchemy gave it: JSON and
    JSONB decoded also without a SQLAlchemy type (``text()``), in buffered and
    streamed results, with the engine's json_deserializer; the ORM's JSON columns
    the same. The raw asyncpg lease of another consumer on the same physical
    connection, before and after, still gets asyncpg's own values (JSON as text)."""
    from sqlalchemy.ext.asyncio import create_async_engine as native_create_async_engine

    native = native_create_async_engine(db_url)
    async with native.connect() as conn:
        expected = dict((await conn.execute(text(NATIVE_VALUES_QUERY))).mappings().one())
    assert expected["j"] == {"a": 1} and expected["jarr"] == [{"x": 1}, [2]]  # the premise

    raw_json = '{"a": 1}'
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        async with manager.lease("dgent") as lease:
            pid = await lease_backend(lease)
            assert await lease.connection.fetchval(NATIVE_VALUES_QUERY) == raw_json
        engine = create_async_engine(manager)
        async with engine.connect() as conn:
            assert await backend_of(conn) == pid  # the very same physical connection
            got = dict((await conn.execute(text(NATIVE_VALUES_QUERY))).mappings().one())
            streamed = await conn.stream(text(NATIVE_VALUES_QUERY))
            got_streamed = dict((await streamed.mappings().all())[0])
        async with manager.lease("dgent") as lease:
            assert await lease.connection.fetchval(NATIVE_VALUES_QUERY) == raw_json
            row = await lease.connection.fetchrow(NATIVE_VALUES_QUERY)
            assert row["jb"] == '{"b": [1, 2.5, null, true]}' and row["jarr"][1] == "[2]"
        assert got == expected
        assert got_streamed == expected

        await create_tables(engine)
        native_sessions = async_sessionmaker(native, expire_on_commit=False)
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        at = datetime(2026, 3, 12, 12, 30, tzinfo=UTC)
        async with sessions() as session, session.begin():
            session.add(Note(id=1, slug="one", doc={"k": [1, {"n": None}]}, tags=["t"], at=at))
        async with sessions() as session, native_sessions() as native_session:
            ours, theirs = await session.get(Note, 1), await native_session.get(Note, 1)
            assert ours is not None and theirs is not None
            assert (ours.doc, ours.tags) == (theirs.doc, theirs.tags)
            assert ours.doc == {"k": [1, {"n": None}]}
        await engine.dispose()

        loads_calls: list[str] = []

        def loads(value: str) -> Any:
            loads_calls.append(value)
            return json.loads(value)

        engine = create_async_engine(manager, json_deserializer=loads)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT '[3]'::jsonb"))).scalar_one() == [3]
        assert loads_calls == ["[3]"]
        await engine.dispose()
    await native.dispose()


async def test_plain_timezone_datetime_keeps_the_offset_only_on_postgres(db_url: str) -> None:
    """Why AwareDateTime exists: SQLAlchemy's SQLite dialect drops the offset of
    DateTime(timezone=True) values."""
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager)
        await create_tables(engine)
        at = datetime(2026, 3, 12, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        sessions = async_sessionmaker(engine)
        async with sessions() as session, session.begin():
            session.add(PlainStamp(id=1, at=at))
        async with sessions() as session:
            back = (await session.get(PlainStamp, 1)).at  # type: ignore[union-attr]
        if engine.dialect.name == "postgresql":
            assert back == at
        else:
            assert back.tzinfo is None and back == at.replace(tzinfo=None)
        await engine.dispose()


# ====================================================================== invalidation, detach, gc


async def test_invalidated_connection_is_replaced(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)
        async with engine.connect() as conn:
            first = await backend_of(conn)
            await conn.invalidate()
        # Closed by SQLAlchemy, released as failed: connman drops it (in the background).
        await wait_until(lambda: pool_stats(manager).in_use == 0)
        assert pool_stats(manager).counters["connections_closed"] == 1
        async with engine.connect() as conn:
            assert await backend_of(conn) != first
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()


async def test_disconnect_on_checkout_moves_to_a_new_lease(db_url: str) -> None:
    """A checkout listener that reports a disconnect (SQLAlchemy's pessimistic
    disconnect handling) makes SQLAlchemy close that connection and reconnect: the
    record moves to a fresh connman lease."""
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)
        async with engine.connect() as conn:
            first = await backend_of(conn)
        refusals = [1]

        @event.listens_for(engine.sync_engine, "checkout")
        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if refusals:
                refusals.pop()
                raise exc.DisconnectionError("stale connection")

        async with engine.connect() as conn:
            assert await backend_of(conn) != first
            assert pool_stats(manager).consumers == {"sqlalchemy": 1}
        await wait_until(lambda: pool_stats(manager).in_use == 0)
        assert pool_stats(manager).counters["connections_closed"] == 1
        await engine.dispose()


async def test_detached_connection_keeps_its_lease_until_closed(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        conn.sync_connection.detach()  # type: ignore[union-attr]
        assert pool_stats(manager).consumers == {"sqlalchemy": 1}
        await conn.execute(text("SELECT 1"))
        await conn.close()  # closing a detached connection closes it for good
        await wait_until(lambda: pool_stats(manager).in_use == 0)
        assert pool_stats(manager).counters["connections_closed"] == 1
        await engine.dispose()


async def test_garbage_collected_connection_gives_its_lease_back(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)
        conn = await engine.connect()
        await conn.execute(text("SELECT 1"))
        assert pool_stats(manager).in_use == 1
        del conn  # never closed: only the garbage collector can give it back
        with pytest.warns(exc.SAWarning, match="garbage collector"):
            gc.collect()
        await wait_until(lambda: pool_stats(manager).in_use == 0)
        async with engine.connect() as conn:  # the engine carries on
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()


# ====================================================================== cancellation


async def test_cancelled_waiter_leaves_nothing_behind(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager)

        async def use_engine() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async with manager.lease("brain"):
            task = asyncio.create_task(use_engine())
            await wait_until(lambda: pool_stats(manager).waiting == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool_stats(manager).waiting == 0
        stats = pool_stats(manager)
        assert stats.in_use == 0 and stats.counters["cancelled"] == 1
        await use_engine()  # the next checkout is served
        await engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
async def test_query_cancelled_mid_flight_leaves_a_clean_connection(db_url: str) -> None:
    async with open_manager(db_url, min_size=1, max_size=1) as manager:
        engine = create_async_engine(manager)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2), engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(30)"))
        await wait_until(lambda: pool_stats(manager).in_use == 0)
        async with manager.lease("dgent", timeout=5) as lease:
            assert not lease_in_transaction(lease)
            assert await lease.connection.fetchval("SELECT 1") == 1
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await engine.dispose()


# ====================================================================== which database


async def test_engine_follows_a_degraded_manager(tmp_path: Path) -> None:
    env = {
        "KGENTS_DATABASE_URL": "postgresql://kgents@127.0.0.1:1/kgents",
        "KGENTS_UNIFIED_URL": "postgresql://kgents@127.0.0.1:1/kgents",
        "XDG_DATA_HOME": str(tmp_path),
    }
    manager = ConnectionManager(connman.resolve_storage(env), config=PoolConfig(connect_timeout=2))
    early = create_async_engine(manager)  # before start: the storage asked for
    assert early.dialect.name == "postgresql"
    await manager.start()
    try:
        assert manager.degraded
        with pytest.raises(ConnmanError, match="degraded"):
            await early.connect()
        engine = create_async_engine(manager)  # after start: the database serving
        assert engine.dialect.name == "sqlite" and engine.url.password is None
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        assert pool_stats(manager).in_use == 0
        await engine.dispose()
        await early.dispose()
    finally:
        await manager.aclose()


# ====================================================================== Alembic


def alembic_config(**attributes: Any) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.attributes.update(attributes)
    return config


def test_alembic_cli_upgrade_and_downgrade(db_url: str) -> None:
    """What `alembic -c deploy/alembic/alembic.ini -x url=... upgrade head` does: env.py
    leases its connection from a connman manager on its own event loop."""
    config = alembic_config()
    config.cmd_opts = Namespace(x=[f"url={db_url}"])
    command.upgrade(config, "head")
    assert table_rows(db_url) == [("created", "alembic")]
    command.downgrade(config, "base")
    assert table_rows(db_url) is None


async def test_alembic_on_a_shared_connection(db_url: str) -> None:
    """Alembic's connection-sharing recipe, from async code: the migration runs on a
    connection the application leased through the engine."""
    async with open_manager(db_url, min_size=1, max_size=2) as manager:
        engine = create_async_engine(manager)

        def run(connection: Connection, verb: Callable[[Config, str], None], target: str) -> None:
            verb(alembic_config(connection=connection), target)

        async with engine.begin() as conn:
            await conn.run_sync(run, command.upgrade, "head")
        async with engine.connect() as conn:
            body = (await conn.execute(text("SELECT body FROM migration_notes"))).scalar_one()
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        assert "alembic" in str(body) and version == "0001"
        async with engine.begin() as conn:
            await conn.run_sync(run, command.downgrade, "base")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar() == 0
        await engine.dispose()
        assert pool_stats(manager).in_use == 0


def table_rows(url: str) -> list[tuple[str, str]] | None:
    """(slug, body.by) of migration_notes, read with the plain drivers; None if the
    table does not exist."""
    parsed = connman.parse_url(url)
    if parsed.dialect == "sqlite":
        with sqlite3.connect(parsed.database or "") as conn:
            try:
                rows = conn.execute("SELECT slug, json_extract(body, '$.by') FROM migration_notes")
            except sqlite3.OperationalError:
                return None
            return [tuple(row) for row in rows]

    async def read() -> list[tuple[str, str]] | None:
        conn = await asyncpg.connect(parsed.connect_dsn())
        try:
            if await conn.fetchval("SELECT to_regclass('migration_notes')") is None:
                return None
            rows = await conn.fetch("SELECT slug, body->>'by' FROM migration_notes")
            return [(row[0], row[1]) for row in rows]
        finally:
            await conn.close()

    return asyncio.run(read())
