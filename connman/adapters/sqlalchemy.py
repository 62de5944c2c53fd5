"""SQLAlchemy on connman: ``create_async_engine`` whose connections are connman leases.

::

    from connman.adapters.sqlalchemy import create_async_engine

    engine = create_async_engine()                      # process-wide manager, its database
    Session = async_sessionmaker(engine, expire_on_commit=False)

Core, the ORM, ``AsyncSession``, ``run_sync`` (``metadata.create_all``) and Alembic's
async ``env.py`` work unchanged. Every DBAPI connection the engine uses is a lease of
one consumer (``"sqlalchemy"`` by default); the engine keeps no pool of its own (see
:mod:`connman.adapters.sqlalchemy_pool`), so connman's ``max_size``, per-consumer
limits, acquire deadlines, health checks and lifetimes apply to it.

Pool options that make sense on a lease (``pool_timeout``, ``pool_pre_ping``,
``pool_reset_on_return``, ``echo_pool``, ``pool_logging_name``, ``pool_events``) are
honoured; the ones that size or replace a pool are refused with the connman setting
to use instead.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect, IsolationLevel
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as _sa_create_async_engine

from connman.adapters.sqlalchemy_pool import ConnmanPool, PoolTimeout
from connman.errors import ConfigError
from connman.manager import ConnectionManager, get_manager
from connman.urls import DatabaseURL, parse_url

__all__ = ["ConnmanPool", "PoolTimeout", "create_async_engine", "serving_url"]

# Pool options of create_engine that connman owns, and what to use instead.
_REFUSED = {
    "pool": "connman is the pool",
    "poolclass": "connman is the pool",
    "creator": "connman opens the connections",
    "async_creator": "connman opens the connections",
    "pool_size": "set PoolConfig.max_size (KGENTS_POOL_MAX_SIZE) or a consumer limit "
    "(KGENTS_POOL_CONSUMER_LIMITS=sqlalchemy=N)",
    "max_overflow": "set PoolConfig.max_size (KGENTS_POOL_MAX_SIZE)",
    "pool_recycle": "set PoolConfig.max_lifetime (KGENTS_POOL_MAX_LIFETIME)",
    "pool_use_lifo": "connman keeps idle connections LIFO already",
}
# create_engine's pool option -> ConnmanPool/Pool argument.
_POOL_OPTIONS = {
    "pool_pre_ping": "pre_ping",
    "echo_pool": "echo",
    "pool_reset_on_return": "reset_on_return",
    "pool_logging_name": "logging_name",
    "pool_events": "events",
}


def create_async_engine(
    manager: ConnectionManager | None = None,
    *,
    consumer: str = "sqlalchemy",
    url: str | None = None,
    readonly: bool = False,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An ``AsyncEngine`` whose every connection is a connman lease of ``consumer``.

    Args:
        manager: the manager to lease from. ``None``: :func:`connman.get_manager`,
            looked up at every checkout, so the engine follows the process-wide
            manager when it is replaced (a new event loop, a closed manager).
        consumer: the connman consumer name (limits and metrics are per consumer).
        url: the database, any spelling connman accepts; ``None``: the manager's
            default database. The dialect is chosen now, from :func:`serving_url`:
            create the engine after ``await manager.start()`` when the manager may
            degrade to another database (PostgreSQL -> SQLite), or the first checkout
            after a degradation raises :class:`~connman.ConnmanError` saying so.
        readonly: every connection is a read lease (``lease(readonly=True)``): on a
            read replica when one is configured and in rotation, else on the primary.
            For queries that may see data a little behind the writes.
        **engine_kwargs: passed to SQLAlchemy's ``create_async_engine`` (``echo``,
            ``json_serializer``, ``isolation_level``, ``execution_options``...).
            ``pool_timeout`` is the lease deadline (default connman's
            ``acquire_timeout``); ``connect_args`` go to the dialect's DBAPI adapter
            (e.g. ``prepared_statement_cache_size``), not to the driver's connect.

    Raises:
        ConfigError: a pool option connman owns (``pool_size``, ``poolclass``...), or a
            URL connman does not accept.

    The engine's ``url`` carries no password: it never connects by itself.
    """
    for name, instead in _REFUSED.items():
        if name in engine_kwargs:
            raise ConfigError(
                f"create_async_engine({name}=...) is not supported on connman: {instead}"
            )
    if type(consumer) is not str or not consumer:
        raise ConfigError(f"consumer must be a non-empty str, got {consumer!r}")
    current = manager if manager is not None else get_manager()
    serving = serving_url(current, url)
    sa_url = _sqlalchemy_url(serving)

    connect_args = dict(engine_kwargs.pop("connect_args", None) or {})
    if serving.dialect == "postgresql" and current.config.statement_cache_size == 0:
        # Behind PgBouncer in transaction mode (why connman's cache would be 0),
        # SQLAlchemy's own prepared statements need the same treatment.
        connect_args.setdefault("prepared_statement_cache_size", 0)
        connect_args.setdefault("prepared_statement_name_func", _unique_statement_name)
    pool_kwargs = {
        target: engine_kwargs.pop(option)
        for option, target in _POOL_OPTIONS.items()
        if option in engine_kwargs
    }
    pool = ConnmanPool(
        manager=manager,
        consumer=consumer,
        url=url,
        readonly=readonly,
        timeout=engine_kwargs.pop("pool_timeout", None),
        sa_url=sa_url,
        connect_args=connect_args,
        **pool_kwargs,
    )
    engine = _sa_create_async_engine(sa_url, pool=pool, **engine_kwargs)
    dialect = engine.sync_engine.dialect
    if serving.dialect == "sqlite":
        _keep_begin_immediate(dialect)
    else:
        _decode_json_in_sqlalchemy(dialect)
    # SQLAlchemy hands a detached or garbage-collected connection to the pool's
    # close only when the dialect "can terminate" (asyncpg; aiosqlite >= 0.22.1 on
    # SQLAlchemy 2.1); otherwise it just drops it, and with it the lease it holds.
    # On connman, ending a connection is always possible: give the lease back
    # (ConnmanPool._close_connection), closed if the driver could close it.
    dialect.has_terminate = True
    event.listen(engine.sync_engine, "handle_error", _lease_verdict(pool), retval=True)
    return engine


