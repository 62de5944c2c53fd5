"""What a table is, per dialect: the description the adapters create tables from and
the migration tool reads.

A :class:`TableSpec` names each column with its logical kind (what a value *is*:
text, bytes, a float, JSON...) and its DDL type on each dialect, the primary key,
the foreign keys, and the DDL statements that create the table and its indexes,
idempotently. The kind is what a SQLite -> PostgreSQL copy needs to convert values
(JSON text -> JSONB, ``'2025-01-01 10:00:00'`` -> ``timestamptz``); the types say what
each side declares.

This module imports nothing heavy: the D-gent track uses it without SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "DIALECTS",
    "ColumnKind",
    "ColumnSpec",
    "Dialect",
    "ForeignKeySpec",
    "IndexSpec",
    "TableSpec",
    "render_create_table",
]

Dialect = Literal["postgresql", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("postgresql", "sqlite")

ColumnKind = Literal["text", "bytes", "int", "float", "bool", "json", "datetime", "date"]
"""What a column's values are, independent of how a dialect stores them:

- ``json``: JSONB/JSON on PostgreSQL, JSON text on SQLite;
- ``datetime``: ``timestamp[tz]`` on PostgreSQL, text (SQLAlchemy's
  ``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC) on SQLite;
- ``bool``: ``boolean`` on PostgreSQL, 0/1 on SQLite.
"""


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One column."""

    name: str
    kind: ColumnKind
    types: Mapping[str, str]
    """DDL type per dialect, e.g. ``{"postgresql": "BYTEA", "sqlite": "BLOB"}``."""
    nullable: bool = True
    defaults: Mapping[str, str] = field(default_factory=dict)
    """Server-side default per dialect, as SQL (``"'{}'"``); absent: none."""
    autoincrement: bool = False
    """Values come from a sequence (SERIAL) / rowid: a copy that keeps the ids must
    move the PostgreSQL sequence past the largest one afterwards."""
    timezone: bool = False
    """For ``datetime``: PostgreSQL stores it with a time zone (``timestamptz``)."""

    def type_for(self, dialect: str) -> str:
        """The DDL type on ``dialect`` (``postgresql`` or ``sqlite``)."""
        return self.types[_check(dialect)]


@dataclass(frozen=True, slots=True)
class ForeignKeySpec:
    """``column`` references ``table(column)``."""

    column: str
    references: str
    """The referenced table (may be the table itself: D-gent's causal chain)."""
    referenced_column: str
    on_delete: str | None = None
    """``SET NULL``, ``CASCADE``... or None (NO ACTION)."""
    deferrable: bool = False
    """Declared ``DEFERRABLE INITIALLY IMMEDIATE``: a bulk copy may ``SET CONSTRAINTS
    ALL DEFERRED`` (PostgreSQL) / ``PRAGMA defer_foreign_keys = ON`` (SQLite) and
    insert rows in any order within one transaction."""


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """One secondary index; ``ddl`` is its CREATE INDEX per dialect (a dialect may
    have none: SQLite needs no separate prefix index on its primary key)."""

    name: str
    ddl: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table, on both dialects. :attr:`ddl` is what creates it."""

    name: str
    track: str
    """``dgent``, ``brain`` or ``sqlalchemy`` (see :data:`connman.kgents.schema.TRACKS`)."""
    columns: tuple[ColumnSpec, ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKeySpec, ...] = ()
    indexes: tuple[IndexSpec, ...] = ()
    ddl: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per dialect: ``CREATE TABLE IF NOT EXISTS`` then each ``CREATE INDEX IF NOT
    EXISTS``. Idempotent; run them in order."""

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in declaration order (the order DDL and copies use)."""
        return tuple(c.name for c in self.columns)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """Other tables whose rows must exist before this table's (by foreign key)."""
        seen: list[str] = []
        for fk in self.foreign_keys:
            if fk.references != self.name and fk.references not in seen:
                seen.append(fk.references)
        return tuple(seen)

    @property
    def self_referencing(self) -> tuple[ForeignKeySpec, ...]:
        """Foreign keys into the table itself: a copy must insert parents first (or
        defer the constraint, see :attr:`ForeignKeySpec.deferrable`)."""
        return tuple(fk for fk in self.foreign_keys if fk.references == self.name)

    def column(self, name: str) -> ColumnSpec:
        """The column called ``name`` (KeyError if none)."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def types(self, dialect: str) -> dict[str, str]:
        """Column name -> DDL type on ``dialect``."""
        return {c.name: c.type_for(dialect) for c in self.columns}

    def ddl_for(self, dialect: str) -> tuple[str, ...]:
        """The statements that create the table and its indexes on ``dialect``."""
        return self.ddl[_check(dialect)]


def render_create_table(
    name: str,
    columns: tuple[ColumnSpec, ...],
    primary_key: tuple[str, ...],
    foreign_keys: tuple[ForeignKeySpec, ...],
    dialect: Dialect,
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for hand-described tables, from the same
    :class:`ColumnSpec` objects the migration tool reads (one source of truth)."""
    lines: list[str] = []
    for column in columns:
        line = f"{column.name} {column.type_for(dialect)}"
        if not column.nullable:
            line += " NOT NULL"
        default = column.defaults.get(dialect)
        if default is not None:
            line += f" DEFAULT {default}"
        lines.append(line)
    lines.append(f"PRIMARY KEY ({', '.join(primary_key)})")
    for fk in foreign_keys:
        clause = f"FOREIGN KEY ({fk.column}) REFERENCES {fk.references} ({fk.referenced_column})"
        if fk.on_delete:
            clause += f" ON DELETE {fk.on_delete}"
        if fk.deferrable:
            clause += " DEFERRABLE INITIALLY IMMEDIATE"
        lines.append(clause)
    body = ",\n    ".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n    {body}\n)"


def _check(dialect: str) -> Dialect:
    if dialect in DIALECTS:
        return dialect
    raise ValueError(f"dialect {dialect!r}: expected 'postgresql' or 'sqlite'")
