"""pytest plugin (entry point ``pytest11``): a real PostgreSQL for any test suite.

Fixtures:

- ``postgres_url`` (session): a URL to a running PostgreSQL, from the first source
  that works: ``CONNMAN_TEST_POSTGRES_URL``; testcontainers' PostgresContainer when a
  Docker engine answers and the image (``CONNMAN_TEST_POSTGRES_IMAGE``, default
  ``postgres:16-alpine``) is present; a throwaway cluster from the local binaries.
  Otherwise the test is skipped with a reason that says how to get one, or fails
  when ``CONNMAN_REQUIRE_POSTGRES=1``.
- ``postgres_database`` (function): a fresh, empty database on that server, dropped
  afterwards; its URL.
- ``postgres_cluster`` (function): a cluster of the test's own
  (:class:`~connman.testing.cluster.LocalCluster`, with ``stop()``, ``start()``,
  ``restart()``) for tests that break servers. Never the shared one.
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

__all__ = ["PostgresServer"]

_TRUE = ("1", "true", "yes", "on")
_DEFAULT_IMAGE = "postgres:16-alpine"
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


def start_container() -> tuple[str, Any]:
    """Start testcontainers' PostgresContainer; raise RuntimeError with the reason it
    cannot (no testcontainers, no Docker engine, image absent: never pulled here)."""
    try:
        import docker
    except ImportError:
        raise RuntimeError(
            "testcontainers is not installed (pip install 'connman[testing]')"
        ) from None
    try:  # testcontainers >= 4.14 moved the module; older releases have only the old path
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        from testcontainers.postgres import PostgresContainer
    image = os.environ.get("CONNMAN_TEST_POSTGRES_IMAGE", "").strip() or _DEFAULT_IMAGE
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        raise RuntimeError(f"no Docker engine answers ({type(exc).__name__}: {exc})") from None
    try:
        client.images.get(image)
    except Exception:
        raise RuntimeError(
            f"the Docker image {image} is not present (docker pull {image})"
        ) from None
    container = PostgresContainer(image, username="connman", password="connman", dbname="connman")
    container.start()
    raw = container.get_connection_url(driver=None)
    url = raw.replace("postgresql://", "postgresql+asyncpg://", 1)
    return url, container.stop


def _find_server() -> PostgresServer:
    skipped: list[str] = []
    env_url = os.environ.get("CONNMAN_TEST_POSTGRES_URL", "").strip()
    if env_url:
        return PostgresServer(url=env_url, kind="env")
    skipped.append("CONNMAN_TEST_POSTGRES_URL is not set")
    try:
        url, stop = start_container()
        return PostgresServer(url=url, kind="testcontainers", skipped=skipped, _stop=stop)
    except RuntimeError as exc:
        skipped.append(f"testcontainers: {exc}")
    try:
        cluster = LocalCluster()
        cluster.start()
    except ClusterUnavailable as exc:
        skipped.append(f"local binaries: {exc}")
        raise ClusterUnavailable("; ".join(skipped)) from None
    return PostgresServer(url=cluster.url, kind="local", skipped=skipped, _stop=cluster.destroy)


# -- hooks -------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgres: the test needs a real PostgreSQL")


_POSTGRES_FIXTURES = frozenset(
    {"postgres_server", "postgres_url", "postgres_database", "postgres_cluster", "connman_manager"}
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CONNMAN_REQUIRE_POSTGRES=1, a skipped PostgreSQL test is a failure,
    whatever skipped it (a fixture, a marker, the test itself)."""
    report = yield
    if report.skipped and require_postgres():
        names = set(getattr(item, "fixturenames", ()))
        if names & _POSTGRES_FIXTURES or item.get_closest_marker("postgres") is not None:
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