def _lease_verdict(pool: ConnmanPool) -> Any:
    """A ``handle_error`` listener: every error of the engine's connections passes
    through their lease, as it would through ``async with lease``. A driver-internal
    error (asyncpg's "cannot switch to state ...": the server ended the session
    between two statements) is raised as :class:`~connman.ConnectionLost`, and
    SQLAlchemy invalidates the connection; a write refused read-only lets the pool
    check the server (failover)."""

    def handle_error(context: ExceptionContext) -> BaseException | None:
        fairy = getattr(context.connection, "_dbapi_connection", None)
        record = getattr(fairy, "_connection_record", None)
        if record is None:
            return None
        # The dialect's DBAPI adapter raises its own exception from the driver's.
        original = context.original_exception
        driver_error = original.__cause__ or original
        lost = pool.holder_error(record, driver_error)
        if lost is None:
            return None
        context.is_disconnect = True  # SQLAlchemy raises it from ``original``
        return lost

    return handle_error


def serving_url(manager: ConnectionManager, url: str | None = None) -> DatabaseURL:
    """The database that serves ``url`` (``None``: the default database) on
    ``manager``, as far as can be known without I/O.

    Once the manager has started, its default pool is the database actually serving
    (a fallback if it degraded), also for ``url`` spelling the storage it was asked
    for. Before that, it is the storage asked for.
    """
    started = manager.default_pool
    wanted = parse_url(manager.storage.url, source="manager.storage")
    if url is None:
        return started.url if started is not None else wanted
    parsed = parse_url(url, source="create_async_engine(url=...)")
    if started is not None and parsed.key == wanted.key:
        return started.url
    return parsed


def _sqlalchemy_url(url: DatabaseURL) -> URL:
    """The engine's URL: the right dialect and driver, where it points, no password."""
    if url.dialect == "sqlite":
        return URL.create("sqlite+aiosqlite", database=url.database)
    host, query = url.host, {}
    if host is not None and host.startswith("/"):  # a unix socket directory
        host, query = None, {"host": url.host or ""}
    return URL.create(
        "postgresql+asyncpg",
        username=url.user,
        host=host,
        port=url.port,
        database=url.database,
        query=query,
    )


def _unique_statement_name() -> str:
    return f"__connman_{uuid.uuid4().hex}__"


def _decode_json_in_sqlalchemy(dialect: Dialect) -> None:
    """Leave asyncpg's JSON/JSONB codecs alone; the engine's cursors decode instead.

    The asyncpg dialect registers JSON and JSONB type codecs on every connection it
    opens (``set_type_codec``). On connman that connection is shared: after the
    engine used it, a D-gent or Brain lease would get ``dict`` where a fresh
    connection gives ``str`` for the same ``jsonb`` column, depending on which
    connection it happens to get. So the codecs are not installed (which also spares
    each new connection their set-up round trips), and
    :mod:`connman.adapters.sqlalchemy_json` decodes JSON result columns in the
    engine's cursors (``ConnmanPool`` equips each adapter connection), so the engine
    returns what native SQLAlchemy returns, ``text()`` queries included.
    """

    async def keep_asyncpg_defaults(adapted_connection: Any) -> None:
        return None

    dialect.setup_asyncpg_json_codec = keep_asyncpg_defaults  # type: ignore[attr-defined]
    dialect.setup_asyncpg_jsonb_codec = keep_asyncpg_defaults  # type: ignore[attr-defined]


def _keep_begin_immediate(dialect: Dialect) -> None:
    """Make the SQLite dialect keep connman's ``BEGIN IMMEDIATE``.

    connman opens aiosqlite connections with ``isolation_level="IMMEDIATE"`` so that
    concurrent writers queue on the write lock instead of failing with "database is
    locked". SQLAlchemy's pysqlite dialect sets ``isolation_level = ""`` (a deferred
    ``BEGIN``) whenever it sets an isolation level: for ``isolation_level=`` on the
    engine or a connection, and when restoring the default on checkin. That would
    leak a deferred BEGIN to every later lease of the physical connection. Patched on
    this engine's dialect instance only.
    """
    original = dialect.set_isolation_level

    def set_isolation_level(dbapi_connection: DBAPIConnection, level: IsolationLevel) -> None:
        original(dbapi_connection, level)
        if level != "AUTOCOMMIT":
            dbapi_connection.isolation_level = "IMMEDIATE"

    dialect.set_isolation_level = set_isolation_level  # type: ignore[method-assign]
