"""The Brain adapter (relational-store interface, coherent captures, the coherence
checker and its CLI) and both adapters sharing one manager, on a real PostgreSQL and
on a SQLite file: the same tests, both dialects (the ``database_url`` fixture)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from connman import ConnectionManager, PoolConfig, parse_url
from connman.cli import main
from connman.errors import InvalidInput, PoolClosed, QueryParameterError
from connman.kgents.brain import BrainStore
from connman.kgents.coherence import check_coherence
from connman.kgents.dgent import Datum, DgentStore
from connman.kgents.schema.models import Crystal, CrystalTag
from tests.support.helpers import RecordingObserver

# Module-level anyio mark: see tests/integration/test_dgent.py.
pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each dialect."""
    fixture = "postgres_database" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
async def manager(
    database_url: str, observer: RecordingObserver
) -> AsyncIterator[ConnectionManager]:
    async with ConnectionManager(
        database_url, config=PoolConfig(), degrade=False, observer=observer
    ) as m:
        yield m


@pytest.fixture
def brain(manager: ConnectionManager) -> BrainStore:
    return BrainStore(manager)


def peak_in_use(observer: RecordingObserver, consumer: str | None = None) -> int:
    """The most leases held at once (by ``consumer``, or by anyone), replayed from the
    observer's events (recorded synchronously, in order, on the lease path)."""
    held = peak = 0
    for name, args in observer.events:
        if consumer is not None and args and args[0] != consumer:
            continue
        if name == "lease_acquired":
            held += 1
            peak = max(peak, held)
        elif name == "lease_released":
            held -= 1
    return peak


# -- the relational-store interface ------------------------------------------------------


async def test_named_parameters_on_both_dialects(brain: BrainStore) -> None:
    row = await brain.fetch_one(
        "SELECT :a AS a, :b AS b, :a AS again, '12:30' AS clock, 'at \\:noon' AS escaped",
        {"a": "alpha", "b": "beta", "unused": "ignored"},
    )
    assert row == {
        "a": "alpha",
        "b": "beta",
        "again": "alpha",
        "clock": "12:30",
        "escaped": "at :noon",
    }


@pytest.mark.postgres
async def test_postgres_casts_are_left_alone(postgres_database: str) -> None:
    async with ConnectionManager(postgres_database, degrade=False) as manager:
        brain = BrainStore(manager)
        row = await brain.fetch_one(
            "SELECT :n::int + 1 AS n, '7'::int AS seven, :doc::jsonb ->> 'k' AS k",
            {"n": 41, "doc": '{"k": "v"}'},
        )
    assert row == {"n": 42, "seven": 7, "k": "v"}


async def test_a_missing_parameter_is_named_and_nothing_runs(brain: BrainStore) -> None:
    await brain.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    with pytest.raises(QueryParameterError, match=r":body, :extra") as info:
        await brain.execute(
            "INSERT INTO notes (id, body) VALUES (:id, :body || :extra)", {"id": "n1"}
        )
    assert "n1" not in str(info.value)  # values are not echoed, names are
    assert await brain.fetch_all("SELECT * FROM notes") == []


async def test_values_are_bound_never_spliced(brain: BrainStore) -> None:
    hostile = "x'); DROP TABLE captures; --"
    await brain.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
    assert (
        await brain.execute("INSERT INTO notes VALUES (:id, :body)", {"id": "n", "body": hostile})
        == 1
    )
    assert await brain.fetch_one("SELECT body FROM notes WHERE id = :id", {"id": "n"}) == {
        "body": hostile
    }
    assert await brain.fetch_one("SELECT count(*) AS n FROM captures") == {"n": 0}


async def test_execute_returns_rows_affected(brain: BrainStore) -> None:
    await brain.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
    assert (
        await brain.executemany(
            "INSERT INTO t (k, v) VALUES (:k, :v)", [{"k": i, "v": i % 3} for i in range(30)]
        )
        == 30
    )
    assert await brain.execute("UPDATE t SET v = 9 WHERE v = :v", {"v": 0}) == 10
    assert await brain.execute("DELETE FROM t WHERE k >= :k", {"k": 25}) == 5
    rows = await brain.fetch_all("SELECT k FROM t WHERE v = :v ORDER BY k", {"v": 9})
    assert [r["k"] for r in rows] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert await brain.fetch_one("SELECT k FROM t WHERE k = :k", {"k": 999}) is None


