"""The point of connman: SQLAlchemy, D-gent and Brain on one pool, at once, on both
dialects; and `connman demo`, the same thing as a command."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker

from connman import ConnectionManager, PoolConfig
from connman.adapters.sqlalchemy import create_async_engine
from connman.cli import main
from connman.kgents.brain import BrainStore
from connman.kgents.coherence import check_coherence
from connman.kgents.dgent import Datum, DgentStore
from connman.kgents.schema.models import BrainSettings
from tests.support.faultkit import PeakMonitor, wait_until
from tests.support.pg_access import create_role, drop_role, with_role

TASKS = 16
OPS = 8


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        yield request.getfixturevalue("postgres_database")
    else:
        yield f"sqlite:///{tmp_path}/membrane.db"


async def _run_all(manager: ConnectionManager, errors: list[str], seen: Counter[str]) -> None:
    dgent, brain = DgentStore(manager), BrainStore(manager)
    engine = create_async_engine(manager)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    await brain.ensure_schema()
    await dgent.ensure_schema()

    async def orm(i: int) -> None:
        for n in range(OPS):
            async with sessions() as session, session.begin():
                session.add(BrainSettings(id=f"s-{i}-{n}", config={"n": n}))
            seen["sqlalchemy"] += 1

    async def chain(i: int) -> None:
        parent = None
        for n in range(OPS):
            parent = await dgent.put(Datum(id=f"d-{i}-{n}", content=b"x" * n, causal_parent=parent))
            seen["dgent"] += 1

    async def capture(i: int) -> None:
        for n in range(OPS):
            await brain.capture(f"capture {i}/{n}", tags=("t",), capture_id=f"c-{i}-{n}")
            seen["brain"] += 1

    async def guarded(work: Any) -> None:
        try:
            await work
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    try:
        async with anyio.create_task_group() as tg:
            for i in range(TASKS):
                tg.start_soon(guarded, orm(i))
                tg.start_soon(guarded, chain(i))
                tg.start_soon(guarded, capture(i))
    finally:
        await engine.dispose()


async def test_three_adapters_share_one_pool(url: str) -> None:
    app = f"three_{uuid.uuid4().hex[:8]}"
    config = PoolConfig(max_size=10, application_name=app)
    errors: list[str] = []
    seen: Counter[str] = Counter()
    async with ConnectionManager(url, config=config, degrade=False) as manager:
        if url.startswith("sqlite"):
            with anyio.fail_after(120):
                await _run_all(manager, errors, seen)
        else:
            async with PeakMonitor(url, app) as monitor:
                with anyio.fail_after(120):
                    await _run_all(manager, errors, seen)
            assert 1 <= monitor.peak <= 10
        [stats] = manager.stats()
        assert stats.counters["connections_opened"] <= 10
        assert stats.in_use == 0
        # Every row is there, and the Brain tracks agree.
        dgent, brain = DgentStore(manager), BrainStore(manager)
        assert await dgent.count() == TASKS * OPS
        assert len(await dgent.causal_chain(f"d-0-{OPS - 1}")) == OPS
        assert (await brain.fetch_one("SELECT count(*) AS n FROM captures"))["n"] == TASKS * OPS
        engine = create_async_engine(manager)
        async with engine.connect() as conn:
            settings = await conn.scalar(select(func.count()).select_from(BrainSettings))
        await engine.dispose()
        assert settings == TASKS * OPS
        assert (await check_coherence(manager)).coherent
    assert errors == []
    assert seen == {"sqlalchemy": TASKS * OPS, "dgent": TASKS * OPS, "brain": TASKS * OPS}


async def test_capped_sqlalchemy_cannot_starve_dgent(url: str) -> None:
    config = PoolConfig(max_size=6, consumer_limits={"sqlalchemy": 2})
    async with ConnectionManager(url, config=config, degrade=False) as manager:
        pool = manager.default_pool
        assert pool is not None
        dgent = DgentStore(manager)
        await dgent.ensure_schema()
        engine = create_async_engine(manager)

        async def checkout() -> Any:
            return await engine.connect()

        held = [await checkout() for _ in range(2)]  # sqlalchemy at its limit
        blocked = [asyncio.get_running_loop().create_task(checkout()) for _ in range(4)]
        try:
            await wait_until(lambda: pool.stats().waiting_by_consumer.get("sqlalchemy", 0) == 4)
            with anyio.fail_after(10):
                # Four SQLAlchemy checkouts wait ahead of D-gent; D-gent is not held up.
                async with anyio.create_task_group() as tg:
                    for i in range(16):
                        tg.start_soon(dgent.put, Datum(id=f"free-{i}", content=b"x"))
            assert await dgent.count() == 16
            assert pool.stats().consumers.get("sqlalchemy") == 2
            assert not any(task.done() for task in blocked)
        finally:
            for conn in held:
                await conn.close()
            for task in blocked:  # each gets its turn as the one before closes
                await (await task).close()
            await engine.dispose()


def test_demo_runs_on_the_embedded_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("KGENTS_DATABASE_URL", "KGENTS_POSTGRES_URL", "KGENTS_DGENT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert main(["demo", "--seconds", "1", "--tasks", "2", "--metrics-port", "0"]) == 0
    out = capsys.readouterr().out
    assert "portable storage sqlite+aiosqlite:///" in out
    assert "errors                       0" in out
    assert "captures and crystals coherent  yes" in out
    assert (tmp_path / "xdg" / "kgents" / "membrane.db").exists()


@pytest.mark.postgres
def test_demo_runs_on_postgres_with_no_password_shown(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A role of the test's own with a password nothing else contains: the server may
    # check it or trust, and either way it must not show.
    password = "demo-secret-pw"
    role = asyncio.run(create_role(postgres_database, password))
    try:
        monkeypatch.setenv("KGENTS_DATABASE_URL", with_role(postgres_database, role, password))
        assert main(["demo", "--seconds", "1", "--tasks", "2", "--metrics-port", "-1"]) == 0
    finally:
        asyncio.run(drop_role(postgres_database, role))
    captured = capsys.readouterr()
    assert f"unified storage postgresql+asyncpg://{role}:***@" in captured.out
    assert "errors                       0" in captured.out
    assert password not in captured.out + captured.err
