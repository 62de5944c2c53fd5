"""The D-gent track: table ``data`` (append-only data with causal chains).

PostgreSQL (as kgents creates it, same index names so an existing database gains no
duplicates)::

    data(id TEXT PK, content BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL,
         causal_parent TEXT REFERENCES data(id) ON DELETE SET NULL,
         metadata JSONB DEFAULT '{}')
    idx_data_created    (created_at DESC)
    idx_data_parent     (causal_parent) WHERE causal_parent IS NOT NULL
    idx_data_id_prefix  (id text_pattern_ops)   -- LIKE 'prefix%' under any collation

SQLite: BLOB / REAL / TEXT (JSON text). Differences, on purpose:

- **The foreign key is declared on SQLite too.** kgents' SQLite variant had none;
  connman turns ``foreign_keys`` on for every SQLite connection, so the constraint is
  enforced exactly as on PostgreSQL (a missing parent is refused, deleting a parent
  sets its children's ``causal_parent`` to NULL). The D-gent adapter checks the parent
  and nulls the children itself as well, so a ``data`` table created by old kgents
  without the constraint behaves the same.
- **No prefix index on SQLite.** The primary key's own index (BINARY collation, i.e.
  code point order) serves prefix scans as a range ``id >= :p AND id < :p_next``;
  SQLite's LIKE is case-insensitive and could only use a NOCASE index.
- The foreign key is ``DEFERRABLE INITIALLY IMMEDIATE`` on both (checked per
  statement, as before) so a bulk copy can defer it and insert rows in any order.
  Tables created by old kgents lack this; a copy into them must insert parents first.
"""

from __future__ import annotations

from connman.kgents.schema.spec import (
    DIALECTS,
    ColumnSpec,
    ForeignKeySpec,
    IndexSpec,
    TableSpec,
    render_create_table,
)

__all__ = ["DATA", "TABLES"]

_COLUMNS = (
    ColumnSpec("id", "text", {"postgresql": "TEXT", "sqlite": "TEXT"}, nullable=False),
    ColumnSpec("content", "bytes", {"postgresql": "BYTEA", "sqlite": "BLOB"}, nullable=False),
    ColumnSpec(
        "created_at", "float", {"postgresql": "DOUBLE PRECISION", "sqlite": "REAL"}, nullable=False
    ),
    ColumnSpec("causal_parent", "text", {"postgresql": "TEXT", "sqlite": "TEXT"}),
    ColumnSpec(
        "metadata",
        "json",
        {"postgresql": "JSONB", "sqlite": "TEXT"},
        defaults={"postgresql": "'{}'::jsonb", "sqlite": "'{}'"},
    ),
)
_PK = ("id",)
_FKS = (ForeignKeySpec("causal_parent", "data", "id", on_delete="SET NULL", deferrable=True),)
_INDEXES = (
    IndexSpec(
        "idx_data_created",
        {
            "postgresql": "CREATE INDEX IF NOT EXISTS idx_data_created ON data (created_at DESC)",
            "sqlite": "CREATE INDEX IF NOT EXISTS idx_data_created ON data (created_at DESC)",
        },
    ),
    IndexSpec(
        "idx_data_parent",
        {
            dialect: "CREATE INDEX IF NOT EXISTS idx_data_parent ON data (causal_parent) "
            "WHERE causal_parent IS NOT NULL"
            for dialect in DIALECTS
        },
    ),
    IndexSpec(
        "idx_data_id_prefix",
        {
            "postgresql": "CREATE INDEX IF NOT EXISTS idx_data_id_prefix "
            "ON data (id text_pattern_ops)"
        },
    ),
)

DATA = TableSpec(
    name="data",
    track="dgent",
    columns=_COLUMNS,
    primary_key=_PK,
    foreign_keys=_FKS,
    indexes=_INDEXES,
    ddl={
        dialect: (
            render_create_table("data", _COLUMNS, _PK, _FKS, dialect),
            *(ix.ddl[dialect] for ix in _INDEXES if dialect in ix.ddl),
        )
        for dialect in DIALECTS
    },
)
"""D-gent's ``data`` table."""

TABLES: tuple[TableSpec, ...] = (DATA,)
"""The D-gent track's tables, in dependency order."""
