"""The SQLAlchemy track's tables as declarative models: the one source of truth.

``brain_crystals``, ``brain_crystal_tags`` and ``brain_settings`` are defined here once.
Everything else is derived from these classes:

- the ORM (the SQLAlchemy adapter and kgents code map them);
- the DDL the Brain store runs on its raw lease (:func:`ddl`: SQLAlchemy's own
  ``CreateTable``/``CreateIndex`` compiled for the lease's dialect, ``IF NOT EXISTS``);
- the :class:`~connman.kgents.schema.spec.TableSpec` the migration tool reads (:data:`TABLES`);
- the values raw SQL writes (:func:`encode_row` applies each column type's own bind
  processing, so a row the Brain store writes with raw SQL reads back through the
  ORM exactly like one the ORM wrote: on SQLite a datetime is stored as SQLAlchemy's
  ``YYYY-MM-DD HH:MM:SS.ffffff`` text, JSON as JSON text).

Names follow kgents (tables, columns, index names, the Alembic naming convention), so
a database Alembic created is recognised and gains at most the indexes it lacked.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.schema import CreateIndex, CreateTable

from connman.kgents.schema.spec import (
    DIALECTS,
    ColumnKind,
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    TableSpec,
)
from connman.kgents.schema.types import AwareDateTime

__all__ = [
    "CRYSTALS",
    "CRYSTAL_TAGS",
    "NAMING_CONVENTION",
    "TABLES",
    "Base",
    "BrainSettings",
    "Crystal",
    "CrystalTag",
    "TimestampMixin",
    "ddl",
    "decode_row",
    "encode_row",
    "sqlalchemy_dialect",
    "utcnow",
]

NAMING_CONVENTION: dict[str, str] = {
    # kgents' convention (what Alembic autogenerate relies on).
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (GIN-indexable), JSON text on SQLite.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Now, timezone-aware UTC (the Python-side default of every timestamp)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of connman's models; ``Base.metadata`` holds their tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    """``created_at``/``updated_at``, timezone-aware: ``DateTime(timezone=True)`` in
    the DDL, through :class:`~connman.kgents.schema.types.AwareDateTime` so SQLite stores UTC
    and both dialects read back aware UTC datetimes. The server default lets raw SQL
    (and a migration) insert rows without them; the ORM sets them from Python."""

    created_at: Mapped[datetime] = mapped_column(
        AwareDateTime(), default=utcnow, server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        AwareDateTime(),
        default=utcnow,
        onupdate=utcnow,
        server_default=func.now(),
        nullable=False,
    )


class Crystal(TimestampMixin, Base):
    """A crystallized memory: queryable metadata of a Brain capture (same id)."""

    __tablename__ = "brain_crystals"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    summary: Mapped[str] = mapped_column(Text, nullable=False)
    tags: Mapped[list[str]] = mapped_column(JSONType, default=list, server_default=text("'[]'"))
    access_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_accessed: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # Link to the D-gent datum holding the semantic content, if any.
    datum_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # "capture", "import", "generation"...
    source_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    source_ref: Mapped[str | None] = mapped_column(String(256), nullable=True)

    crystal_tags: Mapped[list[CrystalTag]] = relationship(
        back_populates="crystal", cascade="all, delete-orphan", passive_deletes=True
    )

    __table_args__ = (
        Index("idx_brain_crystals_tags", "tags", postgresql_using="gin"),
        Index("idx_brain_crystals_recent", "created_at"),
        Index("idx_brain_crystals_accessed", "last_accessed"),
    )


class CrystalTag(Base):
    """One tag of one crystal (normalized, for tag queries)."""

    __tablename__ = "brain_crystal_tags"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Indexed (kgents did not): "tags of crystal X" and the cascade on delete use it.
    crystal_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("brain_crystals.id", ondelete="CASCADE"), index=True
    )
    tag: Mapped[str] = mapped_column(String(64), nullable=False, index=True)

    crystal: Mapped[Crystal] = relationship(back_populates="crystal_tags")

    __table_args__ = (Index("idx_crystal_tags_lookup", "tag", "crystal_id"),)


class BrainSettings(TimestampMixin, Base):
    """Brain preferences; one row per user/tenant (id ``default``)."""

    __tablename__ = "brain_settings"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default="default")
    default_tags: Mapped[list[str]] = mapped_column(
        JSONType, default=list, server_default=text("'[]'")
    )
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_crystals: Mapped[int | None] = mapped_column(Integer, nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(
        JSONType, default=dict, server_default=text("'{}'")
    )


CRYSTALS: Table = Base.metadata.tables["brain_crystals"]
"""``brain_crystals`` as a Core table (for raw SQL)."""
CRYSTAL_TAGS: Table = Base.metadata.tables["brain_crystal_tags"]
"""``brain_crystal_tags`` as a Core table."""


# -- derived -----------------------------------------------------------------------


@functools.cache
def sqlalchemy_dialect(dialect: str) -> SADialect:
    """SQLAlchemy's dialect for connman's drivers: ``postgresql`` -> asyncpg,
    ``sqlite`` -> aiosqlite (what compiles DDL, ``text()`` and bind values)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

        return asyncpg_dialect()  # type: ignore[no-untyped-call]
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect

        return aiosqlite_dialect()
    raise ValueError(f"dialect {dialect!r}: expected 'postgresql' or 'sqlite'")


