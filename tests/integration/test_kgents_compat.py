"""kgents' storage interfaces on connman (connman.kgents.compat), on a real PostgreSQL
and on SQLite files: the contract kgents' callers rely on, pinned on both dialects,
and one process using all of them at once through one pool per database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select

import connman
from connman import ConnectionManager, PoolConfig, QueryParameterError
from connman.errors import CausalParentMissing, ConfigError, DatumConflict, InvalidInput
from connman.kgents import compat as kgents
from connman.kgents.compat import (
    Datum,
    DgentProtocol,
    IRelationalStore,
    PostgresBackend,
    PostgresRelationalStore,
    SQLiteBackend,
    SQLiteRelationalStore,
)
from connman.kgents.dgent import DgentStore
from connman.kgents.schema.models import Crystal
from connman.urls import DatabaseURL, parse_url

pytestmark = pytest.mark.anyio

Backend = SQLiteBackend | PostgresBackend
Relational = SQLiteRelationalStore | PostgresRelationalStore


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def manager(dialect: str, request: pytest.FixtureRequest) -> AsyncIterator[ConnectionManager]:
    """A manager whose default database is a fresh one of ``dialect``."""
    fixture = "postgres_database" if dialect == "postgresql" else "sqlite_url"
    url = str(request.getfixturevalue(fixture))
    async with ConnectionManager(url, config=PoolConfig(), degrade=False) as m:
        yield m


@pytest.fixture
def backend(manager: ConnectionManager, tmp_path: Path) -> Backend:
    """kgents' D-gent backend of the dialect, as its tests build it."""
    if manager.storage.dialect == "postgresql":
        return PostgresBackend(
            manager.storage.url, namespace="test", min_pool_size=1, max_pool_size=2, manager=manager
        )
    return SQLiteBackend(namespace="test", data_dir=tmp_path / "data", manager=manager)


@pytest.fixture
def relational(manager: ConnectionManager, tmp_path: Path) -> Relational:
    if manager.storage.dialect == "postgresql":
        return PostgresRelationalStore(manager.storage.url, manager=manager)
    return SQLiteRelationalStore(tmp_path / "instance" / "membrane.db", manager=manager)


def backend_url(backend: Backend, manager: ConnectionManager) -> str:
    if isinstance(backend, SQLiteBackend):
        return DatabaseURL(dialect="sqlite", database=str(backend.path)).key
    return manager.storage.url


def at(seconds: float, content: bytes = b"x", **kw: Any) -> Datum:
    """A datum created at a fixed time (no sleeps to order data)."""
    return Datum.create(content, created_at=1_800_000_000.0 + seconds, **kw)


# ====================================================================== D-gent


async def test_backends_are_kgents_protocol(backend: Backend) -> None:
    assert isinstance(backend, DgentProtocol) and isinstance(backend, kgents.BaseDgent)
    d = Datum.create(b"test")
    assert await backend.put(d) == d.id
    assert await backend.exists(d.id) and not await backend.exists("nonexistent")
    assert await backend.get("nonexistent") is None
    assert "namespace='test'" in repr(backend)


async def test_put_overwrites_an_existing_id(backend: Backend, manager: ConnectionManager) -> None:
    """kgents: put() of an existing id replaces it, every column; the append-only
    store (the default) refuses the same write on the same table."""
    parent = await backend.put(at(0, b"parent"))
    await backend.put(at(1, b"v1", id="same-id", metadata={"v": "1"}))
    await backend.put(at(5, b"v2", id="same-id", causal_parent=parent, metadata={"v": "2"}))
    got = await backend.get("same-id")
    assert got == at(5, b"v2", id="same-id", causal_parent=parent, metadata={"v": "2"})
    assert await backend.count() == 2
    append_only = DgentStore(manager, url=backend_url(backend, manager))
    with pytest.raises(DatumConflict):
        await append_only.put(at(9, b"v3", id="same-id"))
    assert (await backend.get("same-id")) == got


async def test_overwrite_keeps_the_children_linked(backend: Backend) -> None:
    a = at(0, b"a")
    b = a.derive(b"b")
    await backend.put(a)
    await backend.put(b)
    await backend.put(Datum(id=a.id, content=b"a2", created_at=a.created_at + 1))
    assert [d.content for d in await backend.causal_chain(b.id)] == [b"a2", b"b"]


