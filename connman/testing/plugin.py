"""pytest plugin (entry point ``pytest11``): a real PostgreSQL for any test suite.

Fixtures:

- ``postgres_url`` (session): a URL to a running PostgreSQL, from the first source
  that works: ``CONNMAN_TEST_POSTGRES_URL``; testcontainers' PostgresContainer when a
  Docker engine answers and the image (``CONNMAN_TEST_POSTGRES_IMAGE``, default
  ``postgres:15``) is present; a throwaway cluster from the local binaries.
  ``CONNMAN_TEST_POSTGRES=env|docker|local`` forces one source (no fallback).
  Otherwise the test is skipped with a reason that says how to get one, or fails
  when ``CONNMAN_REQUIRE_POSTGRES=1``.
- ``postgres_database`` (function): a fresh, empty database on that server, dropped
  afterwards; its URL.
- ``postgres_cluster`` (function): a cluster of the test's own
  (:class:`~connman.testing.cluster.LocalCluster`, with ``stop()``, ``start()``,
  ``restart()``) for tests that break servers. Never the shared one.
- ``postgres_container`` (function): a PostgreSQL container of the test's own
  (:class:`~connman.testing.containers.PostgresContainerServer`, with ``stop()`` and
  ``start()``), through testcontainers, removed afterwards; without a Docker engine
  the test is skipped, or fails when ``CONNMAN_REQUIRE_DOCKER=1``.
- ``sqlite_url`` (function): a SQLite file in the test's tmp_path.
- ``connman_manager`` (function, async): a started ConnectionManager on
  ``postgres_database``, closed afterwards.
- ``anyio_backend``: pinned to ``"asyncio"`` (asyncpg and aiosqlite run on asyncio
  only); a conftest.py may override it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from connman.testing.cluster import ClusterUnavailable, LocalCluster
from connman.testing.containers import (
    DockerUnavailable,
    PostgresContainerServer,
    docker_engine,
    reap_leftovers,
)

__all__ = ["PostgresServer"]

_TRUE = ("1", "true", "yes", "on")
_SOURCES = ("env", "docker", "local")
_server_key = pytest.StashKey["PostgresServer"]()


@dataclass
class PostgresServer:
    """Where the session's PostgreSQL came from."""

    url: str
    kind: str  # "env" | "testcontainers" | "local"
    skipped: list[str] = field(default_factory=list)
    """Why earlier sources were passed over."""
    _stop: Any = None

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def require_postgres() -> bool:
    """True when a missing PostgreSQL must fail the run (CI sets it)."""
    return os.environ.get("CONNMAN_REQUIRE_POSTGRES", "").strip().lower() in _TRUE


def unavailable(reason: str) -> NoReturn:
    """Skip (or fail, under CONNMAN_REQUIRE_POSTGRES=1) a test that needs PostgreSQL."""
    if require_postgres():
        pytest.fail(f"PostgreSQL required (CONNMAN_REQUIRE_POSTGRES=1) but {reason}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {reason}")


def require_docker() -> bool:
    """True when a test that needs a Docker engine must fail rather than skip
    (``.ci/run`` sets ``CONNMAN_REQUIRE_DOCKER=1`` after starting one)."""
    return os.environ.get("CONNMAN_REQUIRE_DOCKER", "").strip().lower() in _TRUE


def docker_unavailable(reason: str) -> NoReturn:
    """Skip (or fail, under CONNMAN_REQUIRE_DOCKER=1) a test that needs Docker."""
    if require_docker():
        pytest.fail(f"Docker required (CONNMAN_REQUIRE_DOCKER=1) but {reason}", pytrace=False)
    pytest.skip(f"no Docker: {reason}")


def start_container() -> tuple[str, Any]:
    """Start a PostgreSQL container (testcontainers); its URL and a function that
    removes it. Raise :class:`~connman.testing.containers.DockerUnavailable` (a
    RuntimeError) with the reason it cannot: no testcontainers, no Docker engine, the
    image absent (never pulled here)."""
    _reap_once()
    server = PostgresContainerServer()
    server.start()
    return server.url, server.remove


