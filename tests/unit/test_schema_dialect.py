"""connman.kgents.schema.dialect: the branches migrations no longer write themselves.

Inside a running migration (no ``bind``) the helpers are exercised by the example
revision in deploy/alembic, which the integration tests upgrade and downgrade on
both databases; here, the answers per dialect and the errors.
"""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine
from sqlalchemy.dialects import postgresql, sqlite

from connman import ConfigError
from connman.kgents.schema import (
    autoincrement_pk,
    by_dialect,
    dialect_name,
    insert_or_ignore,
    is_postgres,
    is_sqlite,
    json_ddl,
    now_sql,
)


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("postgresql", "postgresql"),
        ("sqlite", "sqlite"),
        (postgresql.dialect(), "postgresql"),
        (sqlite.dialect(), "sqlite"),
        (create_engine("sqlite://"), "sqlite"),  # an Engine (never connects here)
        (SimpleNamespace(dialect="postgresql"), "postgresql"),  # what a connman Lease has
        (SimpleNamespace(get_bind=lambda: create_engine("sqlite://")), "sqlite"),  # a Session
    ],
)
def test_dialect_name_of_every_kind_of_bind(bind: object, expected: str) -> None:
    assert dialect_name(bind) == expected
    assert is_postgres(bind) is (expected == "postgresql")
    assert is_sqlite(bind) is (expected == "sqlite")


def test_outside_a_migration_without_bind_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="no Alembic migration is running"):
        is_postgres()


def test_an_object_without_a_dialect_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot tell the dialect"):
        dialect_name(object())


def test_ddl_fragments_per_dialect() -> None:
    assert autoincrement_pk(bind="postgresql") == "id SERIAL PRIMARY KEY"
    assert autoincrement_pk("tag_id", bind="sqlite") == "tag_id INTEGER PRIMARY KEY AUTOINCREMENT"
    assert now_sql(bind="postgresql") == "now()"
    assert now_sql(bind="sqlite") == "(datetime('now'))"
    assert json_ddl(bind="postgresql") == "JSONB" and json_ddl(bind="sqlite") == "JSON"
    assert by_dialect(postgresql=1, sqlite=2, bind="sqlite") == 2
    with pytest.raises(ConfigError, match="mysql"):
        by_dialect(postgresql=1, sqlite=2, bind="mysql")


def test_insert_or_ignore_sql_per_dialect() -> None:
    row = {"slug": "a", "order": 2, "body": {"k": [1]}}
    pg = str(insert_or_ignore("notes", row, bind="postgresql"))
    assert pg == (
        'INSERT INTO notes (slug, "order", body) VALUES (:v0, :v1, CAST(:v2 AS JSONB)) '
        "ON CONFLICT DO NOTHING"
    )
    lite = str(insert_or_ignore("notes", row, bind="sqlite"))
    assert lite == 'INSERT OR IGNORE INTO notes (slug, "order", body) VALUES (:v0, :v1, :v2)'
    with pytest.raises(ConfigError):
        insert_or_ignore("notes", {}, bind="sqlite")


def test_sqlite_ddl_and_insert_run_on_sqlite() -> None:
    """The fragments are valid SQLite (PostgreSQL: the Alembic integration test)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(
        f"CREATE TABLE notes ({autoincrement_pk(bind='sqlite')}, slug TEXT UNIQUE, "
        f"body {json_ddl(bind='sqlite')}, at TIMESTAMP DEFAULT {now_sql(bind='sqlite')})"
    )
    statement = insert_or_ignore("notes", {"slug": "a", "body": {"k": 1}}, bind="sqlite")
    compiled = statement.compile(dialect=sqlite.dialect())
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    for _ in range(2):
        conn.execute(str(compiled), params)
    rows = conn.execute("SELECT id, slug, json_extract(body, '$.k'), at IS NOT NULL FROM notes")
    assert rows.fetchall() == [(1, "a", 1, 1)]