async def test_executemany_is_atomic(brain: BrainStore) -> None:
    await brain.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    batch = [{"k": i} for i in range(50)] + [{"k": 7}]  # the last one collides
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await brain.executemany("INSERT INTO t (k) VALUES (:k)", batch)
    assert await brain.fetch_one("SELECT count(*) AS n FROM t") == {"n": 0}
    with pytest.raises(QueryParameterError, match=r"params_list\[1\] has no value for :k"):
        await brain.executemany("INSERT INTO t (k) VALUES (:k)", [{"k": 1}, {"x": 2}])


class CountingProxy:
    """A loopback TCP proxy that counts the reads it forwards from the server: a
    statement per round trip shows up as one read per statement at least."""

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.server_reads = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for src, dst, count in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.get_running_loop().create_task(self._pump(src, dst, count))
            self._tasks.add(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool
    ) -> None:
        try:
            while data := await src.read(65536):
                if count:
                    self.server_reads += 1
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


@pytest.mark.postgres
async def test_executemany_is_one_batch_not_a_round_trip_per_row(postgres_database: str) -> None:
    url = parse_url(postgres_database)
    assert url.port is not None
    async with CountingProxy(url.port) as proxy:
        through = dataclasses.replace(url, host="127.0.0.1", port=proxy.port).key
        async with ConnectionManager(through, degrade=False) as manager:
            brain = BrainStore(manager)
            await brain.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
            before = proxy.server_reads
            rows = [{"k": i, "v": f"row {i}"} for i in range(400)]
            assert await brain.executemany("INSERT INTO t (k, v) VALUES (:k, :v)", rows) == 400
            reads = proxy.server_reads - before
            assert await brain.fetch_one("SELECT count(*) AS n FROM t") == {"n": 400}
    assert reads < 40, f"{reads} server reads for 400 rows: not pipelined"


async def test_a_transaction_is_one_connection_committed_or_rolled_back(
    brain: BrainStore, observer: RecordingObserver
) -> None:
    await brain.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    leases_before = observer.count("lease_acquired")
    async with brain.transaction() as tx:
        await tx.execute("INSERT INTO t (k) VALUES (:k)", {"k": 1})
        await tx.executemany("INSERT INTO t (k) VALUES (:k)", [{"k": 2}, {"k": 3}])
        assert await tx.fetch_one("SELECT count(*) AS n FROM t") == {"n": 3}
        # Another connection does not see the uncommitted rows.
        assert await brain.fetch_one("SELECT count(*) AS n FROM t") == {"n": 0}
        assert len(await tx.fetch_all("SELECT k FROM t")) == 3
    # The transaction held one lease; the peek from outside took the other.
    assert observer.count("lease_acquired") - leases_before == 2
    assert await brain.fetch_one("SELECT count(*) AS n FROM t") == {"n": 3}

    with pytest.raises(RuntimeError, match="changed my mind"):
        async with brain.transaction() as tx:
            await tx.execute("DELETE FROM t")
            await tx.execute("INSERT INTO t (k) VALUES (:k)", {"k": 99})
            raise RuntimeError("changed my mind")
    assert [r["k"] for r in await brain.fetch_all("SELECT k FROM t ORDER BY k")] == [1, 2, 3]


async def test_close_and_health_check(manager: ConnectionManager, database_url: str) -> None:
    brain = BrainStore(manager)
    health = await brain.health_check()
    assert health["connected"] is True
    assert health["dialect"] == ("sqlite" if database_url.startswith("sqlite") else "postgresql")
    assert health["pool_max"] == 10 and health["pool_size"] >= 1
    assert "password" not in json.dumps(health)
    await brain.close()
    with pytest.raises(PoolClosed, match="closed"):
        await brain.fetch_one("SELECT 1 AS one")
    # The manager is not the store's: others keep using it.
    assert await BrainStore(manager).fetch_one("SELECT 1 AS one") == {"one": 1}


# -- captures and coherence ----------------------------------------------------------------


async def test_a_capture_writes_its_crystal_in_the_same_transaction(brain: BrainStore) -> None:
    content = "Python is great\n\n   for data   science. " * 10
    cid = await brain.capture(
        content, tags=["python", "data", "python"], metadata={"source": "cli"}, embedding=[0.5, 1]
    )
    capture = await brain.get_capture(cid)
    assert capture is not None
    assert capture.content == content
    assert capture.content_hash == hashlib.md5(content.encode()).hexdigest()
    assert capture.embedding == [0.5, 1.0] and capture.metadata == {"source": "cli"}
    assert capture.tags == ("python", "data")
    assert capture.summary is not None and capture.summary.startswith("Python is great for data")
    assert len(capture.summary) <= 200 and capture.summary.endswith("...")

    crystal = await brain.fetch_one(
        "SELECT id, content_hash, source_type FROM brain_crystals WHERE id = :id", {"id": cid}
    )
    assert crystal == {"id": cid, "content_hash": capture.content_hash, "source_type": "capture"}
    tags = await brain.fetch_all(
        "SELECT tag FROM brain_crystal_tags WHERE crystal_id = :id ORDER BY tag", {"id": cid}
    )
    assert [t["tag"] for t in tags] == ["data", "python"]
    assert (await check_coherence(brain._manager)).coherent


