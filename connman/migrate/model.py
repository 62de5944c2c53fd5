"""What a migration knows about a table on either side (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field

from connman.migrate.kinds import ColumnType

__all__ = ["Catalog", "Column", "ForeignKey", "Table"]


@dataclass(frozen=True, slots=True)
class Column:
    """A column as a database declares it."""

    name: str
    declared: str
    """The declared type, verbatim (SQLite) or ``format_type()`` (PostgreSQL)."""
    nullable: bool = True
    has_default: bool = False
    type: ColumnType | None = None
    """The kind, when the declared type says it (targets, PostgreSQL sources)."""
    generated: bool = False
    """Computed by the database (``GENERATED ALWAYS``): never copied."""


@dataclass(frozen=True, slots=True)
class ForeignKey:
    """``column`` references ``table(referenced)``."""

    column: str
    table: str
    referenced: str


@dataclass(frozen=True, slots=True)
class Table:
    """One table of one database."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    rowid: bool = False
    """SQLite: a rowid table (reading in rowid order is a sequential scan)."""
    indexes: tuple[str, ...] = ()
    comment: str | None = None
    """PostgreSQL: the table's comment (marks a bulk load in progress)."""

    def column(self, name: str) -> Column | None:
        """The column called ``name``, or None."""
        return next((c for c in self.columns if c.name == name), None)

    @property
    def self_reference(self) -> ForeignKey | None:
        """A single-column foreign key into the table's own single-column primary
        key (D-gent's causal chain): rows must be copied parents first."""
        if len(self.primary_key) != 1:
            return None
        for fk in self.foreign_keys:
            if fk.table == self.name and fk.referenced == self.primary_key[0]:
                return fk
        return None


@dataclass(slots=True)
class Catalog:
    """The tables of one database, and what was skipped and why."""

    tables: dict[str, Table] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Table name -> why it is not migrated (virtual tables, their shadow tables)."""