async def test_a_missing_causal_parent(backend: Backend, dialect: str) -> None:
    """kgents' SQLite backend stored an orphan as is (it had no foreign key); its
    PostgreSQL table's foreign key refused it. Reproduced per dialect."""
    child = Datum.create(b"orphan", causal_parent="missing-parent")
    if dialect == "sqlite":
        await backend.put(child)
        got = await backend.get(child.id)
        assert got is not None and got.causal_parent == "missing-parent"
        assert await backend.causal_chain(child.id) == [got]
    else:
        with pytest.raises(CausalParentMissing):
            await backend.put(child)
        assert await backend.get(child.id) is None
        # An overwrite that points an existing datum at a missing parent: the same.
        await backend.put(Datum.create(b"root", id="root"))
        with pytest.raises(CausalParentMissing):
            await backend.put(Datum.create(b"root2", id="root", causal_parent="missing"))
        assert (await backend.get("root")) is not None


async def test_causal_chain_stops_at_a_missing_link(backend: Backend, dialect: str) -> None:
    a = at(0, b"a")
    b = a.derive(b"b")
    c = b.derive(b"c")
    for d in (a, b, c):
        await backend.put(d)
    assert [d.id for d in await backend.causal_chain(c.id)] == [a.id, b.id, c.id]
    assert await backend.causal_chain(a.id) == [a]
    assert await backend.causal_chain("nonexistent") == []

    assert await backend.delete(b.id) is True
    assert await backend.delete(b.id) is False
    [only] = await backend.causal_chain(c.id)
    # SQLite (no foreign key in kgents): the child keeps the deleted id. PostgreSQL:
    # the foreign key's ON DELETE SET NULL.
    assert only.id == c.id
    assert only.causal_parent == (b.id if dialect == "sqlite" else None)


async def test_a_chain_that_loops_raises_instead_of_hanging(backend: Backend) -> None:
    """Overwrites can close a loop (kgents' recursive query never returned)."""
    a = Datum.create(b"a", id="loop-a")
    await backend.put(a)
    await backend.put(Datum.create(b"b", id="loop-b", causal_parent="loop-a"))
    await backend.put(Datum.create(b"a2", id="loop-a", causal_parent="loop-b"))
    with pytest.raises(connman.AdapterError, match="cycle"):
        await backend.causal_chain("loop-b")


async def test_list_newest_first_with_prefix_after_and_limit(backend: Backend) -> None:
    assert await backend.list() == []
    ids = ["user:alice:1", "user:alice:2", "user:bob:1", "user_x", "userA1"]
    for n, id in enumerate(ids):
        await backend.put(at(n, id=id))
    await backend.put(at(2, id="tie:b"))
    await backend.put(at(2, id="tie:a"))

    listed = [d.id for d in await backend.list()]
    # Newest first; equal times by id, descending (kgents left their order undefined).
    assert listed == [
        "userA1",
        "user_x",
        "user:bob:1",
        "tie:b",
        "tie:a",
        "user:alice:2",
        "user:alice:1",
    ]
    assert {d.id for d in await backend.list(prefix="user:alice:")} == {
        "user:alice:1",
        "user:alice:2",
    }
    # Literal prefixes: '_' is no wildcard, case counts (kgents' LIKE differed).
    assert [d.id for d in await backend.list(prefix="user_")] == ["user_x"]
    assert [d.id for d in await backend.list(prefix="usera")] == []
    assert len(await backend.list(prefix="")) == 7
    cutoff = 1_800_000_000.0 + 2
    assert [d.id for d in await backend.list(after=cutoff)] == ["userA1", "user_x"]  # strictly
    assert [d.id for d in await backend.list(limit=2)] == ["userA1", "user_x"]
    assert await backend.list(limit=0) == []
    assert [d.id for d in await backend.list(prefix="user", after=0.0, limit=1)] == ["userA1"]
    with pytest.raises(InvalidInput):
        await backend.list(limit=-1)