async def test_recapturing_an_id_replaces_it_coherently(brain: BrainStore) -> None:
    await brain.capture("first", capture_id="concept-1", tags=["a", "b"])
    await brain.capture("second", capture_id="concept-1", tags=["c"], summary="Second.")
    capture = await brain.get_capture("concept-1")
    assert capture is not None
    assert (capture.content, capture.summary, capture.tags) == ("second", "Second.", ("c",))
    assert capture.updated_at is not None and capture.updated_at > capture.captured_at
    assert [c.id for c in await brain.recent(10)] == ["concept-1"]
    tags = await brain.fetch_all("SELECT tag FROM brain_crystal_tags")
    assert tags == [{"tag": "c"}]


async def test_recent_is_newest_first(brain: BrainStore) -> None:
    ids = [await brain.capture(f"memory {i}") for i in range(5)]
    assert [c.id for c in await brain.recent(3)] == ids[::-1][:3]
    assert await brain.recent(0) == []


async def test_bad_captures_are_refused_before_any_write(brain: BrainStore) -> None:
    with pytest.raises(InvalidInput, match="at most 64"):
        await brain.capture("x", tags=["t" * 65])
    with pytest.raises(InvalidInput, match="non-empty str"):
        await brain.capture("x", tags=["ok", ""])
    with pytest.raises(InvalidInput, match="at most 64 characters"):
        await brain.capture("x", capture_id="c" * 65)
    with pytest.raises(InvalidInput, match="collection of str"):
        await brain.capture("x", tags="single")
    assert await brain.recent(10) == []


async def test_a_failed_capture_leaves_neither_row(brain: BrainStore, database_url: str) -> None:
    await brain.ensure_schema()
    # A tag the database refuses: the failure comes after the captures row and the
    # brain_crystals row were written, inside the same transaction.
    if database_url.startswith("sqlite"):
        await brain.execute(
            "CREATE TRIGGER refuse_tag BEFORE INSERT ON brain_crystal_tags "
            "WHEN NEW.tag = 'forbidden' BEGIN SELECT RAISE(ABORT, 'tag refused'); END"
        )
    else:
        await brain.execute(
            "CREATE FUNCTION refuse_tag() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.tag = 'forbidden' THEN RAISE EXCEPTION 'tag refused'; END IF; "
            "RETURN NEW; END $$"
        )
        await brain.execute(
            "CREATE TRIGGER refuse_tag BEFORE INSERT ON brain_crystal_tags "
            "FOR EACH ROW EXECUTE FUNCTION refuse_tag()"
        )
    with pytest.raises(Exception, match="tag refused"):
        await brain.capture("doomed", capture_id="doomed", tags=["fine", "forbidden"])
    for table, column in (
        ("captures", "id"),
        ("brain_crystals", "id"),
        ("brain_crystal_tags", "crystal_id"),
    ):
        row = await brain.fetch_one(
            f"SELECT count(*) AS n FROM {table} WHERE {column} = :id", {"id": "doomed"}
        )
        assert row == {"n": 0}, table
    assert await brain.get_capture("doomed") is None
    # The store keeps working on the same connections.
    assert await brain.get_capture(await brain.capture("fine", tags=["fine"])) is not None
    assert (await check_coherence(brain._manager)).coherent


async def test_the_orm_reads_what_capture_wrote(brain: BrainStore, database_url: str) -> None:
    cid = await brain.capture("read me through SQLAlchemy", tags=["orm", "raw"])
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session:
            crystal = await session.get(Crystal, cid)
            assert crystal is not None
            assert crystal.tags == ["orm", "raw"]
            assert crystal.summary == "read me through SQLAlchemy"
            assert crystal.access_count == 0 and crystal.source_type == "capture"
            # Aware UTC on both dialects (SQLite stores the UTC digits).
            assert crystal.created_at.utcoffset() == timedelta(0)
            assert abs(datetime.now(UTC) - crystal.created_at) < timedelta(minutes=5)
            assert crystal.updated_at == crystal.created_at
            tags = await session.scalars(
                select(CrystalTag.tag).where(CrystalTag.crystal_id == cid).order_by(CrystalTag.tag)
            )
            assert list(tags) == ["orm", "raw"]
    finally:
        await engine.dispose()


