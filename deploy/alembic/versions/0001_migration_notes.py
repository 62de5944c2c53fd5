"""Example revision: one table written once for PostgreSQL and SQLite.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

What kgents' revisions spelled as ``if is_postgres(): ... else: ...`` (SERIAL vs
INTEGER PRIMARY KEY AUTOINCREMENT, NOW() vs datetime('now'), ON CONFLICT DO NOTHING
vs INSERT OR IGNORE, JSONB vs JSON) comes from connman.kgents.schema.dialect; the one step
that exists on PostgreSQL only (a GIN index) is skipped on SQLite.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from connman.kgents.schema import dialect

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE migration_notes ("
        f"{dialect.autoincrement_pk('id')}, "
        "slug VARCHAR(64) NOT NULL UNIQUE, "
        f"body {dialect.json_ddl()} NOT NULL, "
        f"created_at TIMESTAMP NOT NULL DEFAULT {dialect.now_sql()})"
    )
    # Seeding is idempotent: running it twice (or against a copy) adds nothing.
    for _ in range(2):
        op.execute(
            dialect.insert_or_ignore(
                "migration_notes", {"slug": "created", "body": {"by": "alembic"}}
            )
        )
    if dialect.is_sqlite():
        return
    op.execute("CREATE INDEX ix_migration_notes_body ON migration_notes USING gin (body)")


def downgrade() -> None:
    op.execute("DROP TABLE migration_notes")