async def test_count_and_exists_and_delete(backend: Backend) -> None:
    assert await backend.count() == 0
    for n in range(5):
        await backend.put(at(n, f"item-{n}".encode()))
    assert await backend.count() == 5
    first = (await backend.list(limit=1))[0]
    assert await backend.delete(first.id) and not await backend.exists(first.id)
    assert await backend.delete("nonexistent") is False
    assert await backend.count() == 4


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
async def test_sqlite_namespaces_are_files(manager: ConnectionManager, tmp_path: Path) -> None:
    one = SQLiteBackend("one", tmp_path, manager=manager)
    two = SQLiteBackend("two", tmp_path, manager=manager)
    await one.put(Datum.create(b"in one", id="x"))
    assert await two.get("x") is None
    again = SQLiteBackend("one", tmp_path, manager=manager)
    assert (await again.get("x")) is not None  # persists across instances
    assert one.path == tmp_path / "one.db" and one.path.exists()
    urls = [s.url for s in manager.stats()]
    assert sorted(urls) == sorted(set(urls)) and len(urls) == 3  # default, one.db, two.db
    for n in range(20):
        await one.put(Datum.create(b"z" * 1000, id=f"big-{n}"))
    for n in range(20):
        await one.delete(f"big-{n}")
    assert await one.vacuum() >= 0 and await one.count() == 1
    one.close()
    one.clear()
    assert not one.path.exists()


async def test_kgents_writes_leave_sqlite_enforcing_foreign_keys(tmp_path: Path) -> None:
    """On SQLite the kgents semantics switch the foreign key off for one write; the
    shared connection enforces it again for the next lease, also after a write that
    failed (a trigger raising inside the INSERT)."""
    url = f"sqlite:///{tmp_path}/fk.db"
    async with ConnectionManager(url, config=PoolConfig(min_size=1, max_size=1)) as manager:
        backend = SQLiteBackend("fk", tmp_path, manager=manager)

        async def enforced() -> int:
            async with manager.lease("other") as lease:  # the one connection
                cursor = await lease.connection.execute("PRAGMA foreign_keys")
                [value] = await cursor.fetchone()
                return int(value)

        await backend.put(Datum.create(b"orphan", causal_parent="missing"))
        assert await enforced() == 1
        async with manager.lease("other") as lease:
            await lease.connection.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON data WHEN NEW.id = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
            await lease.connection.commit()
        with pytest.raises(sqlite3.IntegrityError, match="refused by trigger"):
            await backend.put(Datum.create(b"x", id="boom", causal_parent="missing"))
        assert await enforced() == 1
        [stats] = manager.stats()  # the backend's file is the manager's database
        assert stats.size == 1


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_postgres_namespace_selects_nothing(manager: ConnectionManager) -> None:
    """As in kgents, every namespace of a PostgreSQL database shares table data."""
    url = manager.storage.url
    async with PostgresBackend(url, namespace="a", manager=manager) as a:
        await a.put(Datum.create(b"shared", id="s"))
        b = PostgresBackend(url, namespace="b", manager=manager)
        assert (await b.get("s")) is not None
        assert len(manager.stats()) == 1
        await b.vacuum()


@pytest.mark.parametrize("dialect", ["postgresql"], indirect=True)
async def test_health_check_keys(manager: ConnectionManager) -> None:
    url = manager.storage.url
    backend = PostgresBackend(url, min_pool_size=1, max_pool_size=3, manager=manager)
    for n in range(3):
        await backend.put(Datum.create(f"item-{n}".encode()))
    health = await backend.health_check()
    assert set(health) == {"connected", "count", "size_bytes", "pool_size", "pool_min", "pool_max"}
    assert health["connected"] is True and health["count"] == 3 and health["size_bytes"] > 0
    async with backend._connection() as conn:  # as kgents' own test fixtures clean up
        assert await conn.execute("DELETE FROM data") == "DELETE 3"
    assert (await backend.health_check())["count"] == 0
    [stats] = manager.stats()
    assert health["pool_size"] >= 1 and health["pool_max"] == stats.max_size  # connman's pool
    store = PostgresRelationalStore(url, min_pool_size=7, max_pool_size=70, manager=manager)
    health = await store.health_check()
    assert health == {
        "connected": True,
        "pool_size": manager.stats()[0].size,
        "pool_min": stats.min_size,
        "pool_max": stats.max_size,
    }
    assert repr(store) == "PostgresRelationalStore(namespace='kgents')"  # no URL


# ====================================================================== the relational store