async def test_coherence_check_finds_and_repairs_both_directions(
    manager: ConnectionManager, brain: BrainStore, database_url: str
) -> None:
    good = await brain.capture("coherent one", tags=["ok"])
    # What old kgents could leave behind: Brain's raw store wrote a capture...
    await brain.execute(
        "INSERT INTO captures (id, content, content_hash, captured_at) VALUES (:id, :c, NULL, :at)",
        {
            "id": "lonely-capture",
            "c": "a capture   without\na crystal",
            "at": "2025-01-02T03:04:05",
        },
    )
    # ...and the SQLAlchemy track a crystal, through its own engine and pool.
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session, session.begin():
            session.add(
                Crystal(
                    id="lonely-crystal", content_hash="h", summary="a crystal alone", tags=["x"]
                )
            )
    finally:
        await engine.dispose()

    report = await check_coherence(manager)
    assert not report.coherent and not report.ok
    assert report.captures_without_crystals == ("lonely-capture",)
    assert report.crystals_without_captures == ("lonely-crystal",)
    assert (report.captures, report.crystals) == (2, 2)

    repaired = await check_coherence(manager, repair=True)
    assert repaired.ok and repaired.repaired
    assert repaired.created_crystals == ("lonely-capture",)
    assert repaired.created_captures == ("lonely-crystal",)
    assert (await check_coherence(manager)).coherent

    derived = await brain.get_capture("lonely-capture")
    assert derived is not None and derived.summary == "a capture without a crystal"
    crystal = await brain.fetch_one(
        "SELECT content_hash, source_ref FROM brain_crystals WHERE id = :id",
        {"id": "lonely-capture"},
    )
    assert crystal == {
        "content_hash": hashlib.md5(b"a capture   without\na crystal").hexdigest(),
        "source_ref": "coherence-repair",
    }
    restored = await brain.get_capture("lonely-crystal")
    assert restored is not None and restored.content == "a crystal alone"
    assert restored.metadata["connman_repair"]["content_from"] == "brain_crystals.summary"
    assert restored.tags == ("x",)  # the crystal itself is untouched
    # Nothing was deleted.
    assert {c.id for c in await brain.recent(10)} == {good, "lonely-capture", "lonely-crystal"}