@functools.cache
def ddl(dialect: str) -> tuple[str, ...]:
    """``CREATE TABLE IF NOT EXISTS`` and ``CREATE INDEX IF NOT EXISTS`` for every
    model, in dependency order, compiled for ``dialect``."""
    sa = sqlalchemy_dialect(dialect)
    statements: list[str] = []
    for table in Base.metadata.sorted_tables:
        statements.extend(_table_ddl(table, sa))
    return tuple(statements)


def encode_row(table: Table, dialect: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as the column types would send them to ``dialect``'s driver (JSON
    serialized, datetimes in SQLAlchemy's SQLite format...), for raw SQL that must
    write what the ORM writes."""
    sa = sqlalchemy_dialect(dialect)
    encoded: dict[str, Any] = {}
    for name, value in values.items():
        process = _bind_processor(table, name, sa)
        encoded[name] = value if process is None or value is None else process(value)
    return encoded


def decode_row(table: Table, dialect: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read with raw SQL, as the ORM would see it: JSON parsed, SQLite's
    datetime text parsed (naive, UTC by convention). Columns ``table`` lacks are kept
    as they are."""
    sa = sqlalchemy_dialect(dialect)
    decoded: dict[str, Any] = {}
    for name, value in row.items():
        if name in table.c and value is not None:
            column_type = table.c[name].type
            process = column_type.dialect_impl(sa).result_processor(sa, None)
            if process is not None:
                value = process(value)
            # asyncpg hands jsonb over as text unless a codec was set on the connection.
            if isinstance(column_type, sqltypes.JSON) and isinstance(value, str):
                value = json.loads(value)
        decoded[name] = value
    return decoded


def _bind_processor(table: Table, column: str, sa: SADialect) -> Any:
    column_type = table.c[column].type
    return column_type.dialect_impl(sa).bind_processor(sa)


def _table_ddl(table: Table, sa: SADialect) -> list[str]:
    statements = [str(CreateTable(table, if_not_exists=True).compile(dialect=sa)).strip()]
    for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
        statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=sa)).strip())
    return statements


def _stored(column_type: sqltypes.TypeEngine[Any]) -> sqltypes.TypeEngine[Any]:
    # A TypeDecorator converts in Python; the database stores its impl.
    if isinstance(column_type, sqltypes.TypeDecorator):
        return column_type.impl_instance
    return column_type


def _kind(column_type: sqltypes.TypeEngine[Any]) -> ColumnKind:
    column_type = _stored(column_type)
    # Most specific first: Text is a String, DateTime is not a Date...
    if isinstance(column_type, sqltypes.JSON):
        return "json"
    if isinstance(column_type, sqltypes.LargeBinary):
        return "bytes"
    if isinstance(column_type, sqltypes.Boolean):
        return "bool"
    if isinstance(column_type, sqltypes.Integer):
        return "int"
    if isinstance(column_type, sqltypes.Float | sqltypes.Numeric):
        return "float"
    if isinstance(column_type, sqltypes.DateTime):
        return "datetime"
    if isinstance(column_type, sqltypes.Date):
        return "date"
    if isinstance(column_type, sqltypes.String):
        return "text"
    raise TypeError(
        f"no column kind for {column_type!r}: add it to connman.kgents.schema.models._kind"
    )


def _spec(table: Table) -> TableSpec:
    dialects = {name: sqlalchemy_dialect(name) for name in DIALECTS}
    columns: list[ColumnSpec] = []
    for column in table.columns:
        defaults: dict[str, str] = {}
        if column.server_default is not None:
            for name, sa in dialects.items():
                compiler = sa.ddl_compiler(sa, CreateTable(table))
                rendered = compiler.get_column_default_string(column)
                if rendered is not None:
                    defaults[name] = rendered
        columns.append(
            ColumnSpec(
                name=column.name,
                kind=_kind(column.type),
                types={name: column.type.compile(dialect=sa) for name, sa in dialects.items()},
                nullable=bool(column.nullable),
                defaults=defaults,
                autoincrement=column is table.autoincrement_column,
                timezone=bool(getattr(_stored(column.type), "timezone", False)),
            )
        )
    foreign_keys = tuple(
        ForeignKeySpec(
            column=fk.parent.name,
            references=fk.column.table.name,
            referenced_column=fk.column.name,
            on_delete=fk.ondelete,
        )
        for fk in sorted(table.foreign_keys, key=lambda fk: fk.parent.name)
    )
    indexes = tuple(
        IndexSpec(
            str(index.name),
            {
                name: str(CreateIndex(index, if_not_exists=True).compile(dialect=sa)).strip()
                for name, sa in dialects.items()
            },
        )
        for index in sorted(table.indexes, key=lambda ix: str(ix.name))
    )
    return TableSpec(
        name=table.name,
        track="sqlalchemy",
        columns=tuple(columns),
        primary_key=tuple(c.name for c in table.primary_key.columns),
        foreign_keys=foreign_keys,
        indexes=indexes,
        ddl={name: tuple(_table_ddl(table, sa)) for name, sa in dialects.items()},
    )


TABLES: tuple[TableSpec, ...] = tuple(_spec(t) for t in Base.metadata.sorted_tables)
"""The SQLAlchemy track's tables (connman's models), in dependency order."""
