""":name parameters rendered for each driver (connman.dialect), with text()'s rules."""

from __future__ import annotations

import sqlite3

import pytest

from connman.adapters._params import bind, bind_many, compile_query
from connman.errors import QueryParameterError


def test_postgres_gets_numbered_parameters_and_keeps_casts() -> None:
    sql, args = bind(
        "SELECT :a, :b, :a, x::int, :meta::jsonb, '12:30' FROM t WHERE y LIKE 'a%'",
        {"a": 1, "b": 2, "meta": "{}", "extra": 3},
        "postgresql",
    )
    assert sql == "SELECT $1, $2, $1, x::int, $3::jsonb, '12:30' FROM t WHERE y LIKE 'a%'"
    assert args == [1, 2, "{}"]


def test_sqlite_gets_numbered_parameters_and_runs_them() -> None:
    sql, args = bind("SELECT :a, :b, :a", {"a": 1, "b": 2}, "sqlite")
    assert sql == "SELECT ?1, ?2, ?1"
    assert args == [1, 2]
    with sqlite3.connect(":memory:") as conn:
        assert conn.execute(sql, args).fetchone() == (1, 2, 1)


def test_an_escaped_colon_is_text() -> None:
    sql, args = bind("SELECT 'at \\:noon', :x", {"x": 1}, "postgresql")
    assert sql == "SELECT 'at :noon', $1"
    assert args == [1]


def test_missing_names_are_all_listed() -> None:
    with pytest.raises(QueryParameterError, match=r"no value for :b, :c \(query"):
        bind("SELECT :a, :b, :c, :b", {"a": 1}, "postgresql")
    with pytest.raises(QueryParameterError, match="no value for :a"):
        bind("SELECT :a", None, "sqlite")
    assert bind("SELECT 1", None, "sqlite") == ("SELECT 1", [])


def test_bind_many_checks_every_row() -> None:
    sql, rows = bind_many(
        "INSERT INTO t VALUES (:a, :b)", [{"a": 1, "b": 2}, {"b": 4, "a": 3}], "sqlite"
    )
    assert (sql, rows) == ("INSERT INTO t VALUES (?1, ?2)", [[1, 2], [3, 4]])
    with pytest.raises(QueryParameterError, match=r"params_list\[1\] has no value for :b"):
        bind_many("INSERT INTO t VALUES (:a, :b)", [{"a": 1, "b": 2}, {"a": 3}], "postgresql")


def test_compiled_queries_are_cached() -> None:
    compile_query.cache_clear()
    for _ in range(3):
        compile_query("SELECT :cached", "postgresql")
    assert compile_query.cache_info().hits == 2