async def test_relational_named_parameters(relational: Relational, dialect: str) -> None:
    assert isinstance(relational, IRelationalStore)
    # kgents ran its schema scripts through execute(): several statements, no params.
    await relational.execute(
        "CREATE TABLE shapes (id TEXT PRIMARY KEY, type TEXT, n INTEGER);"
        "CREATE INDEX idx_shapes_type ON shapes (type);"
    )
    assert (
        await relational.execute(
            "INSERT INTO shapes (id, type, n) VALUES (:id, :type, :n)",
            {"id": "SHAPE-001", "type": "insight", "n": 1, "unused": "extra keys are ignored"},
        )
        == 1
    )
    hostile = "x'); DROP TABLE shapes; --"
    assert (
        await relational.executemany(
            "INSERT INTO shapes (id, type, n) VALUES (:id, :type, :n)",
            [{"id": hostile, "type": "t", "n": 2}, {"id": "S3", "type": "t", "n": 3}],
        )
        == 2
    )
    assert await relational.executemany("INSERT INTO shapes (id) VALUES (:id)", []) == 0
    row = await relational.fetch_one("SELECT id, n FROM shapes WHERE id = :id", {"id": hostile})
    assert row == {"id": hostile, "n": 2}  # a value, never SQL
    assert await relational.fetch_one("SELECT id FROM shapes WHERE id = :id", {"id": "no"}) is None
    # One name used twice.
    rows = await relational.fetch_all(
        "SELECT id FROM shapes WHERE type = :t OR (n > :n AND type <> :t) ORDER BY id",
        {"t": "t", "n": 0},
    )
    assert [r["id"] for r in rows] == sorted(["SHAPE-001", hostile, "S3"])
    assert await relational.execute("UPDATE shapes SET n = n + 1 WHERE type = :t", {"t": "t"}) == 2
    if dialect == "postgresql":
        # ::cast is not a parameter, :name::cast is one.
        value = await relational.fetch_one("SELECT :n::int + 1 AS v, '1'::int AS w", {"n": 41})
        assert value == {"v": 42, "w": 1}
    with pytest.raises(QueryParameterError, match=":type"):
        await relational.execute("INSERT INTO shapes (id, type) VALUES (:id, :type)", {"id": "q"})
    assert await relational.fetch_one("SELECT id FROM shapes WHERE id = 'q'") is None
    await relational.close()  # closes nothing shared: the store stays usable
    assert len(await relational.fetch_all("SELECT id FROM shapes")) == 3


async def test_relational_transactions(relational: Relational) -> None:
    await relational.execute("CREATE TABLE t (id TEXT PRIMARY KEY, v INTEGER)")
    async with relational.transaction() as tx:
        await tx.execute("INSERT INTO t (id, v) VALUES (:id, :v)", {"id": "a", "v": 1})
        await tx.executemany("INSERT INTO t (id, v) VALUES (:id, :v)", [{"id": "b", "v": 2}])
        assert (await tx.fetch_one("SELECT count(*) AS n FROM t")) == {"n": 2}  # its own writes
    with pytest.raises(RuntimeError, match="boom"):
        async with relational.transaction() as tx:
            await tx.execute("INSERT INTO t (id, v) VALUES (:id, :v)", {"id": "c", "v": 3})
            await tx.execute("UPDATE t SET v = 0")
            raise RuntimeError("boom")
    rows = await relational.fetch_all("SELECT id, v FROM t ORDER BY id")
    assert rows == [{"id": "a", "v": 1}, {"id": "b", "v": 2}]  # committed, then rolled back


def test_semantics_is_a_checked_setting() -> None:
    assert DgentStore().semantics == "append-only"
    assert DgentStore(semantics="kgents").semantics == "kgents"
    with pytest.raises(ConfigError, match="semantics"):
        DgentStore(semantics="overwrite")  # type: ignore[arg-type]


def test_kgents_datum_api() -> None:
    d = Datum.create(b"content", id="given", metadata={"k": "v"})
    assert d.id == "given" and d.size == 7
    child = d.derive(b"child")
    assert child.causal_parent == "given" and child.id != "given"
    assert d.with_metadata(x="y").metadata == {"k": "v", "x": "y"}
    assert Datum.from_json(d.to_json()) == d
    assert Datum.from_jsonl_line(d.to_jsonl_line()) == d
    assert "\n" not in d.to_jsonl_line()
    addressed = Datum.create(b"same", content_addressed=True)
    assert addressed.id == Datum.create(b"same", content_addressed=True).id


