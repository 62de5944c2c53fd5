"""A D-gent prefix listing reads about what it returns, whatever the planner's
estimates: a prefix range on ``idx_data_id_prefix``, never an ordered scan that
filters the whole table, under stale or skewed statistics and under generic plans
(which asyncpg's prepared statements get after five executions)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from connman import ConnectionManager, PoolConfig
from connman.kgents.dgent import DgentStore

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

ROWS = 50_000
CALLS = 20


@pytest.fixture
async def manager(postgres_database: str) -> AsyncIterator[ConnectionManager]:
    # One connection: the listing and the statistics it is measured by are the same
    # backend's (a backend's counters reach pg_stat_* when it flushes them).
    config = PoolConfig(min_size=1, max_size=1)
    async with ConnectionManager(postgres_database, config=config, degrade=False) as m:
        yield m


async def _fill(manager: ConnectionManager, statistics: str) -> None:
    """50k rows, 3 of them ``rare-``; the planner's statistics as ``statistics`` says:
    ``fresh`` (ANALYZE after the inserts), ``stale`` (ANALYZE before the rare rows
    came) or ``skewed`` (ANALYZE while half the table started with ``rare-``; those
    rows are gone since)."""
    await DgentStore(manager).ensure_schema()
    now = time.time()
    async with manager.lease("setup") as lease:
        conn = lease.connection
        # No autovacuum: it would ANALYZE the table behind the test's back.
        await conn.execute("ALTER TABLE data SET (autovacuum_enabled = false)")
        await conn.execute(
            "INSERT INTO data (id, content, created_at) SELECT 'bulk-' || lpad(i::text, 6, "
            "'0'), 'x', $1 + i FROM generate_series(1, $2) i",
            now,
            ROWS,
        )
        if statistics == "skewed":
            await conn.execute(
                "INSERT INTO data (id, content, created_at) "
                "SELECT 'rare-old-' || i, 'z', $1 + i FROM generate_series(1, $2) i",
                now,
                ROWS,
            )
        if statistics in ("stale", "skewed"):
            await conn.execute("ANALYZE data")
        if statistics == "skewed":
            await conn.execute("DELETE FROM data WHERE id LIKE 'rare-old-%'")
            await conn.execute("VACUUM data")  # dead rows gone, column statistics kept
        await conn.execute(
            "INSERT INTO data (id, content, created_at) "
            "SELECT 'rare-' || i, 'y', $1 - i FROM generate_series(1, 3) i",
            now,
        )
        if statistics == "fresh":
            await conn.execute("ANALYZE data")


async def _tuples_read(manager: ConnectionManager) -> int:
    """Tuples of ``data`` read so far by this database's backends (index entries
    and sequential-scan rows), after this backend flushed its own counters."""
    async with manager.lease("stats") as lease:
        conn = lease.connection
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT (SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'data')"
            " + (SELECT sum(idx_tup_read) FROM pg_stat_user_indexes WHERE relname = 'data')"
        )
        return int(value)


async def _listing_reads(manager: ConnectionManager, prefix: str, expected: int) -> int:
    store = DgentStore(manager)
    before = await _tuples_read(manager)
    for _ in range(CALLS):
        assert len(await store.list(prefix=prefix)) == expected
    return (await _tuples_read(manager) - before) // CALLS


@pytest.mark.parametrize("statistics", ["fresh", "stale", "skewed"])
@pytest.mark.parametrize("plan_cache_mode", ["auto", "force_generic_plan"])
async def test_a_prefix_listing_reads_what_it_returns(
    manager: ConnectionManager, statistics: str, plan_cache_mode: str
) -> None:
    await _fill(manager, statistics)
    async with manager.lease("setup") as lease:
        # Session-wide on the only connection: every listing below plans this way.
        await lease.connection.execute(f"SET plan_cache_mode = {plan_cache_mode}")
    per_call = await _listing_reads(manager, "rare-", 3)
    assert per_call <= 30, f"{per_call} tuples read per call for 3 rows"
