"""One SQLDialect per backend: what connman's SQL spells differently."""

from __future__ import annotations

import sqlite3

import pytest

from connman.dialect import DDL_LOCK_KEY, POSTGRES, SQLITE, dialect_of, quote_ident
from connman.errors import ConfigError

PORTABLE = "INSERT INTO t (a, b) SELECT :a::text, :b::jsonb WHERE :a::text IS NOT NULL"


def test_a_portable_statement_keeps_its_casts_on_postgres_only() -> None:
    assert POSTGRES.render(PORTABLE, portable=True) == (
        "INSERT INTO t (a, b) SELECT $1::text, $2::jsonb WHERE $1::text IS NOT NULL",
        ("a", "b"),
    )
    sql, names = SQLITE.render(PORTABLE, portable=True)
    assert (sql, names) == ("INSERT INTO t (a, b) SELECT ?1, ?2 WHERE ?1 IS NOT NULL", ("a", "b"))
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (a TEXT, b TEXT)")
        conn.execute(sql, ["x", "{}"])
        assert conn.execute("SELECT a, b FROM t").fetchall() == [("x", "{}")]


def test_a_query_from_a_user_keeps_its_casts_everywhere() -> None:
    # Only connman's own statements are portable: a cast a caller wrote is theirs.
    assert SQLITE.render("SELECT :a::int")[0] == "SELECT ?1::int"


def test_text_rules_literal_colons_and_casts_are_not_parameters() -> None:
    sql, names = POSTGRES.render("SELECT x::int, '12\\:30', :a, a:::b FROM t")
    assert (sql, names) == ("SELECT x::int, '12:30', $1, a:::b FROM t", ("a",))


def test_transactions_and_ddl_serialize_per_backend() -> None:
    assert (POSTGRES.begin, SQLITE.begin) == ("BEGIN", "BEGIN IMMEDIATE")
    assert POSTGRES.ddl_lock == f"SELECT pg_advisory_xact_lock({DDL_LOCK_KEY})"
    assert SQLITE.ddl_lock is None  # BEGIN IMMEDIATE is SQLite's lock


def test_insert_or_ignore_skips_an_existing_key_on_sqlite() -> None:
    sql = SQLITE.insert_or_ignore(quote_ident("order"), '"id"', "?1")
    assert sql == 'INSERT OR IGNORE INTO "order" ("id") VALUES (?1)'
    assert POSTGRES.insert_or_ignore("t", "id", "$1") == (
        "INSERT INTO t (id) VALUES ($1) ON CONFLICT DO NOTHING"
    )
    with sqlite3.connect(":memory:") as conn:
        conn.execute('CREATE TABLE "order" (id INTEGER PRIMARY KEY)')
        assert conn.execute(sql, [1]).rowcount == 1
        assert conn.execute(sql, [1]).rowcount == 0


def test_dialects_by_name() -> None:
    assert dialect_of("postgresql") is POSTGRES and POSTGRES.postgres
    assert dialect_of("sqlite") is SQLITE and not SQLITE.postgres
    with pytest.raises(ConfigError, match="mysql"):
        dialect_of("mysql")
    assert quote_ident('we"ird') == '"we""ird"'
