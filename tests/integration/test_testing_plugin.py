"""connman.testing: where a suite's PostgreSQL comes from, and what happens without one."""

from __future__ import annotations

import asyncpg
import pytest

from connman import ConnectionManager, parse_url
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import start_container

pytest_plugins = ["pytester"]


async def test_testcontainers_path_or_a_reason_to_skip() -> None:
    """Runs where a Docker engine answers and the image is present; elsewhere it says
    why not (this machine: no engine, or no image and no registry)."""
    try:
        url, stop = start_container()
    except RuntimeError as exc:
        pytest.skip(f"testcontainers unavailable here: {exc}")
    try:
        async with ConnectionManager(url, degrade=False) as manager, manager.lease("t") as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1
    finally:
        stop()


def test_start_container_explains_a_missing_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(RuntimeError, match="no Docker engine answers"):
        start_container()


async def test_postgres_database_is_fresh_and_private(postgres_database: str) -> None:
    conn = await asyncpg.connect(parse_url(postgres_database).connect_dsn())
    try:
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    assert tables == 0
    assert name.startswith("connman_test_")


def test_cluster_restart_keeps_port_and_data() -> None:
    import asyncio

    async def query(cluster: LocalCluster, sql: str) -> object:
        conn = await asyncpg.connect(cluster.dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    with LocalCluster() as cluster:
        port = cluster.port
        asyncio.run(query(cluster, "CREATE TABLE kept (x int)"))
        cluster.restart()
        assert cluster.port == port
        assert asyncio.run(query(cluster, "SELECT to_regclass('kept')::text")) == "kept"
        cluster.stop()
        with pytest.raises(OSError, match=r"Connect call failed|refused"):
            asyncio.run(query(cluster, "SELECT 1"))


def test_required_postgres_turns_skips_into_failures(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from connman.testing.plugin import unavailable

        def test_needs_pg(postgres_url):
            pass

        @pytest.mark.postgres
        def test_marked():
            unavailable("no server in this test")

        def test_unrelated_skip():
            pytest.skip("not about postgres")
        """
    )
    monkeypatch.setenv("CONNMAN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/x")
    monkeypatch.setenv("CONNMAN_REQUIRE_POSTGRES", "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*CONNMAN_REQUIRE_POSTGRES=1*"])
    monkeypatch.delenv("CONNMAN_REQUIRE_POSTGRES")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=2)
