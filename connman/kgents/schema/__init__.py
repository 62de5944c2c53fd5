"""DDL for both storage tracks, per dialect, and dialect helpers for migrations.

Dialect differences live here (and in the drivers), not in the adapters.
"""

from __future__ import annotations

from connman.kgents.schema.dialect import (
    autoincrement_pk,
    by_dialect,
    dialect_name,
    insert_or_ignore,
    is_postgres,
    is_sqlite,
    json_ddl,
    now_sql,
)
from connman.kgents.schema.spec import ColumnSpec, ForeignKeySpec, IndexSpec, TableSpec

__all__ = [
    "TRACKS",
    "ColumnSpec",
    "ForeignKeySpec",
    "IndexSpec",
    "TableSpec",
    "autoincrement_pk",
    "by_dialect",
    "dialect_name",
    "insert_or_ignore",
    "is_postgres",
    "is_sqlite",
    "json_ddl",
    "now_sql",
    "table_spec",
    "table_specs",
]

TRACKS: dict[str, tuple[str, ...]] = {
    # D-gent track: semantic memory, append-only with causal chains.
    "dgent": ("data",),
    # Brain's relational store: raw captures with embeddings.
    "brain": ("captures",),
    # SQLAlchemy/Alembic track: typed models.
    "sqlalchemy": ("brain_crystals", "brain_crystal_tags", "brain_settings"),
}
"""The tables each track owns, as kgents names them."""


def table_specs(track: str | None = None) -> tuple[TableSpec, ...]:
    """Every table connman creates (or only ``track``'s), in dependency order: a
    table comes after the tables its foreign keys reference. Each
    :class:`TableSpec` gives the columns with their kind and DDL type per dialect,
    the keys, and the DDL. (Imports SQLAlchemy for the ``sqlalchemy`` track.)"""
    from connman.kgents.schema import brain, dgent

    specs: list[TableSpec] = [*dgent.TABLES, *brain.TABLES]
    if track is None or track == "sqlalchemy":
        from connman.kgents.schema import models

        specs.extend(models.TABLES)
    if track is not None:
        if track not in TRACKS:
            raise ValueError(f"track {track!r}: expected one of {', '.join(TRACKS)}")
        specs = [spec for spec in specs if spec.track == track]
    return tuple(specs)


def table_spec(name: str) -> TableSpec:
    """The :class:`TableSpec` of table ``name`` (KeyError naming the known ones)."""
    track = next((t for t, names in TRACKS.items() if name in names), None)
    for spec in table_specs(track):
        if spec.name == name:
            return spec
    known = ", ".join(n for names in TRACKS.values() for n in names)
    raise KeyError(f"no table {name!r} in connman's schema (known: {known})")