def test_cli_check_coherence(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("KGENTS_POSTGRES_URL", "KGENTS_DGENT_BACKEND", "KGENTS_STORAGE_TIER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KGENTS_DATABASE_URL", database_url)

    async def make_incoherent() -> None:
        async with ConnectionManager(database_url, degrade=False) as manager:
            brain = BrainStore(manager)
            await brain.capture("fine")
            await brain.execute(
                "INSERT INTO captures (id, content, captured_at) "
                "VALUES ('orphan', 'o', '2025-01-01')"
            )

    anyio.run(make_incoherent)
    assert main(["check-coherence", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["coherent"] is False and report["captures_without_crystals"] == ["orphan"]

    assert main(["check-coherence", "--repair"]) == 0
    out = capsys.readouterr().out
    assert "created crystals           1" in out and "repaired: coherent now" in out

    assert main(["check-coherence"]) == 0
    assert "coherent" in capsys.readouterr().out


# -- both adapters on one manager ------------------------------------------------------------


class ServerConnections:
    """Samples, as fast as the server answers, how many backends carry one
    application_name (from a connection of its own, outside the pool); the peak."""

    def __init__(self, url: str, app: str) -> None:
        self.dsn = parse_url(url).connect_dsn()
        self.app = app
        self.peak = 0
        self.samples = 0
        self._done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ServerConnections:
        admin = await asyncpg.connect(self.dsn, server_settings={"application_name": "monitor"})

        async def sample() -> None:
            try:
                while not self._done.is_set():
                    n = await admin.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                        self.app,
                    )
                    self.peak = max(self.peak, n)
                    self.samples += 1
            finally:
                await admin.close()

        self._task = asyncio.get_running_loop().create_task(sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._done.set()
        assert self._task is not None
        await self._task


async def test_two_adapters_sixteen_tasks_each_on_ten_connections(database_url: str) -> None:
    app = f"adapters_{uuid.uuid4().hex[:10]}"
    observer = RecordingObserver()
    config = PoolConfig(max_size=10, application_name=app, consumer_limits={"brain": 3})
    errors: list[BaseException] = []
    rounds = 6

    async with ConnectionManager(
        database_url, config=config, degrade=False, observer=observer
    ) as manager:
        dgent, brain = DgentStore(manager), BrainStore(manager)
        await dgent.ensure_schema()
        await brain.ensure_schema()

        async def dgent_worker(i: int) -> None:
            parent = None
            for n in range(rounds):
                try:
                    datum = Datum(id=f"w{i}-{n}", content=f"{i}/{n}".encode(), causal_parent=parent)
                    await dgent.put(datum)
                    parent = datum.id
                    assert await dgent.exists(datum.id)
                except Exception as exc:
                    errors.append(exc)

        async def brain_worker(i: int) -> None:
            for n in range(rounds):
                try:
                    await brain.capture(f"capture {i}/{n}", capture_id=f"c{i}-{n}", tags=[f"w{i}"])
                    await brain.fetch_all(
                        "SELECT id FROM captures WHERE id = :id", {"id": f"c{i}-{n}"}
                    )
                except Exception as exc:
                    errors.append(exc)

        async def run_all() -> None:
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(dgent_worker, i)
                        tg.start_soon(brain_worker, i)

        if database_url.startswith("postgresql"):
            async with ServerConnections(database_url, app) as server:
                await run_all()
            assert server.samples > 0
            assert 2 <= server.peak <= 10, f"peak {server.peak} server connections"
        else:
            await run_all()

        assert not [e for e in errors if "locked" in str(e)], errors
        assert errors == []
        assert await dgent.count() == 16 * rounds
        chain = await dgent.causal_chain(f"w7-{rounds - 1}")
        assert [d.id for d in chain] == [f"w7-{n}" for n in range(rounds)]
        assert await brain.fetch_one("SELECT count(*) AS n FROM captures") == {"n": 16 * rounds}
        assert await brain.fetch_one("SELECT count(*) AS n FROM brain_crystal_tags") == {
            "n": 16 * rounds
        }
        report = await check_coherence(manager)
        assert report.coherent and report.crystals == 16 * rounds
        [stats] = manager.stats()
        assert stats.size <= 10

    assert peak_in_use(observer) <= 10
    assert 1 <= peak_in_use(observer, "brain") <= 3
    assert peak_in_use(observer, "dgent") > 3  # D-gent used the connections Brain could not


async def test_brain_at_its_limit_cannot_starve_dgent(database_url: str) -> None:
    config = PoolConfig(max_size=10, consumer_limits={"brain": 3})
    async with ConnectionManager(database_url, config=config, degrade=False) as manager:
        dgent, brain = DgentStore(manager), BrainStore(manager)
        await dgent.ensure_schema()
        await brain.ensure_schema()
        held = [await manager.acquire("brain") for _ in range(3)]  # Brain is at its limit
        captured: list[str] = []

        async def capture(i: int) -> None:
            captured.append(await brain.capture(f"queued {i}"))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(capture, i)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as dgent_tasks:
                    for i in range(16):
                        dgent_tasks.start_soon(dgent.put, Datum(id=f"d{i}", content=b"x"))
            # Sixteen D-gent writes went through; Brain's four still wait their turn.
            [stats] = manager.stats()
            assert captured == []
            assert stats.waiting_by_consumer.get("brain") == 4
            assert stats.consumers.get("brain") == 3
            for lease in held:
                await lease.release()
        assert len(captured) == 4
        assert await dgent.count() == 16


async def test_sixteen_brain_stores_first_used_at_once(manager: ConnectionManager) -> None:
    errors: list[BaseException] = []

    async def first_use(i: int) -> None:
        try:
            await BrainStore(manager).capture(f"first {i}", tags=["t"])
        except Exception as exc:
            errors.append(exc)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(first_use, i)
    assert errors == []
    report = await check_coherence(manager)
    assert report.coherent and report.captures == 16


async def test_an_old_captures_table_gains_access_count(manager: ConnectionManager) -> None:
    # kgents created captures without access_count and added it later by ALTER TABLE.
    async with manager.lease("legacy") as lease:
        await lease.connection.execute(
            "CREATE TABLE captures (id TEXT PRIMARY KEY, content TEXT NOT NULL, "
            "content_hash TEXT, embedding_json TEXT, captured_at TEXT NOT NULL, "
            "updated_at TEXT, metadata_json TEXT)"
        )
        if lease.dialect == "sqlite":
            await lease.connection.commit()
    brain = BrainStore(manager)
    capture = await brain.get_capture(await brain.capture("after the upgrade"))
    assert capture is not None and capture.access_count == 0
