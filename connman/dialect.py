"""What connman's SQL spells differently on PostgreSQL and SQLite: one object each.

:data:`POSTGRES` and :data:`SQLITE` (:func:`dialect_of` picks one by name) carry
every difference connman's own SQL meets, so a module that talks to both writes each
statement once and asks the dialect for the parts that differ:

- **Parameters.** Queries are written with ``:name`` parameters;
  :meth:`SQLDialect.render` numbers them in order of first use, ``$1`` for asyncpg,
  ``?1`` for sqlite3 (a name used twice is one number on both), with SQLAlchemy
  ``text()``'s rules for what a parameter is: ``::cast`` is not one, ``\\:`` is a
  literal colon, ``:name::type`` is a parameter followed by a cast.
- **Casts** after a parameter: kept on PostgreSQL; dropped on SQLite for connman's own
  statements written once for both (``portable=True``).
- **Transactions and DDL.** The statement that opens a transaction (``BEGIN`` /
  ``BEGIN IMMEDIATE``, which takes SQLite's write lock at once) and the one that
  serializes connman's DDL inside it: a transaction-scoped advisory lock on one key
  (:data:`DDL_LOCK_KEY`) on PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` already does.
- **DDL and DML spellings**: insert-or-ignore, the current time, the JSON column type,
  an auto-incrementing key, quoted identifiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from connman.errors import ConfigError

__all__ = [
    "DDL_LOCK_KEY",
    "POSTGRES",
    "SQLITE",
    "Rendered",
    "SQLDialect",
    "dialect_of",
    "quote_ident",
]

DDL_LOCK_KEY: Final = int.from_bytes(b"connman", "big")
"""The ``pg_advisory_xact_lock`` key every connman DDL transaction takes ("connman" as
an integer: fits a bigint, and is recognisable in ``pg_locks``)."""

# SQLAlchemy's own patterns (TextClause._bind_params_regex, compiler.BIND_PARAMS_ESC):
# what text() takes for a parameter and for an escaped colon, so queries written for
# text() render the same.
_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")
_ESCAPED = re.compile(r"\\(:\w*)(?![:\w])")
# A parameter followed by a cast (":meta::jsonb"), which _PARAM alone does not see.
_PARAM_THEN_CAST = re.compile(r"(?<![:\w\\]):(\w+)::")
_CAST_OF_PARAM = re.compile(r"(?<![:\w\\])(:\w+)::\w+")

Rendered = tuple[str, tuple[str, ...]]
"""The SQL for the driver, and the parameter name of each number (``$1`` is the first)."""


@dataclass(frozen=True, slots=True)
class SQLDialect:
    """How one backend spells what differs (see the module docstring)."""

    name: str
    """``"postgresql"`` or ``"sqlite"`` (what :attr:`connman.Lease.dialect` says)."""
    placeholder: str
    """The prefix of a numbered parameter: ``$`` / ``?``."""
    keeps_casts: bool
    """Whether ``::type`` casts stay in portable statements."""
    begin: str
    """The statement that opens a transaction."""
    ddl_lock: str | None
    """Run first in a DDL transaction to serialize connman's DDL; None where
    :attr:`begin` serializes it already."""
    insert_ignore: tuple[str, str]
    """The start and the end of an INSERT that skips conflicting rows."""
    now: str
    """The current time, valid in DML and after ``DEFAULT``."""
    json_type: str
    """The column type of JSON documents."""
    serial_pk: str
    """Column DDL after the name of an auto-incrementing integer primary key."""

    @property
    def postgres(self) -> bool:
        """True on PostgreSQL."""
        return self is POSTGRES

    def param(self, number: int) -> str:
        """The ``number``-th positional parameter: ``$3`` / ``?3``."""
        return f"{self.placeholder}{number}"

    def render(self, query: str, *, portable: bool = False) -> Rendered:
        """``query``'s ``:name`` parameters as numbered placeholders, and the names in
        number order. ``portable``: connman's own statement, whose casts after a
        parameter are dropped where :attr:`keeps_casts` is false."""
        if portable and not self.keeps_casts:
            query = _CAST_OF_PARAM.sub(r"\1", query)
        numbers: dict[str, int] = {}

        def number(match: re.Match[str]) -> str:
            return self.param(numbers.setdefault(match[1], len(numbers) + 1))

        prepared = _PARAM_THEN_CAST.sub(r":\1\\:\\:", query)
        return _ESCAPED.sub(r"\1", _PARAM.sub(number, prepared)), tuple(numbers)

    def insert_or_ignore(self, table: str, columns: str, values: str) -> str:
        """``INSERT INTO table (columns) VALUES (values)`` that skips a row whose key
        exists: ``... ON CONFLICT DO NOTHING`` / ``INSERT OR IGNORE ...``."""
        start, end = self.insert_ignore
        return f"{start} {table} ({columns}) VALUES ({values}){end}"

    @staticmethod
    def quote_ident(name: str) -> str:
        """``name`` as a quoted identifier (:func:`quote_ident`: the same on both)."""
        return quote_ident(name)


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier, on both dialects (always quoted, so any
    name works, reserved words and upper case included)."""
    return '"' + name.replace('"', '""') + '"'


POSTGRES: Final = SQLDialect(
    name="postgresql",
    placeholder="$",
    keeps_casts=True,
    begin="BEGIN",
    ddl_lock=f"SELECT pg_advisory_xact_lock({DDL_LOCK_KEY})",
    insert_ignore=("INSERT INTO", " ON CONFLICT DO NOTHING"),
    now="now()",
    json_type="JSONB",
    serial_pk="SERIAL PRIMARY KEY",
)
SQLITE: Final = SQLDialect(
    name="sqlite",
    placeholder="?",
    keeps_casts=False,
    begin="BEGIN IMMEDIATE",
    ddl_lock=None,
    insert_ignore=("INSERT OR IGNORE INTO", ""),
    # UTC text, which SQLAlchemy's DateTime reads; the parentheses make it a valid
    # column default.
    now="(datetime('now'))",
    # SQLite keeps JSON as text; SQLAlchemy's JSON type reads both.
    json_type="JSON",
    # AUTOINCREMENT needs exactly INTEGER PRIMARY KEY; with it ids are never reused,
    # as with a PostgreSQL sequence.
    serial_pk="INTEGER PRIMARY KEY AUTOINCREMENT",
)
_BY_NAME: Final = {d.name: d for d in (POSTGRES, SQLITE)}


def dialect_of(name: str) -> SQLDialect:
    """The dialect called ``name`` (a lease's ``dialect``).

    Raises:
        ConfigError: neither ``"postgresql"`` nor ``"sqlite"``.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"dialect {name!r}: connman speaks postgresql and sqlite") from None
