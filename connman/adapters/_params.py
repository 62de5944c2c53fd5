"""``:name`` parameters for raw SQL, on both drivers.

kgents writes queries with ``:name`` parameters and a dict of values.
:meth:`connman.dialect.SQLDialect.render` numbers them for the driver (asyncpg's
``$1``, sqlite3's ``?1``; a name used twice is one number) with SQLAlchemy ``text()``'s
rules: ``::cast`` is not a parameter, ``\\:`` is a literal colon, ``:name::type`` is a
parameter followed by a cast. This module checks the values and lines them up. Values
are always sent as bound parameters, never spliced into the SQL.

Rendered queries are cached per (query, dialect): kgents sends the same few query
strings over and over.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from connman.dialect import dialect_of
from connman.errors import InvalidInput, QueryParameterError

__all__ = ["bind", "bind_many", "compile_query"]


@functools.lru_cache(maxsize=1024)
def compile_query(query: str, dialect: str, portable: bool = False) -> tuple[str, tuple[str, ...]]:
    """``query`` rendered for ``dialect``'s driver, and the parameter name of each
    number (``$1``/``?1`` is the first). ``portable``: connman's own statement, see
    :meth:`~connman.dialect.SQLDialect.render`."""
    if not isinstance(query, str):
        raise InvalidInput(f"a query is a str, got {type(query).__name__}")
    return dialect_of(dialect).render(query, portable=portable)


def bind(
    query: str, params: Mapping[str, Any] | None, dialect: str, *, portable: bool = False
) -> tuple[str, list[Any]]:
    """The SQL for ``dialect`` and its positional arguments from ``params``
    (``portable``: see :func:`compile_query`).

    Raises:
        QueryParameterError: a ``:name`` of the query has no value in ``params``
            (every missing name is listed). Extra keys in ``params`` are ignored.
    """
    sql, names = compile_query(query, dialect, portable)
    values = params if params is not None else {}
    if not isinstance(values, Mapping):
        raise InvalidInput(f"params is a dict of :name values, got {type(values).__name__}")
    missing = [name for name in names if name not in values]
    if missing:
        raise _missing(missing, query)
    return sql, [values[name] for name in names]


def bind_many(
    query: str, params_list: list[Mapping[str, Any]], dialect: str
) -> tuple[str, list[list[Any]]]:
    """:func:`bind` for each of ``params_list`` (one compiled statement)."""
    sql, names = compile_query(query, dialect)
    rows: list[list[Any]] = []
    for index, values in enumerate(params_list):
        if not isinstance(values, Mapping):
            raise InvalidInput(
                f"params_list[{index}] is not a dict of :name values: {type(values).__name__}"
            )
        missing = [name for name in names if name not in values]
        if missing:
            raise _missing(missing, query, where=f"params_list[{index}]")
        rows.append([values[name] for name in names])
    return sql, rows


def _missing(missing: list[str], query: str, *, where: str = "params") -> QueryParameterError:
    shown = ", ".join(f":{name}" for name in missing)
    snippet = " ".join(query.split())
    if len(snippet) > 120:
        snippet = snippet[:117] + "..."
    return QueryParameterError(
        f"{where} has no value for {shown} (query: {snippet!r}). Pass every :name the "
        "query uses; write \\: for a colon that is not a parameter (e.g. in a string "
        "literal)."
    )
