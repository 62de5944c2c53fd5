"""``:name`` parameters for raw SQL, on both drivers, without a tokenizer of our own.

kgents writes queries with ``:name`` parameters and a dict of values. SQLAlchemy's
``text()`` already knows that syntax: it skips ``::cast``, honours ``\\:`` escapes,
and compiles to asyncpg's ``$1`` (numeric-dollar) or sqlite3's ``?`` (qmark) with the
parameter names in positional order. Values are always sent as bound parameters,
never spliced into the SQL.

One addition: ``text()`` does not see ``:name::type`` (a parameter followed by a
cast, common in PostgreSQL: ``:meta::jsonb``) as a parameter; such a name is turned
into ``:name\\:\\:type`` first, which ``text()`` compiles to ``$1::type``.

Compiled queries are cached per (query, dialect): kgents sends the same few query
strings over and over.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import text

from connman.errors import InvalidInput, QueryParameterError
from connman.kgents.schema.models import sqlalchemy_dialect

__all__ = ["bind", "bind_many", "compile_query"]

# The start of text()'s own bind pattern, followed by a cast.
_NAME_THEN_CAST = re.compile(r"(?<![:\w\\]):(\w+)::")


@functools.lru_cache(maxsize=1024)
def compile_query(query: str, dialect: str) -> tuple[str, tuple[str, ...]]:
    """``query`` compiled for ``dialect``'s driver, and the parameter name of each
    positional placeholder (a name used twice appears twice on SQLite, once on
    PostgreSQL, where ``$1`` can be repeated)."""
    if not isinstance(query, str):
        raise InvalidInput(f"a query is a str, got {type(query).__name__}")
    prepared = _NAME_THEN_CAST.sub(r":\1\\:\\:", query)
    compiled = text(prepared).compile(dialect=sqlalchemy_dialect(dialect))
    return compiled.string, tuple(compiled.positiontup or ())


def bind(query: str, params: Mapping[str, Any] | None, dialect: str) -> tuple[str, list[Any]]:
    """The SQL for ``dialect`` and its positional arguments from ``params``.

    Raises:
        QueryParameterError: a ``:name`` of the query has no value in ``params``
            (every missing name is listed). Extra keys in ``params`` are ignored.
    """
    sql, names = compile_query(query, dialect)
    values = params if params is not None else {}
    if not isinstance(values, Mapping):
        raise InvalidInput(f"params is a dict of :name values, got {type(values).__name__}")
    missing = [name for name in dict.fromkeys(names) if name not in values]
    if missing:
        raise _missing(missing, query)
    return sql, [values[name] for name in names]


def bind_many(
    query: str, params_list: list[Mapping[str, Any]], dialect: str
) -> tuple[str, list[list[Any]]]:
    """:func:`bind` for each of ``params_list`` (one compiled statement)."""
    sql, names = compile_query(query, dialect)
    rows: list[list[Any]] = []
    unique = tuple(dict.fromkeys(names))
    for index, values in enumerate(params_list):
        if not isinstance(values, Mapping):
            raise InvalidInput(
                f"params_list[{index}] is not a dict of :name values: {type(values).__name__}"
            )
        missing = [name for name in unique if name not in values]
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
