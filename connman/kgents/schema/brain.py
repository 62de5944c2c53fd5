"""The Brain track: table ``captures`` (raw captured content with its embedding).

The same on both dialects, as kgents creates it (TEXT columns, ISO timestamps as
text, JSON as text), so existing databases keep working::

    captures(id TEXT PK, content TEXT NOT NULL, content_hash TEXT (md5 hex),
             embedding_json TEXT (JSON array of floats), captured_at TEXT NOT NULL
             (ISO 8601), updated_at TEXT, metadata_json TEXT, access_count INTEGER
             DEFAULT 0)
    idx_captures_captured_at (captured_at)

``access_count`` was added to kgents later by ``ALTER TABLE``; :data:`UPGRADES` brings
an older table up to date the same way.

Every capture has a ``brain_crystals`` row with the same id (see
:mod:`connman.kgents.schema.models` and :mod:`connman.kgents.coherence`).
"""

from __future__ import annotations

from connman.kgents.schema.spec import (
    DIALECTS,
    ColumnSpec,
    IndexSpec,
    TableSpec,
    render_create_table,
)

__all__ = ["CAPTURES", "TABLES", "UPGRADES"]


def _text(name: str, *, nullable: bool = True) -> ColumnSpec:
    return ColumnSpec(name, "text", {"postgresql": "TEXT", "sqlite": "TEXT"}, nullable=nullable)


_COLUMNS = (
    _text("id", nullable=False),
    _text("content", nullable=False),
    _text("content_hash"),
    _text("embedding_json"),
    _text("captured_at", nullable=False),
    _text("updated_at"),
    _text("metadata_json"),
    ColumnSpec(
        "access_count",
        "int",
        {"postgresql": "INTEGER", "sqlite": "INTEGER"},
        defaults={"postgresql": "0", "sqlite": "0"},
    ),
)
_PK = ("id",)
_INDEXES = (
    IndexSpec(
        "idx_captures_captured_at",
        {
            dialect: "CREATE INDEX IF NOT EXISTS idx_captures_captured_at ON captures (captured_at)"
            for dialect in DIALECTS
        },
    ),
)

CAPTURES = TableSpec(
    name="captures",
    track="brain",
    columns=_COLUMNS,
    primary_key=_PK,
    indexes=_INDEXES,
    ddl={
        dialect: (
            render_create_table("captures", _COLUMNS, _PK, (), dialect),
            *(ix.ddl[dialect] for ix in _INDEXES),
        )
        for dialect in DIALECTS
    },
)
"""Brain's ``captures`` table."""

UPGRADES: dict[str, tuple[tuple[str, str], ...]] = {
    # (column, ALTER TABLE statement): run when the column is missing.
    "captures": (
        ("access_count", "ALTER TABLE captures ADD COLUMN access_count INTEGER DEFAULT 0"),
    ),
}
"""Columns older kgents tables lack, and how to add them (same SQL on both dialects)."""

TABLES: tuple[TableSpec, ...] = (CAPTURES,)
"""The Brain track's tables, in dependency order."""
