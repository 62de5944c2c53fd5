"""The D-gent adapter on a real PostgreSQL and on a SQLite file: the same tests, both
dialects (the ``database_url`` fixture), through connman leases."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from connman import ConnectionManager, PoolConfig, resolve_storage
from connman.errors import CausalParentMissing, DatumConflict, InvalidInput
from connman.kgents.dgent import Datum, DgentStore, _list_query, content_id

# The anyio mark at module level, not only added by conftest after collection: anyio's
# plugin rebuilds items it finds unmarked at the end of collection, dropping their
# parametrization (database_url below).
pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each dialect (PostgreSQL: a new database on the session's
    server; SQLite: a file in tmp_path)."""
    fixture = "postgres_database" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def manager(database_url: str) -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager(database_url, config=PoolConfig(), degrade=False) as m:
        yield m


@pytest.fixture
def store(manager: ConnectionManager) -> DgentStore:
    return DgentStore(manager)


async def test_a_datum_comes_back_as_it_was_put(store: DgentStore) -> None:
    datum = Datum(
        id="d1",
        content=b"\x00binary\xff content\x00",
        created_at=1_700_000_000.123456,
        metadata={"kind": "note", "lang": "fr"},
    )
    assert await store.put(datum) == "d1"
    assert await store.get("d1") == datum
    assert await store.get("nope") is None
    assert await store.exists("d1") and not await store.exists("nope")
    assert await store.count() == 1


async def test_putting_the_same_content_again_is_a_no_op(store: DgentStore) -> None:
    first = Datum(id="x", content=b"same", created_at=1.0, metadata={"v": "1"})
    await store.put(first)
    await store.put(Datum(id="x", content=b"same", created_at=2.0, metadata={"v": "2"}))
    assert await store.get("x") == first  # the first write stands
    assert await store.count() == 1

    addressed = Datum.create(b"content addressed", content_addressed=True)
    again = Datum.create(b"content addressed", content_addressed=True)
    assert addressed.id == again.id == content_id(b"content addressed")
    await store.put(addressed)
    await store.put(again)
    assert await store.count() == 2


async def test_other_content_under_an_existing_id_is_refused(store: DgentStore) -> None:
    await store.put(Datum(id="x", content=b"original"))
    with pytest.raises(
        DatumConflict, match=r"'x' already exists with different content.*append-only"
    ):
        await store.put(Datum(id="x", content=b"changed"))
    stored = await store.get("x")
    assert stored is not None and stored.content == b"original"


async def test_a_causal_parent_must_exist(store: DgentStore) -> None:
    orphan = Datum.create(b"child", causal_parent="missing-parent")
    with pytest.raises(CausalParentMissing, match="'missing-parent', which does not exist"):
        await store.put(orphan)
    assert not await store.exists(orphan.id)
    assert await store.count() == 0


async def test_causal_chain_is_oldest_first_from_one_query(
    store: DgentStore, manager: ConnectionManager, database_url: str
) -> None:
    chain: list[Datum] = []
    parent = None
    for i in range(40):
        datum = Datum.create(f"step {i}".encode(), causal_parent=parent)
        await store.put(datum)
        chain.append(datum)
        parent = datum.id
    await store.put(Datum.create(b"unrelated"))

    assert await store.causal_chain(chain[-1].id) == chain
    assert await store.causal_chain(chain[9].id) == chain[:10]
    assert await store.causal_chain(chain[0].id) == chain[:1]
    assert await store.causal_chain("nope") == []

    if database_url.startswith("sqlite"):
        # Count the statements SQLite runs for a 40-hop chain: one.
        statements: list[str] = []
        async with manager.lease("trace") as lease:
            await lease.connection.set_trace_callback(statements.append)
        try:
            # max_size 10 but one idle connection: the store's lease gets the same one.
            assert manager.stats()[0].size == 1
            await store.causal_chain(chain[-1].id)
        finally:
            async with manager.lease("trace") as lease:
                await lease.connection.set_trace_callback(None)
        # (A health-check ping, "SELECT 1", may precede it: it is the pool's.)
        ours = [s for s in statements if s.strip() != "SELECT 1"]
        assert len(ours) == 1 and "WITH RECURSIVE" in ours[0], ours