# ====================================================================== one process, one pool


class LeaseCounter:
    """A PoolObserver counting granted leases per (pool, consumer)."""

    def __init__(self) -> None:
        self.acquired: Counter[tuple[str, str]] = Counter()

    def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
        self.acquired[pool, consumer] += 1

    def lease_released(self, pool: str, consumer: str, used: float) -> None:
        pass

    def acquire_failed(self, pool: str, consumer: str, reason: str) -> None:
        pass

    def connection_opened(self, pool: str, seconds: float) -> None:
        pass

    def connection_closed(self, pool: str, lost: bool) -> None:
        pass

    def connect_failed(self, pool: str) -> None:
        pass

    def leak_detected(self, pool: str, consumer: str) -> None:
        pass


async def test_a_process_using_all_of_them_has_one_pool_per_database(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kgents' D-gent backends, relational stores and SQLAlchemy engine, all at once
    on the process-wide manager: each database has one pool (however its URL is
    spelled), and PostgreSQL never sees more than max_size connections from it."""
    max_size = 4
    monkeypatch.setenv("KGENTS_DATABASE_URL", postgres_database)
    monkeypatch.setenv("KGENTS_POOL_MAX_SIZE", str(max_size))
    monkeypatch.setenv("KGENTS_POOL_MIN_SIZE", "1")
    legacy_spelling = parse_url(postgres_database).connect_dsn()  # postgresql://...
    manager = connman.get_manager()
    leases = LeaseCounter()
    manager.set_observer(leases)
    try:
        dgent_pg = PostgresBackend(legacy_spelling, min_pool_size=5, max_pool_size=20)
        dgent_sqlite = SQLiteBackend("kgents", tmp_path)
        relational_pg = PostgresRelationalStore(postgres_database, max_pool_size=30)
        relational_sqlite = SQLiteRelationalStore(tmp_path / "kgents.db", wal_mode=False)
        await kgents.init_db()
        engine = kgents.get_engine()
        assert kgents.get_database_url() == postgres_database
        await relational_pg.execute("CREATE TABLE marks (id TEXT PRIMARY KEY)")
        await relational_sqlite.execute("CREATE TABLE marks (id TEXT PRIMARY KEY)")

        peak = 0
        stop = asyncio.Event()
        admin = await asyncpg.connect(parse_url(postgres_database).connect_dsn())

        async def watch() -> None:
            nonlocal peak
            while not stop.is_set():
                n = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                peak = max(peak, n)
                await asyncio.sleep(0)

        async def work(n: int) -> None:
            for i in range(5):
                await dgent_pg.put(Datum.create(b"pg", id=f"{n}-{i}"))
                await dgent_sqlite.put(Datum.create(b"lite", id=f"{n}-{i}"))
                await relational_pg.execute("INSERT INTO marks VALUES (:id)", {"id": f"{n}-{i}"})
                async with relational_sqlite.transaction() as tx:
                    await tx.execute("INSERT INTO marks VALUES (:id)", {"id": f"{n}-{i}"})
                async with kgents.get_async_session() as session:
                    await session.execute(select(Crystal).limit(1))

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(work(n) for n in range(12)))
        stop.set()
        await watcher
        await admin.close()

        assert await dgent_pg.count() == await dgent_sqlite.count() == 60
        pg_url = parse_url(postgres_database).redacted()
        sqlite_url = DatabaseURL(dialect="sqlite", database=str(tmp_path / "kgents.db")).redacted()
        stats = manager.stats()
        assert [s.url for s in stats] == [pg_url, sqlite_url]  # one pool per database
        assert stats[0].max_size == max_size and stats[0].size <= max_size
        assert 1 <= peak <= max_size
        # Metrics per consumer, on the one pool of each database.
        assert {c for p, c in leases.acquired if p == stats[0].name} == {
            "dgent",
            "relational",
            "sqlalchemy",
        }
        assert {c for p, c in leases.acquired if p == stats[1].name} == {"dgent", "relational"}
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await kgents.close_db()
        await manager.aclose()
