"""The content checksum of a table, defined once, computed alike by Python and by
PostgreSQL.

A table's checksum is the sum, mod 2**64, of one 64-bit number per row: the first 8
bytes (big-endian) of a SHA-256 over the row's canonical bytes. A sum, so that each
side may be read in whatever order is cheap for it (PostgreSQL need not sort keys as
SQLite does). The canonical bytes of a row are the row as PostgreSQL's binary COPY
format writes it: the column count (int16), then per value its length (int32, -1 for
NULL) and its binary send form, which depends on the target column's type:

=========  ===============================================  =======================
kind       bytes                                            PostgreSQL expression
=========  ===============================================  =======================
text       UTF-8                                            ``textsend(c)``
bytes      as is                                            ``c``
int        2, 4 or 8 bytes (the column's width), big-endian ``int2send(c)``...
float      IEEE 754, big-endian (8 bytes, or 4 for real)    ``float8send(c)``...
bool       one byte, 1 or 0                                 ``boolsend(c)``
datetime   int64 microseconds since 2000-01-01 (UTC)        ``timestamptz_send(c)``
date       int32 days since 2000-01-01                      ``date_send(c)``
=========  ===============================================  =======================

Why that form: a copy into PostgreSQL sends exactly these bytes
(:mod:`connman.migrate.pgcopy`), so the source side is hashed from slices of the COPY
data itself, with no second encoding of any value; and the target side is one
aggregate query (no row leaves the server; a parallel scan on big tables). JSON and
numeric columns have no such stable form (``jsonb`` reorders keys and respells
numbers): they are hashed apart, per row with the row's key, from values read back
and canonicalized in Python (:mod:`connman.migrate.convert`). A table's checksum is
the sum of both parts.
"""

from __future__ import annotations

import operator
import struct
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from hashlib import sha256
from itertools import repeat
from typing import Any

from connman.migrate.kinds import ColumnType
from connman.migrate.pgcopy import encode_column, utf8

__all__ = [
    "MASK",
    "Layout",
    "column_sum",
    "layout_for",
    "row_sum",
    "row_words",
    "sql_checksum",
    "sql_row_word",
    "sum_digests",
]

MASK = (1 << 64) - 1
_INT16 = struct.Struct(">h").pack
_INT32 = struct.Struct(">i").pack
_INT64 = struct.Struct(">q").pack
_PG_EPOCH_DAY = 730120  # date(2000, 1, 1).toordinal(): PostgreSQL's epoch
_PG_EPOCH_MICROS = 946_684_800_000_000  # 2000-01-01 in microseconds since 1970
_digest = operator.methodcaller("digest")
_HARD = frozenset({"json", "numeric"})
_BIG_ENDIAN = struct.pack("=Q", 1) == struct.pack(">Q", 1)


@dataclass(frozen=True, slots=True)
class Layout:
    """Which columns are hashed how, for one table (positions in copy order)."""

    types: tuple[ColumnType, ...]
    easy: tuple[int, ...]
    """Hashed together, one digest per row (PostgreSQL can compute these)."""
    hard: tuple[int, ...]
    """JSON and numeric columns: hashed with the key, from values read back."""
    key: tuple[int, ...]

    def split(self) -> bool:
        """True when some columns must be read back to be hashed."""
        return bool(self.hard)


def layout_for(types: Sequence[ColumnType], key: Sequence[int]) -> Layout:
    """The layout of a table whose columns have ``types`` and whose key columns
    are at ``key`` (all columns when it has no key)."""
    hard = tuple(i for i, t in enumerate(types) if t.kind in _HARD)
    easy = tuple(i for i in range(len(types)) if i not in hard)
    return Layout(tuple(types), easy, hard, tuple(key) or tuple(easy))


def row_sum(layout: Layout, rows: Sequence[tuple[Any, ...]], *, part: str = "all") -> int:
    """The checksum of canonical ``rows`` (``part``: ``easy``, ``hard`` or ``all``)."""
    if not rows:
        return 0
    return column_sum(layout, list(zip(*rows, strict=True)), part=part)


def column_sum(
    layout: Layout,
    columns: Sequence[Sequence[Any]],
    *,
    part: str = "all",
    shared: Mapping[int, tuple[list[bytes], list[bytes]]] | None = None,
) -> int:
    """:func:`row_sum` of rows given column by column (what the converter has).
    ``shared``: columns already encoded (bytes, int32 lengths) in exactly the form
    hashed here (the binary COPY form of the same values)."""
    if not columns or not columns[0]:
        return 0
    total = 0
    known = shared or {}
    if part in ("easy", "all") and layout.easy:
        total += sum_digests(_rows_bytes(layout, columns, layout.easy, known))
    if part in ("hard", "all") and layout.hard:
        total += sum_digests(_rows_bytes(layout, columns, layout.key + layout.hard, known))
    return total & MASK


def row_words(
    layout: Layout,
    columns: Sequence[Sequence[Any]],
    *,
    part: str,
    shared: Mapping[int, tuple[list[bytes], list[bytes]]] | None = None,
) -> list[int]:
    """Each row's own 64-bit digest of ``part`` (``easy`` or ``hard``), in row order:
    the terms :func:`column_sum` adds up (0 for every row when the part has no
    column). What tells a row stored under the same key apart from its source."""
    if not columns or not columns[0]:
        return []
    positions = layout.easy if part == "easy" else layout.key + layout.hard
    if (layout.easy if part == "easy" else layout.hard) == ():
        return [0] * len(columns[0])
    rows = _rows_bytes(layout, columns, positions, shared or {})
    words = array("Q", memoryview(b"".join(map(_digest, map(sha256, rows)))).cast("Q")[::4])
    if not _BIG_ENDIAN:
        words.byteswap()
    return list(words)


