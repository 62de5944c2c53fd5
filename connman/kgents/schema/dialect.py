"""Dialect helpers for migrations that run on PostgreSQL and SQLite alike.

The storage protocol asks revisions to be database-agnostic; kgents' revisions did it
with an ``is_postgres()`` of their own and an ``if``/``else`` around every statement
that differs. These helpers carry the branches instead::

    from alembic import op
    from connman.kgents.schema.dialect import autoincrement_pk, insert_or_ignore, is_sqlite, now_sql

    def upgrade() -> None:
        op.execute(f"CREATE TABLE brain_crystal_tags ({autoincrement_pk()}, tag TEXT NOT NULL,"
                   f" created_at TIMESTAMP NOT NULL DEFAULT {now_sql()})")
        op.execute(insert_or_ignore("brain_settings", {"key": "schema", "value": "1"}))
        if is_sqlite():
            return  # PostgreSQL-only step follows (GIN index, pgvector...)

Every helper takes an optional ``bind``: without it, the dialect of the running Alembic
migration (``alembic.context``); with it, the dialect of that object: a SQLAlchemy
``Connection``/``Engine``/``AsyncConnection``/``AsyncEngine``/``Session``/``Dialect``,
a :class:`connman.Lease`, or a dialect name. Neither Alembic nor SQLAlchemy is imported
until a helper needs it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from connman.dialect import POSTGRES, SQLITE, SQLDialect
from connman.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql.compiler import IdentifierPreparer
    from sqlalchemy.sql.elements import TextClause

__all__ = [
    "autoincrement_pk",
    "by_dialect",
    "dialect_name",
    "insert_or_ignore",
    "is_postgres",
    "is_sqlite",
    "json_ddl",
    "now_sql",
]

_T = TypeVar("_T")


def dialect_name(bind: object = None) -> str:
    """``"postgresql"`` or ``"sqlite"`` (or another SQLAlchemy dialect's name).

    ``bind``: see the module docstring; ``None`` reads the running Alembic migration.

    Raises:
        ConfigError: no ``bind`` and no Alembic migration running, or an object
            that names no dialect.
    """
    if bind is None:
        return _migration_dialect()
    if isinstance(bind, str):
        return bind
    # Session.get_bind() and AsyncSession.bind lead to an engine or connection.
    get_bind = getattr(bind, "get_bind", None)
    if get_bind is not None and not hasattr(bind, "dialect"):
        bind = get_bind()
    dialect = getattr(bind, "dialect", bind)
    if isinstance(dialect, str):  # connman.Lease.dialect
        return dialect
    name = getattr(dialect, "name", None)
    if not isinstance(name, str):
        raise ConfigError(
            f"cannot tell the dialect of {bind!r}: pass a SQLAlchemy connection, engine, "
            "session or dialect, a connman Lease, or 'postgresql'/'sqlite'"
        )
    return name


def is_postgres(bind: object = None) -> bool:
    """True on PostgreSQL."""
    return dialect_name(bind) == POSTGRES.name


def is_sqlite(bind: object = None) -> bool:
    """True on SQLite."""
    return dialect_name(bind) == SQLITE.name


def by_dialect(*, postgresql: _T, sqlite: _T, bind: object = None) -> _T:
    """The value for the current dialect: ``by_dialect(postgresql="JSONB",
    sqlite="TEXT")``. The one branch the other helpers are made of.

    Raises:
        ConfigError: a dialect other than PostgreSQL and SQLite.
    """
    name = dialect_name(bind)
    if name == POSTGRES.name:
        return postgresql
    if name == SQLITE.name:
        return sqlite
    raise ConfigError(f"dialect {name!r}: connman's migrations support postgresql and sqlite")


def autoincrement_pk(column: str = "id", *, bind: object = None) -> str:
    """Column DDL of an auto-incrementing integer primary key:
    ``id SERIAL PRIMARY KEY`` / ``id INTEGER PRIMARY KEY AUTOINCREMENT``.

    (SQLite's AUTOINCREMENT needs exactly ``INTEGER PRIMARY KEY``; it also guarantees
    that ids are never reused, as a PostgreSQL sequence does.)
    """
    return f"{_quote(column, bind)} {_sql(bind).serial_pk}"


def now_sql(*, bind: object = None) -> str:
    """The current time as SQL, usable in DML and after ``DEFAULT``: ``now()`` /
    ``(datetime('now'))`` (UTC text, which SQLAlchemy's ``DateTime`` reads; the
    parentheses make it a valid SQLite column default)."""
    return _sql(bind).now


def json_ddl(*, bind: object = None) -> str:
    """Column type DDL for JSON documents: ``JSONB`` / ``JSON`` (SQLite keeps JSON as
    text; SQLAlchemy's ``JSON`` type reads both)."""
    return _sql(bind).json_type


def insert_or_ignore(table: str, values: Mapping[str, Any], *, bind: object = None) -> TextClause:
    """An INSERT of one row that does nothing if it conflicts with an existing one:
    ``INSERT ... ON CONFLICT DO NOTHING`` / ``INSERT OR IGNORE ...``.

    The values are bound parameters (``op.execute(insert_or_ignore(...))`` or
    ``connection.execute(...)``), a ``dict`` or ``list`` as a JSON document; in offline
    (``--sql``) mode Alembic renders them inline. Names are quoted as SQLAlchemy
    quotes them (reserved words, upper case).
    """
    from sqlalchemy import text

    if not values:
        raise ConfigError("insert_or_ignore needs at least one column value")
    columns = list(values)
    params: dict[str, Any] = {}
    placeholders: list[str] = []
    for i, value in enumerate(values.values()):
        name = f"v{i}"
        if isinstance(value, dict | list):
            # A JSON document: bound as its JSON text (which Alembic can also render
            # inline in --sql mode), cast on PostgreSQL, where a VARCHAR does not go
            # into a JSON(B) column by itself.
            params[name] = json.dumps(value)
            placeholders.append(
                by_dialect(postgresql=f"CAST(:{name} AS JSONB)", sqlite=f":{name}", bind=bind)
            )
        else:
            params[name] = value
            placeholders.append(f":{name}")
    names = ", ".join(_quote(name, bind) for name in columns)
    sql = _sql(bind).insert_or_ignore(_quote(table, bind), names, ", ".join(placeholders))
    return text(sql).bindparams(**params)


def _sql(bind: object) -> SQLDialect:
    """The spellings of ``bind``'s dialect (:mod:`connman.dialect`, their one owner)."""
    return by_dialect(postgresql=POSTGRES, sqlite=SQLITE, bind=bind)


def _migration_dialect() -> str:
    try:
        from alembic import context
    except ImportError:
        raise ConfigError(
            "no bind given and Alembic is not installed: pass a connection (or "
            "'postgresql'/'sqlite') to the connman.kgents.schema.dialect helper"
        ) from None
    try:
        migration = context.get_context()
    except Exception:  # the proxy exists only while env.py runs
        raise ConfigError(
            "no bind given and no Alembic migration is running: call the helper inside "
            "upgrade()/downgrade(), or pass bind=connection"
        ) from None
    return str(migration.dialect.name)


def _quote(name: str, bind: object) -> str:
    """``name`` quoted the way SQLAlchemy quotes it for the dialect: only when it
    needs it (a reserved word, upper case, other characters)."""
    return str(_preparer(dialect_name(bind)).quote(name))


@functools.cache
def _preparer(name: str) -> IdentifierPreparer:
    from sqlalchemy.dialects.postgresql.base import PGDialect
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    dialect_class: type[Dialect] = PGDialect if name == POSTGRES.name else SQLiteDialect
    return dialect_class().identifier_preparer
