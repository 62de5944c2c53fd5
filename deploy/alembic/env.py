"""Alembic environment for kgents' SQLAlchemy track: the connection is a connman lease.

Three ways in:

- ``alembic -c deploy/alembic/alembic.ini upgrade head``: the database is the one
  every kgents process resolves (``connman.get_manager()``: KGENTS_DATABASE_URL, the
  legacy variable, else the portable SQLite file; degraded like the rest if the
  server is down), on an event loop of its own;
- ``... -x url=postgresql://...`` (or ``sqlite:///...``): that database, no
  degradation;
- from code that already holds a connection (Alembic's "connection sharing" recipe)::

      async with engine.begin() as conn:          # an engine from connman's adapter
          await conn.run_sync(_upgrade, config)   # sets config.attributes["connection"]

Offline mode (``--sql``) renders the SQL for the resolved database's dialect.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

import connman
from connman.adapters.sqlalchemy import create_async_engine, serving_url

config = context.config

# Models for `alembic revision --autogenerate`, e.g. connman.kgents.schema.models.Base.metadata.
target_metadata = None

# The connman consumer of the migration's lease (its own limit and metrics).
CONSUMER = "alembic"


def _manager() -> connman.ConnectionManager:
    url = context.get_x_argument(as_dictionary=True).get("url")
    return connman.ConnectionManager(url) if url else connman.get_manager()


def run_migrations_offline() -> None:
    """Emit SQL for the dialect of the resolved database, without connecting."""
    url = serving_url(_manager())
    context.configure(
        dialect_name=url.dialect,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Run the migrations on one (synchronous facade of a) leased connection."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # ALTER TABLE on SQLite needs batch mode (copy and move).
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Lease a connection from connman and run the migrations on it."""
    manager = _manager()
    # Started first, so the engine gets the dialect of the database actually serving
    # (the manager may have degraded to the portable SQLite file).
    await manager.start()
    engine = create_async_engine(manager, consumer=CONSUMER)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()
        # This event loop ends with the command: close its connections with it.
        await manager.aclose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