def forced_source() -> str | None:
    """``CONNMAN_TEST_POSTGRES``: ``env``, ``docker`` or ``local`` forces that source
    of the session's PostgreSQL; unset or ``auto``: the first that works."""
    value = os.environ.get("CONNMAN_TEST_POSTGRES", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in _SOURCES:
        raise ClusterUnavailable(
            f"CONNMAN_TEST_POSTGRES={value!r}: expected one of env, docker, local, auto"
        )
    return value


def _find_server() -> PostgresServer:
    forced = forced_source()
    skipped: list[str] = []
    if forced in (None, "env"):
        env_url = os.environ.get("CONNMAN_TEST_POSTGRES_URL", "").strip()
        if env_url:
            return PostgresServer(url=env_url, kind="env")
        skipped.append("CONNMAN_TEST_POSTGRES_URL is not set")
    if forced in (None, "docker"):
        try:
            url, stop = start_container()
            return PostgresServer(url=url, kind="testcontainers", skipped=skipped, _stop=stop)
        except DockerUnavailable as exc:
            skipped.append(f"testcontainers: {exc}")
    if forced in (None, "local"):
        try:
            cluster = LocalCluster()
            cluster.start()
            return PostgresServer(
                url=cluster.url, kind="local", skipped=skipped, _stop=cluster.destroy
            )
        except ClusterUnavailable as exc:
            skipped.append(f"local binaries: {exc}")
    if forced is not None:
        skipped.append(f"CONNMAN_TEST_POSTGRES={forced} allows no other source")
    raise ClusterUnavailable("; ".join(skipped))


_reaped = False


def _reap_once() -> None:
    """Once per process, before the first container: remove what killed runs left."""
    global _reaped
    if _reaped:
        return
    client = docker_engine()
    try:
        reap_leftovers(client)
    finally:
        client.close()
    _reaped = True


# -- hooks -------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: the test needs a real PostgreSQL")
    config.addinivalue_line(
        "markers", "docker: the test needs a Docker engine (CONNMAN_REQUIRE_DOCKER=1: never skip)"
    )


_POSTGRES_FIXTURES = frozenset(
    {"postgres_server", "postgres_url", "postgres_database", "postgres_cluster", "connman_manager"}
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CONNMAN_REQUIRE_POSTGRES=1, a skipped PostgreSQL test is a failure,
    whatever skipped it (a fixture, a marker, the test itself); under
    CONNMAN_REQUIRE_DOCKER=1, so is a skipped Docker test."""
    report = yield
    if not report.skipped:
        return report
    names = set(getattr(item, "fixturenames", ()))
    needs_docker = "postgres_container" in names or item.get_closest_marker("docker") is not None
    if needs_docker and require_docker():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs Docker and would have been skipped "
            f"({report.longrepr}); CONNMAN_REQUIRE_DOCKER=1 forbids that"
        )
    elif require_postgres() and (
        names & _POSTGRES_FIXTURES or item.get_closest_marker("postgres") is not None
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} needs PostgreSQL and would have been skipped "
            f"({report.longrepr}); CONNMAN_REQUIRE_POSTGRES=1 forbids that"
        )
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    server = config.stash.get(_server_key, None)
    if server is not None:
        from connman.urls import parse_url

        shown = parse_url(server.url).redacted()
        terminalreporter.write_line(f"connman.testing: PostgreSQL from {server.kind} ({shown})")


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncpg, aiosqlite and SQLAlchemy's asyncio layer run on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """The session's PostgreSQL (see the module docstring for the order of sources)."""
    try:
        server = _find_server()
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    request.config.stash[_server_key] = server
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of the session's PostgreSQL (``postgresql+asyncpg://...``)."""
    return postgres_server.url


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for one test; its URL. Dropped afterwards."""
    from connman.urls import parse_url

    base = parse_url(postgres_server.url)
    name = f"connman_test_{uuid.uuid4().hex[:12]}"
    admin = base.connect_dsn()
    admin_sql(admin, f'CREATE DATABASE "{name}"')
    url = dataclasses.replace(base, database=name).key
    try:
        yield url
    finally:
        admin_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_cluster() -> Iterator[LocalCluster]:
    """A started PostgreSQL cluster of this test's own, destroyed afterwards."""
    with throwaway_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def throwaway_cluster(*setup: str, **options: Any) -> Iterator[LocalCluster]:
    """A started :class:`LocalCluster` (``options``: its keyword arguments, e.g.
    ``max_connections``, ``settings``), with each ``setup`` statement run as the
    superuser, destroyed on exit; skips the test (see :func:`unavailable`) when no
    cluster can be made. For fixtures of any scope."""
    try:
        cluster = LocalCluster(**options)
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    try:
        cluster.start()
        for statement in setup:
            admin_sql(cluster.dsn, statement)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_container() -> Iterator[PostgresContainerServer]:
    """A started PostgreSQL container of this test's own (testcontainers), removed
    afterwards, also when the test fails."""
    server = PostgresContainerServer()
    try:
        _reap_once()
        server.start()
    except DockerUnavailable as exc:
        server.remove()
        docker_unavailable(str(exc))
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    """A SQLite database file in the test's tmp_path (not created yet)."""
    return f"sqlite+aiosqlite:///{tmp_path}/membrane.db"


@pytest.fixture
async def connman_manager(postgres_database: str) -> AsyncIterator[Any]:
    """A started ConnectionManager on a fresh database; closed afterwards."""
    from connman import ConnectionManager

    manager = ConnectionManager(postgres_database)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.aclose()


def admin_sql(dsn: str, sql: str) -> None:
    """Run ``sql`` on a fresh connection to ``dsn`` (from sync or async code)."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=30)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # In a thread of its own: this may be called while an event loop runs here.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()
