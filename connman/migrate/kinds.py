"""Column types on each side of a migration, as one small vocabulary.

A column's *kind* says what its values are (text, bytes, an int, a JSON document, a
point in time...), whatever the dialect calls it. Each side of a migration maps its
declared types to kinds (:func:`from_postgres`, :func:`from_sqlite`), the target's
types decide the conversions, and the kind picks the DDL for a table that has to be
created (:func:`postgres_ddl`, :func:`sqlite_ddl`). Tables connman knows take their
kinds from :mod:`connman.kgents.schema`; others are inferred from SQLite's declared types
and the values themselves (:func:`infer_sqlite`), and the choice is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ColumnType",
    "Kind",
    "SqliteTimeStyle",
    "ValueStats",
    "from_postgres",
    "from_sqlite",
    "infer_sqlite",
    "postgres_ddl",
    "sqlite_ddl",
]

Kind = Literal["text", "bytes", "int", "float", "bool", "json", "datetime", "date", "numeric"]

SqliteTimeStyle = Literal["sqlalchemy", "iso"]
"""How a SQLite target stores a point in time: ``sqlalchemy`` is SQLAlchemy's
``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC (connman's models read it back as aware UTC);
``iso`` keeps the offset (``...+00:00``), for tables connman does not know."""


@dataclass(frozen=True, slots=True)
class ColumnType:
    """What a target column holds and how its values must be shaped."""

    kind: Kind
    ddl: str
    """The type as the target declares it (or will, once created)."""
    timezone: bool = True
    """For ``datetime``: aware (``timestamptz``) rather than naive (``timestamp``)."""
    int_bits: int = 64
    """For ``int``: 16, 32 or 64 (values outside are rejected, not wrapped)."""
    single: bool = False
    """For ``float``: PostgreSQL ``real`` (values rounded to single precision)."""
    time_style: SqliteTimeStyle = "iso"
    """For ``datetime`` on a SQLite target: how the text is written."""
    max_length: int | None = None
    """For ``text``: ``varchar(n)`` / ``character(n)`` (longer values are rejected)."""
    cast_text: bool = False
    """A PostgreSQL type connman has no kind for (uuid, arrays, ranges...): read as
    ``column::text`` and migrated as text."""

    def describe(self) -> str:
        """Short form for plans and reports, e.g. ``jsonb`` or ``timestamptz``."""
        return self.ddl.lower()


_PG_INT = {"smallint": 16, "integer": 32, "bigint": 64}


def from_postgres(type_name: str) -> ColumnType:
    """The kind of a PostgreSQL column, from ``format_type()`` (``integer``,
    ``character varying(64)``, ``timestamp with time zone``...)."""
    name = type_name.lower().strip()
    base = name.split("(", 1)[0].strip()
    if base in _PG_INT:
        return ColumnType("int", type_name, int_bits=_PG_INT[base])
    if base in ("text", "character varying", "character", "varchar", "char", "name", "citext"):
        length = re.search(r"\((\d+)\)", name)
        return ColumnType("text", type_name, max_length=int(length[1]) if length else None)
    if base == "bytea":
        return ColumnType("bytes", type_name)
    if base == "double precision":
        return ColumnType("float", type_name)
    if base == "real":
        return ColumnType("float", type_name, single=True)
    if base in ("numeric", "decimal"):
        return ColumnType("numeric", type_name)
    if base == "boolean":
        return ColumnType("bool", type_name)
    if base in ("json", "jsonb"):
        return ColumnType("json", type_name)
    if base == "timestamp with time zone":
        return ColumnType("datetime", type_name, timezone=True)
    if base == "timestamp without time zone":
        return ColumnType("datetime", type_name, timezone=False)
    if base == "date":
        return ColumnType("date", type_name)
    return ColumnType("text", type_name, cast_text=True)


def from_sqlite(declared: str) -> ColumnType:
    """The kind of a SQLite column from its declared type, for a target file's tables
    (SQLite's affinity rules, refined by the names SQLAlchemy and kgents declare:
    ``DATETIME``, ``JSON``, ``BOOLEAN``...)."""
    text = declared.upper()
    if "INT" in text:
        return ColumnType("int", declared or "INTEGER")
    if "BOOL" in text:
        return ColumnType("bool", declared)
    if "JSON" in text:
        return ColumnType("json", declared)
    if "TIMESTAMP" in text or "DATETIME" in text:
        return ColumnType("datetime", declared, timezone=True, time_style="iso")
    if text.startswith("DATE"):
        return ColumnType("date", declared)
    if any(t in text for t in ("CHAR", "CLOB", "TEXT")):
        return ColumnType("text", declared)
    if "BLOB" in text or not text:
        return ColumnType("bytes" if "BLOB" in text else "text", declared or "TEXT")
    if any(t in text for t in ("REAL", "FLOA", "DOUB")):
        return ColumnType("float", declared)
    if "NUMERIC" in text or "DECIMAL" in text:
        return ColumnType("numeric", declared)
    return ColumnType("text", declared)


def postgres_ddl(kind: Kind, *, timezone: bool = True) -> str:
    """The PostgreSQL type connman creates for ``kind``."""
    if kind == "datetime":
        return "TIMESTAMPTZ" if timezone else "TIMESTAMP"
    return {
        "text": "TEXT",
        "bytes": "BYTEA",
        "int": "BIGINT",
        "float": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "json": "JSONB",
        "date": "DATE",
        "numeric": "NUMERIC",
    }[kind]


def sqlite_ddl(kind: Kind) -> str:
    """The SQLite type connman declares for ``kind`` (names that map back to the
    same kind through :func:`from_sqlite`, so a round trip keeps the types)."""
    return {
        "text": "TEXT",
        "bytes": "BLOB",
        "int": "INTEGER",
        "float": "REAL",
        "bool": "BOOLEAN",
        "json": "JSON",
        "datetime": "TIMESTAMP",
        "date": "DATE",
        "numeric": "NUMERIC",
    }[kind]


@dataclass(frozen=True, slots=True)
class ValueStats:
    """What one scan of a SQLite column found (for tables connman does not know)."""

    rows: int = 0
    nulls: int = 0
    integers: int = 0
    reals: int = 0
    texts: int = 0
    blobs: int = 0
    zero_one: int = 0
    """Integers that are 0 or 1."""
    iso_times: int = 0
    """Texts that look like ISO 8601 points in time (``YYYY-MM-DD[ T]HH:MM...``)."""
    iso_dates: int = 0
    """Texts that are exactly ``YYYY-MM-DD``."""
    json_docs: int = 0
    """Texts that are valid JSON objects or arrays."""


_ISO_SQL = "'[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9][ T][0-2][0-9]:[0-5][0-9]*'"
_DATE_SQL = "'[0-9][0-9][0-9][0-9]-[0-1][0-9]-[0-3][0-9]'"


def stats_sql(column: str) -> str:
    """SQLite aggregate expressions filling a :class:`ValueStats` in one table scan
    (``column`` already quoted). JSON detection needs SQLite's JSON1 (built in since
    3.38; older builds report no JSON documents)."""
    c = column
    return ", ".join(
        [
            f"sum({c} IS NULL)",
            f"sum(typeof({c}) = 'integer')",
            f"sum(typeof({c}) = 'real')",
            f"sum(typeof({c}) = 'text')",
            f"sum(typeof({c}) = 'blob')",
            f"sum(typeof({c}) = 'integer' AND {c} IN (0, 1))",
            f"sum(typeof({c}) = 'text' AND {c} GLOB {_ISO_SQL})",
            f"sum(typeof({c}) = 'text' AND {c} GLOB {_DATE_SQL})",
            f"sum(typeof({c}) = 'text' AND substr(ltrim({c}), 1, 1) IN ('{{', '[') "
            f"AND json_valid({c}))",
        ]
    )


_BOOL_NAME = re.compile(r"BOOL", re.I)


def infer_sqlite(declared: str, stats: ValueStats) -> tuple[ColumnType, str]:
    """The PostgreSQL type for a column of a table connman does not know, and why.

    The declared type proposes, the values decide: a declared ``DATETIME`` whose
    values are not all points in time stays text rather than losing rows; a
    ``TEXT`` column whose every value is an ISO timestamp becomes ``timestamptz``.
    """
    text = declared.upper()
    present = stats.rows - stats.nulls
    only_ints = stats.integers == present
    numeric = stats.integers + stats.reals == present
    only_texts = stats.texts == present
    if present == 0:
        return _pg(from_sqlite(declared).kind), "no values: from the declared type"
    if stats.blobs:
        return _pg("bytes"), f"{stats.blobs} BLOB value(s)"
    if _BOOL_NAME.search(text) and stats.zero_one == present:
        return _pg("bool"), "declared boolean, values 0/1"
    declared_time = "TIMESTAMP" in text or "DATETIME" in text
    if declared_time and numeric:
        return _pg("datetime"), "declared a time, values are epoch seconds"
    if only_ints:
        return _pg("int"), "integers"
    if numeric:
        return _pg("float"), "numbers" if stats.integers else "reals"
    if only_texts and stats.json_docs == present and "CHAR" not in text:
        return _pg("json"), "every value is a JSON object or array"
    if only_texts and stats.iso_dates == present:
        return _pg("date"), "every value is a YYYY-MM-DD date"
    if only_texts and stats.iso_times == present:
        return _pg("datetime"), "every value is an ISO 8601 time (no offset: taken as UTC)"
    if stats.texts and stats.texts != present:
        return _pg("text"), "mixed values: kept as text"
    return _pg("text"), "text"


def _pg(kind: Kind) -> ColumnType:
    return ColumnType(kind, postgres_ddl(kind))