def sum_digests(rows: Iterable[bytes | memoryview]) -> int:
    """The sum of the rows' 64-bit digests (not yet reduced mod 2**64), from their
    canonical bytes (any buffer: slices of COPY data do)."""
    digests = b"".join(map(_digest, map(sha256, rows)))
    words = array("Q", memoryview(digests).cast("Q")[::4])  # first 8 bytes of each
    if not _BIG_ENDIAN:
        words.byteswap()  # read them big-endian, as PostgreSQL's bit(64) does
    return sum(words)


def _rows_bytes(
    layout: Layout,
    columns: Sequence[Sequence[Any]],
    positions: Sequence[int],
    shared: Mapping[int, tuple[list[bytes], list[bytes]]],
) -> Iterator[bytes]:
    # Column by column, then one C-level join per row: the per-row Python work of a
    # naive loop would cost more than the hashing.
    pieces: list[Iterable[bytes]] = [repeat(_INT16(len(positions)))]
    for i in positions:
        data, sizes = shared[i] if i in shared else _encode(layout.types[i], columns[i])
        pieces += (sizes, data)
    return map(b"".join, zip(*pieces, strict=False))  # repeat() never ends


def _encode(kind: ColumnType, values: Sequence[Any]) -> tuple[list[bytes], list[bytes]]:
    """The bytes of each canonical value (b"" for NULL) and their lengths as int32
    (-1 for NULL): the encoding a binary COPY uses."""
    return encode_column(_encoder(kind), values)


def _encoder(kind: ColumnType) -> Callable[[Any], bytes]:
    if kind.kind == "int":
        return {16: _INT16, 32: _INT32}.get(kind.int_bits, _INT64)
    if kind.kind == "float":
        return struct.Struct(">f" if kind.single else ">d").pack
    return _ENCODERS[kind.kind]


def _bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def _micros(value: int) -> bytes:
    return _INT64(value - _PG_EPOCH_MICROS)


def _date(value: int) -> bytes:
    return _INT32(value - _PG_EPOCH_DAY)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "text": utf8,
    "bytes": bytes,
    "bool": _bool,
    "datetime": _micros,
    "date": _date,
    # Hashed in Python on both sides (never by PostgreSQL): any stable bytes do.
    "json": _as_bytes,
    "numeric": _as_bytes,
}


def _sql_value(quoted: str, kind: ColumnType) -> str:
    """The column's length and bytes as one bytea (int32 -1 alone for NULL)."""
    null = "'\\xffffffff'::bytea"
    if kind.kind in ("text", "bytes"):
        value = f"{quoted}::text" if kind.kind == "text" else f"{quoted}::bytea"
        data = f"textsend({value})" if kind.kind == "text" else value
        # octet_length of a text is its UTF-8 size in a UTF-8 database (what
        # connman requires of a target); of a stored value it reads no data.
        return f"coalesce(int4send(octet_length({value})) || {data}, {null})"
    if kind.kind == "int":
        width, send = {16: (2, "int2send(%s::int2)"), 32: (4, "int4send(%s::int4)")}.get(
            kind.int_bits, (8, "int8send(%s::int8)")
        )
    elif kind.kind == "float":
        width, send = (
            (4, "float4send(%s::float4)") if kind.single else (8, "float8send(%s::float8)")
        )
    elif kind.kind == "bool":
        width, send = 1, "boolsend(%s::bool)"
    elif kind.kind == "datetime":
        width = 8
        send = (
            "timestamptz_send(%s::timestamptz)"
            if kind.timezone
            else "timestamp_send(%s::timestamp)"
        )
    elif kind.kind == "date":
        width, send = 4, "date_send(%s::date)"
    else:
        raise ValueError(f"no SQL checksum for {kind.kind}")
    return f"coalesce('\\x{width:08x}'::bytea || {send % quoted}, {null})"


def sql_row_word(names: Sequence[str], layout: Layout) -> str:
    """The PostgreSQL expression of one row's easy-part digest (a signed bigint; mask
    it with :data:`MASK`): :func:`row_words` (``part='easy'``) of the same row.
    ``names`` are the quoted (or qualified) column names in copy order."""
    if not layout.easy:
        return "0::bigint"
    values = [_sql_value(names[i], layout.types[i]) for i in layout.easy]
    row = " || ".join([f"'\\x{len(values):04x}'::bytea", *values])
    return f"('x' || encode(substr(sha256({row}), 1, 8), 'hex'))::bit(64)::bigint"


def sql_checksum(table: str, names: Sequence[str], layout: Layout) -> str:
    """The PostgreSQL query computing (row count, easy-part checksum) of ``table``:
    the same number :func:`row_sum` (``part='easy'``) gives for the same rows.
    ``names`` are the quoted column names in copy order."""
    if not layout.easy:
        return f"SELECT count(*), 0 FROM {table}"
    return f"SELECT count(*), coalesce(sum({sql_row_word(names, layout)}), 0) FROM {table}"