async def test_deleting_a_parent_keeps_its_children(store: DgentStore) -> None:
    root = Datum.create(b"root")
    child = Datum.create(b"child", causal_parent=root.id)
    await store.put(root)
    await store.put(child)
    assert await store.delete(root.id) is True
    assert await store.delete(root.id) is False
    kept = await store.get(child.id)
    assert kept is not None and kept.content == b"child" and kept.causal_parent is None
    assert await store.causal_chain(child.id) == [kept]


async def test_list_is_newest_first_and_filters(store: DgentStore) -> None:
    base = time.time()
    for i in range(10):
        await store.put(Datum(id=f"item-{i}", content=b"x", created_at=base + i))
    await store.put(Datum(id="other-1", content=b"x", created_at=base + 100))

    newest = await store.list(limit=3)
    assert [d.id for d in newest] == ["other-1", "item-9", "item-8"]
    assert [d.id for d in await store.list(prefix="item-", after=base + 6)] == [
        "item-9",
        "item-8",
        "item-7",
    ]
    assert len(await store.list(prefix="item-")) == 10
    assert len(await store.list()) == 11
    assert await store.list(prefix="nothing") == []
    with pytest.raises(InvalidInput):
        await store.list(limit=-1)


async def test_prefixes_are_literal_not_patterns(store: DgentStore) -> None:
    ids = ["a%b-1", "a%b-2", "axb-3", "a_b-4", "aXb-5", "a\\b-6", "ab-7"]
    ids += ["z\U0010ffff-8", "z\U0010ffffq-9", "{-10", "zz-11"]
    for i, id_ in enumerate(ids):
        await store.put(Datum(id=id_, content=b"x", created_at=float(i)))

    async def listed(prefix: str) -> set[str]:
        return {d.id for d in await store.list(prefix=prefix)}

    assert await listed("a%b") == {"a%b-1", "a%b-2"}
    assert await listed("a_b") == {"a_b-4"}
    assert await listed("a\\b") == {"a\\b-6"}
    assert await listed("a") == {i for i in ids if i.startswith("a")}
    # The last code point cannot be incremented: the range bound carries over.
    assert await listed("z\U0010ffff") == {"z\U0010ffff-8", "z\U0010ffffq-9"}


async def test_prefix_scans_use_an_index(
    store: DgentStore, manager: ConnectionManager, database_url: str
) -> None:
    await store.ensure_schema()
    now = time.time()
    rows = [(f"bulk-{i:06d}", b"x", now + i, None, "{}") for i in range(5000)]
    rows += [(f"needle-{i}", b"y", now, None, "{}") for i in range(5)]
    async with manager.lease("setup") as lease:
        conn = lease.connection
        if lease.dialect == "postgresql":
            await conn.executemany("INSERT INTO data VALUES ($1, $2, $3, $4, $5)", rows)
            await conn.execute("ANALYZE data")
        else:
            await conn.executemany("INSERT INTO data VALUES (?, ?, ?, ?, ?)", rows)
            await conn.commit()
            await conn.execute("ANALYZE")

    found = await store.list(prefix="needle-")
    assert sorted(d.id for d in found) == [f"needle-{i}" for i in range(5)]

    sql, args = _list_query(manager.stats()[0].dialect, "needle-", None, 100)
    plan = await _plan(manager, sql, args)
    if database_url.startswith("sqlite"):
        # The primary key's own index, searched as a range.
        assert "SEARCH data USING INDEX sqlite_autoindex_data_1 (id>? AND id<?)" in plan, plan
        return
    assert "Seq Scan" not in plan, plan
    assert "Index Cond" in plan, plan
    # The test database has the C collation, where the primary key can serve LIKE
    # too. Production databases usually have a linguistic default collation, where
    # only the text_pattern_ops index can: give the column one and look again.
    async with manager.lease("setup") as lease:
        conn = lease.connection
        collation = await conn.fetchval(
            "SELECT collname FROM pg_collation WHERE collname = 'und-x-icu' "
            "OR (collprovider = 'c' AND collname ILIKE 'en_US.utf%') ORDER BY collname LIMIT 1"
        )
        if collation is None:
            pytest.skip("the server has no linguistic collation (ICU or en_US.utf8)")
        await conn.execute(
            f'ALTER TABLE data ALTER COLUMN id TYPE text COLLATE "{collation}", '
            f'ALTER COLUMN causal_parent TYPE text COLLATE "{collation}"'
        )
        await conn.execute("ANALYZE data")
    plan = await _plan(manager, sql, args)
    assert "idx_data_id_prefix" in plan and "Seq Scan" not in plan, plan
    assert sorted(d.id for d in await store.list(prefix="needle-")) == [
        f"needle-{i}" for i in range(5)
    ]


