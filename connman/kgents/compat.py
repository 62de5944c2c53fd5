"""kgents' storage interfaces, served by connman: adopting connman is an import change.

Each class and function here has the name and signature of the kgents one it
replaces, and does what kgents' did, on leases of the one process-wide manager
(:func:`connman.get_manager`), so a kgents process that swaps these imports opens one
pool per database instead of one per backend object:

- ``agents.d.datum.Datum`` -> :class:`Datum` (the D-gent adapter's own);
- ``agents.d.protocol.DgentProtocol`` / ``BaseDgent`` -> :class:`DgentProtocol` /
  :class:`BaseDgent`;
- ``agents.d.backends.sqlite.SQLiteBackend`` / ``...postgres.PostgresBackend`` ->
  :class:`SQLiteBackend` / :class:`PostgresBackend`, each a
  ``DgentStore(semantics="kgents")`` (:mod:`connman.kgents.dgent`);
- ``protocols.cli.instance_db.interfaces.IRelationalStore`` and its
  ``SQLiteRelationalStore`` / ``PostgresRelationalStore`` -> :class:`IRelationalStore`,
  :class:`SQLiteRelationalStore` / :class:`PostgresRelationalStore` (leases, ``:name``
  binding of :mod:`connman.adapters._params`);
- ``models.base.get_engine`` / ``get_session_factory`` / ``get_async_session`` /
  ``init_db`` / ``close_db`` -> the same names here, on
  :func:`connman.adapters.sqlalchemy.create_async_engine`;
- ``models.base.get_database_url`` -> :func:`get_database_url`
  (:func:`connman.resolve_storage`).

What changes for kgents: one pool per database (``manager.stats()``), its limits and
metrics per consumer (``dgent``, ``relational``, ``sqlalchemy``). Constructor arguments
that sized the old private pools (``min_pool_size``, ``max_pool_size``, ``wal_mode``)
are accepted and ignored: the pool is connman's (``KGENTS_POOL_MAX_SIZE``, per-consumer
limits with ``KGENTS_POOL_CONSUMER_LIMITS``; SQLite files are always in WAL mode).
``close()`` closes nothing shared: the connections belong to the manager.

Deliberate differences, each where kgents' behaviour was a fault rather than a
contract: a ``list`` prefix is literal (kgents' ``LIKE 'prefix%'`` read ``_`` and
``%`` as wildcards, and was case-insensitive on SQLite) and equal times are ordered by
id, newest first; a negative ``limit`` is refused; a causal chain that loops raises
:class:`~connman.AdapterError` instead of never returning; a ``:name`` without a value
raises :class:`~connman.QueryParameterError` instead of binding NULL;
``get_database_url()`` adds no per-test suffix.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from connman.adapters._raw import RawSQL, transaction
from connman.adapters.sqlalchemy import create_async_engine
from connman.kgents.brain import BrainQueries, BrainTransaction
from connman.kgents.dgent import Datum, DgentStore
from connman.kgents.schema import models
from connman.manager import ConnectionManager, Lease, get_manager
from connman.urls import DatabaseURL

__all__ = [
    "DEFAULT_DATA_DIR",
    "BaseDgent",
    "Datum",
    "DgentProtocol",
    "IRelationalStore",
    "PostgresBackend",
    "PostgresRelationalStore",
    "SQLiteBackend",
    "SQLiteRelationalStore",
    "close_db",
    "get_async_session",
    "get_database_url",
    "get_engine",
    "get_session_factory",
    "init_db",
]

DEFAULT_DATA_DIR = Path.home() / ".kgents" / "data"
"""Where :class:`SQLiteBackend` keeps ``{namespace}.db`` without a ``data_dir``."""


# -- D-gent --------------------------------------------------------------------------------


@runtime_checkable
class DgentProtocol(Protocol):
    """What every D-gent backend does (kgents' ``DgentProtocol``)."""

    async def put(self, datum: Datum) -> str:
        """Store ``datum`` (replacing one with its id); its id."""
        ...

    async def get(self, id: str) -> Datum | None:
        """The datum ``id``, or None."""
        ...

    async def delete(self, id: str) -> bool:
        """Remove datum ``id``; True if it existed."""
        ...

    async def list(
        self, prefix: str | None = None, after: float | None = None, limit: int = 100
    ) -> builtins.list[Datum]:
        """Data newest first, filtered by id prefix and creation time."""
        ...

    async def causal_chain(self, id: str) -> builtins.list[Datum]:
        """``id`` and its ancestors, oldest first; empty if ``id`` does not exist."""
        ...

    async def exists(self, id: str) -> bool:
        """True if datum ``id`` exists."""
        ...

    async def count(self) -> int:
        """The number of data."""
        ...


class BaseDgent:
    """kgents' base class for backends: ``exists`` and ``count`` through ``get`` and
    ``list``; the five core methods are for the subclass."""

    async def exists(self, id: str) -> bool:
        """True if ``get(id)`` finds it."""
        return await self.get(id) is not None

    async def count(self) -> int:
        """The length of ``list(limit=1_000_000)``."""
        return len(await self.list(limit=1_000_000))

    async def put(self, datum: Datum) -> str:
        """Store ``datum``; its id."""
        raise NotImplementedError

    async def get(self, id: str) -> Datum | None:
        """The datum ``id``, or None."""
        raise NotImplementedError

    async def delete(self, id: str) -> bool:
        """Remove datum ``id``; True if it existed."""
        raise NotImplementedError

    async def list(
        self, prefix: str | None = None, after: float | None = None, limit: int = 100
    ) -> builtins.list[Datum]:
        """Data newest first."""
        raise NotImplementedError

    async def causal_chain(self, id: str) -> builtins.list[Datum]:
        """``id`` and its ancestors, oldest first."""
        raise NotImplementedError


class _StoreBackend(BaseDgent):
    """A kgents D-gent backend as a :class:`DgentStore` with ``semantics="kgents"``."""

    def __init__(self, url: str, *, manager: ConnectionManager | None, consumer: str) -> None:
        self._manager = manager
        self._consumer = consumer
        self._url = url
        self._store = DgentStore(manager, consumer=consumer, url=url, semantics="kgents")

    async def put(self, datum: Datum) -> str:
        """Store ``datum``, replacing a datum with the same id; its id."""
        return await self._store.put(datum)

    async def get(self, id: str) -> Datum | None:
        """The datum ``id``, or None."""
        return await self._store.get(id)

    async def delete(self, id: str) -> bool:
        """Remove datum ``id``; True if it existed."""
        return await self._store.delete(id)

    async def list(
        self, prefix: str | None = None, after: float | None = None, limit: int = 100
    ) -> builtins.list[Datum]:
        """Data newest first (ids starting with ``prefix``, created after ``after``)."""
        return await self._store.list(prefix, after, limit)

    async def causal_chain(self, id: str) -> builtins.list[Datum]:
        """``id`` and its ancestors, oldest first, up to the first missing link."""
        return await self._store.causal_chain(id)

    async def exists(self, id: str) -> bool:
        """True if datum ``id`` exists (one indexed query)."""
        return await self._store.exists(id)

    async def count(self) -> int:
        """The number of data (one query)."""
        return await self._store.count()

    def _lease(self) -> Lease:
        manager = self._manager if self._manager is not None else get_manager()
        return manager.lease(self._consumer, url=self._url)


class SQLiteBackend(_StoreBackend):
    """kgents' ``SQLiteBackend``: table ``data`` in ``{data_dir}/{namespace}.db``.

    Args:
        namespace: the file name (each namespace is its own database, so its own pool).
        data_dir: the directory (default :data:`DEFAULT_DATA_DIR`); created on first use.
        manager: the manager to lease from (``None``: the process-wide one).
        consumer: the connman consumer name of its leases.
    """

    def __init__(
        self,
        namespace: str = "default",
        data_dir: Path | None = None,
        *,
        manager: ConnectionManager | None = None,
        consumer: str = "dgent",
    ) -> None:
        self.namespace = namespace
        self.data_dir = data_dir or DEFAULT_DATA_DIR
        self.path = self.data_dir / f"{namespace}.db"
        super().__init__(_sqlite_url(self.path), manager=manager, consumer=consumer)

    async def vacuum(self) -> int:
        """``VACUUM`` the file; the bytes it shrank by (approximately)."""
        before = _size(self.path)
        async with self._lease() as lease:
            await RawSQL(lease, autocommit=True).execute("VACUUM")
        return before - _size(self.path)

    def close(self) -> None:
        """Nothing to close: the file's connections belong to the manager's pool."""

    def clear(self) -> None:
        """Delete the database file (and its WAL files), as kgents' did, for tests.

        The file's connman pool is not closed by this (its connections would keep the
        deleted file open): use a fresh ``data_dir`` or namespace afterwards, as
        kgents' tests do.
        """
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"SQLiteBackend(namespace={self.namespace!r}, path={self.path})"


class PostgresBackend(_StoreBackend):
    """kgents' ``PostgresBackend``: table ``data`` in the database at ``url``.

    Args:
        url: the database, any spelling connman accepts (one pool per database,
            however it is spelled).
        namespace: kept as an attribute; like kgents', it selects nothing (every
            namespace shares table ``data``).
        min_pool_size, max_pool_size: accepted and ignored: the pool is connman's.
        manager: the manager to lease from (``None``: the process-wide one).
        consumer: the connman consumer name of its leases.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "default",
        min_pool_size: int = 2,
        max_pool_size: int = 10,
        *,
        manager: ConnectionManager | None = None,
        consumer: str = "dgent",
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        super().__init__(url, manager=manager, consumer=consumer)

    async def vacuum(self) -> None:
        """``VACUUM ANALYZE data``."""
        async with self._lease() as lease:
            await RawSQL(lease, autocommit=True).execute("VACUUM ANALYZE data")

    async def health_check(self) -> dict[str, Any]:
        """kgents' keys: ``connected``, ``count``, ``size_bytes`` (table ``data``),
        ``pool_size``, ``pool_min``, ``pool_max`` (of connman's pool for this
        database). Raises, as kgents' did, when the database cannot be reached."""
        await self._store.ensure_schema()
        async with self._lease() as lease:
            raw = RawSQL(lease, autocommit=True)
            count = await raw.fetch_value("SELECT count(*) FROM data")
            size = await raw.fetch_value("SELECT pg_total_relation_size('data')")
            pool = _pool_numbers(self._manager, lease.url)
        return {"connected": True, "count": count or 0, "size_bytes": size or 0, **pool}

    async def close(self) -> None:
        """Nothing to close: the connections belong to the manager's pool."""

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """The driver connection (asyncpg) of a lease, the schema ensured: kgents'
        own tests reach the database through this private method of theirs."""
        await self._store.ensure_schema()
        async with self._lease() as lease:
            yield lease.connection

    async def __aenter__(self) -> PostgresBackend:
        await self._store.ensure_schema()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"PostgresBackend(namespace={self.namespace!r})"


# -- the relational store -------------------------------------------------------------------


@runtime_checkable
class IRelationalStore(Protocol):
    """kgents' relational store: SQL with ``:name`` parameters, on any dialect."""

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        """Run ``query``; rows affected."""
        ...

    async def fetch_one(
        self, query: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row as a dict, or None."""
        ...

    async def fetch_all(
        self, query: str, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every row as a dict."""
        ...

    async def executemany(self, query: str, params_list: list[dict[str, Any]]) -> int:
        """``query`` once per dict; the number of dicts."""
        ...

    def transaction(self) -> Any:
        """``async with store.transaction() as tx``: committed on success, rolled
        back on an exception."""
        ...

    async def close(self) -> None:
        """Stop using the store."""
        ...


class _RelationalStore:
    """kgents' relational store on leases: every call leases a connection for its own
    duration (committed when it returns), a transaction holds one lease throughout.
    Unlike :class:`~connman.kgents.brain.BrainStore`, it creates no table."""

    def __init__(self, url: str, *, manager: ConnectionManager | None, consumer: str) -> None:
        self._manager = manager
        self._consumer = consumer
        self._url = url

    async def execute(self, query: str, params: dict[str, Any] | None = None) -> int:
        """Run ``query`` with ``:name`` ``params``; rows affected. Without params, a
        query of several ``;``-separated statements runs as one script (0)."""
        if params is None and query.count(";") > 1:
            async with self._lease() as lease:
                await _run_script(lease, query)
            return 0
        async with self._queries() as q:
            return await q.execute(query, params)

    async def fetch_one(
        self, query: str, params: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row of ``query`` as a dict, or None."""
        async with self._queries() as q:
            return await q.fetch_one(query, params)

    async def fetch_all(
        self, query: str, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every row of ``query`` as a dict."""
        async with self._queries() as q:
            return await q.fetch_all(query, params)

    async def executemany(self, query: str, params_list: list[dict[str, Any]]) -> int:
        """``query`` once per dict of ``params_list``, atomically; the number of dicts."""
        async with self._queries() as q:
            return await q.executemany(query, params_list)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[BrainTransaction]:
        """One leased connection, one transaction: committed when the block ends,
        rolled back (before the connection is lent again) when it raises."""
        async with self._lease() as lease, transaction(lease) as raw:
            yield BrainTransaction(raw)

    async def close(self) -> None:
        """Nothing to close: the connections belong to the manager's pool (the store
        stays usable, as kgents' reconnected)."""

    @asynccontextmanager
    async def _queries(self) -> AsyncIterator[BrainQueries]:
        async with self._lease() as lease:
            yield BrainQueries(RawSQL(lease, autocommit=True))

    def _lease(self) -> Lease:
        manager = self._manager if self._manager is not None else get_manager()
        return manager.lease(self._consumer, url=self._url)


class SQLiteRelationalStore(_RelationalStore):
    """kgents' ``SQLiteRelationalStore`` on the file ``db_path``.

    Args:
        db_path: the SQLite file (its directory is created on first use).
        wal_mode: accepted and ignored: connman opens every file in WAL mode.
        manager: the manager to lease from (``None``: the process-wide one).
        consumer: the connman consumer name of its leases.
    """

    def __init__(
        self,
        db_path: Path | str,
        wal_mode: bool = True,
        *,
        manager: ConnectionManager | None = None,
        consumer: str = "relational",
    ) -> None:
        self._db_path = Path(db_path)
        self._wal_mode = wal_mode
        super().__init__(_sqlite_url(self._db_path), manager=manager, consumer=consumer)


class PostgresRelationalStore(_RelationalStore):
    """kgents' ``PostgresRelationalStore`` on the database at ``url``.

    Args:
        url: the database (one pool per database, however it is spelled).
        min_pool_size, max_pool_size: accepted and ignored: the pool is connman's.
        namespace: kept for ``repr``; selects nothing (as in kgents).
        manager: the manager to lease from (``None``: the process-wide one).
        consumer: the connman consumer name of its leases.
    """

    def __init__(
        self,
        url: str,
        min_pool_size: int = 2,
        max_pool_size: int = 10,
        namespace: str = "kgents",
        *,
        manager: ConnectionManager | None = None,
        consumer: str = "relational",
    ) -> None:
        self._min_pool_size = min_pool_size
        self._max_pool_size = max_pool_size
        self._namespace = namespace
        super().__init__(url, manager=manager, consumer=consumer)

    async def health_check(self) -> dict[str, Any]:
        """kgents' keys: ``connected`` (``SELECT 1`` answered), ``pool_size``,
        ``pool_min``, ``pool_max`` (of connman's pool for this database)."""
        async with self._lease() as lease:
            one = await RawSQL(lease, autocommit=True).fetch_value("SELECT 1")
            pool = _pool_numbers(self._manager, lease.url)
        return {"connected": one == 1, **pool}

    def __repr__(self) -> str:
        return f"PostgresRelationalStore(namespace={self._namespace!r})"


# -- models/base.py: the SQLAlchemy engine --------------------------------------------------

_engine: AsyncEngine | None = None
_session_factory: async_sessionmaker[AsyncSession] | None = None


def get_database_url() -> str:
    """The database URL (SQLAlchemy form, password included: do not log it), resolved
    by :func:`connman.resolve_storage` (``KGENTS_DATABASE_URL``, legacy
    ``KGENTS_POSTGRES_URL``, then the XDG SQLite file), for the process-wide manager."""
    return get_manager().storage.url


def get_engine(url: str | None = None) -> AsyncEngine:
    """The process-wide engine: :func:`connman.adapters.sqlalchemy.create_async_engine`
    on the process-wide manager (consumer ``sqlalchemy``), created by the first call;
    ``url``: its database (``None``: the manager's). Later calls return the same
    engine whatever their ``url``, as kgents' did."""
    global _engine
    if _engine is None:
        _engine = create_async_engine(url=url)
    return _engine


def get_session_factory(engine: AsyncEngine | None = None) -> async_sessionmaker[AsyncSession]:
    """The process-wide session factory (``expire_on_commit=False``) on ``engine``
    (``None``: :func:`get_engine`)."""
    global _session_factory
    if _session_factory is None:
        _session_factory = async_sessionmaker(
            engine or get_engine(), class_=AsyncSession, expire_on_commit=False
        )
    return _session_factory


@asynccontextmanager
async def get_async_session() -> AsyncIterator[AsyncSession]:
    """A session committed when the block ends, rolled back when it raises."""
    async with get_session_factory()() as session:
        try:
            yield session
            await session.commit()
        except Exception:
            await session.rollback()
            raise


async def init_db(url: str | None = None, *, metadata: MetaData | None = None) -> AsyncEngine:
    """Create the tables of ``metadata`` (``None``: connman's models of kgents'
    SQLAlchemy track; kgents passes its ``Base.metadata``) on :func:`get_engine`'s
    database; the engine."""
    engine = get_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync((metadata or models.Base.metadata).create_all)
    return engine


async def close_db() -> None:
    """Forget the process-wide engine and session factory (the connections stay in
    connman for the other consumers)."""
    global _engine, _session_factory
    if _engine is not None:
        await _engine.dispose()
    _engine = None
    _session_factory = None


# -- helpers ----------------------------------------------------------------------------------


def _sqlite_url(path: Path) -> str:
    return DatabaseURL(dialect="sqlite", database=os.path.abspath(path)).key


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _pool_numbers(manager: ConnectionManager | None, url: str) -> dict[str, int]:
    current = manager if manager is not None else get_manager()
    for stats in current.stats():
        if stats.url == url:
            return {"pool_size": stats.size, "pool_min": stats.min_size, "pool_max": stats.max_size}
    return {"pool_size": 0, "pool_min": 0, "pool_max": 0}


async def _run_script(lease: Lease, script: str) -> None:
    """Several statements at once (kgents ran its schema scripts through ``execute``):
    PostgreSQL's simple query protocol takes them in one round trip; sqlite3's
    ``executescript`` commits what is open first, then runs them."""
    conn: Any = lease.connection
    if lease.dialect == "postgresql":
        await conn.execute(script)
    else:
        await conn.executescript(script)