async def _plan(manager: ConnectionManager, sql: str, args: list[Any]) -> str:
    async with manager.lease("explain") as lease:
        conn = lease.connection
        if lease.dialect == "postgresql":
            return "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))
        cursor = await conn.execute("EXPLAIN QUERY PLAN " + sql, args)
        return "\n".join(str(row[3]) for row in await cursor.fetchall())


async def test_sixteen_stores_first_used_at_once_create_the_schema_once(
    manager: ConnectionManager,
) -> None:
    errors: list[BaseException] = []

    async def first_use(i: int) -> None:
        try:
            await DgentStore(manager).put(Datum(id=f"t{i}", content=b"x"))
        except Exception as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(first_use, i)
    assert errors == []
    assert await DgentStore(manager).count() == 16


async def test_bad_input_is_refused_before_any_sql(store: DgentStore) -> None:
    with pytest.raises(InvalidInput, match="content must be bytes"):
        await store.put(Datum(id="s", content="text"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="non-empty str"):
        await store.put(Datum(id="", content=b"x"))
    with pytest.raises(InvalidInput, match="metadata is not JSON"):
        await store.put(Datum(id="m", content=b"x", metadata={"k": object()}))  # type: ignore[dict-item]
    assert await store.count() == 0


# -- which database D-gent uses (KGENTS_DGENT_BACKEND) ----------------------------------


async def test_dgent_backend_memory_keeps_dgent_out_of_the_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    storage = resolve_storage({"KGENTS_DATABASE_URL": sqlite_url, "KGENTS_DGENT_BACKEND": "MEMORY"})
    async with ConnectionManager(storage) as manager:
        store = DgentStore(manager)
        await store.put(Datum(id="m1", content=b"in memory"))
        assert await store.count() == 1
        # The manager's own database (the file) has no D-gent table.
        async with manager.lease("check") as lease:
            cursor = await lease.connection.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'data'"
            )
            assert (await cursor.fetchone())[0] == 0
    with sqlite3.connect(tmp_path / "membrane.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='data'").fetchone() == (
            0,
        )


@pytest.mark.postgres
async def test_dgent_backend_sqlite_next_to_postgres(
    postgres_database: str, tmp_path: Path
) -> None:
    env = {
        "KGENTS_DATABASE_URL": postgres_database,
        "KGENTS_DGENT_BACKEND": "SQLITE",
        "XDG_DATA_HOME": str(tmp_path),
    }
    async with ConnectionManager(resolve_storage(env)) as manager:
        await DgentStore(manager).put(Datum(id="s1", content=b"portable"))
        async with manager.lease("check") as lease:
            assert lease.dialect == "postgresql"
            assert await lease.connection.fetchval("SELECT to_regclass('data')") is None
    with sqlite3.connect(tmp_path / "kgents" / "membrane.db") as conn:
        assert conn.execute("SELECT id, content FROM data").fetchall() == [("s1", b"portable")]


async def test_a_table_created_by_old_kgents_behaves_the_same(
    manager: ConnectionManager, database_url: str
) -> None:
    # kgents' SQLite variant had no foreign key (nor may a hand-made PostgreSQL
    # table): the adapter checks the parent and unlinks the children itself.
    sqlite = database_url.startswith("sqlite")
    blob, real, json_ = ("BLOB", "REAL", "TEXT") if sqlite else ("BYTEA", "FLOAT8", "JSONB")
    async with manager.lease("legacy") as lease:
        await lease.connection.execute(
            f"CREATE TABLE data (id TEXT PRIMARY KEY, content {blob} NOT NULL, "
            f"created_at {real} NOT NULL, causal_parent TEXT, metadata {json_} DEFAULT '{{}}')"
        )
        if lease.dialect == "sqlite":
            await lease.connection.commit()
    store = DgentStore(manager)
    root = Datum.create(b"root")
    await store.put(root)
    await store.put(Datum(id="child", content=b"c", causal_parent=root.id))
    with pytest.raises(CausalParentMissing):
        await store.put(Datum.create(b"orphan", causal_parent="nope"))
    assert await store.delete(root.id)
    child = await store.get("child")
    assert child is not None and child.causal_parent is None
    assert await store.count() == 1
