"""The content checksum of a table, defined once, computed alike by Python and by
PostgreSQL.

A table's checksum is the sum, mod 2**64, of one 64-bit number per row: the first 8
bytes (big-endian) of a SHA-256 over the row's canonical bytes. A sum, so that each
side may be read in whatever order is cheap for it (PostgreSQL need not sort keys as
SQLite does). The canonical bytes of a row are the lengths of its values, each a
4-byte big-endian signed integer (-1 for NULL), followed by the values' bytes, where
a value's bytes depend on its kind only:

=========  ======================================  ==================================
kind       bytes                                   PostgreSQL expression
=========  ======================================  ==================================
text       UTF-8                                   ``convert_to(c, 'UTF8')``
bytes      as is                                   ``c``
int        decimal digits                          ``convert_to(c::text, 'UTF8')``
float      IEEE 754, big-endian (8 or 4 bytes)     ``float8send(c)`` / ``float4send(c)``
bool       one byte, 1 or 0                        ``boolsend(c)``
datetime   microseconds since 1970 UTC, int64      ``int8send(round(extract(epoch ...``
date       days since 1970-01-01, int32            ``int4send(c - DATE '1970-01-01')``
=========  ======================================  ==================================

So a PostgreSQL target computes its side with one aggregate query (no row leaves the
server; a parallel scan on big tables), while the source side is hashed in Python as
the rows stream past during the copy. JSON and numeric columns have no such
expression (``jsonb`` reorders keys and respells numbers): they are hashed apart,
per row with the row's key, from values read back and canonicalized in Python
(:mod:`connman.migrate.convert`). A table's checksum is the sum of both parts.
"""

from __future__ import annotations

import operator
import struct
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from connman.migrate.kinds import ColumnType

__all__ = ["MASK", "Layout", "layout_for", "row_sum", "sql_checksum"]

MASK = (1 << 64) - 1
_DOUBLE = struct.Struct(">d").pack
_SINGLE = struct.Struct(">f").pack
_INT64 = struct.Struct(">q").pack
_INT32 = struct.Struct(">i").pack
_EPOCH_DAY = 719163  # date(1970, 1, 1).toordinal()
_digest = operator.methodcaller("digest")
_HARD = frozenset({"json", "numeric"})


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


def column_sum(layout: Layout, columns: Sequence[Sequence[Any]], *, part: str = "all") -> int:
    """:func:`row_sum` of rows given column by column (what the converter has)."""
    if not columns or not columns[0]:
        return 0
    total = 0
    if part in ("easy", "all") and layout.easy:
        total += _sum_digests(_rows_bytes(layout, columns, layout.easy))
    if part in ("hard", "all") and layout.hard:
        total += _sum_digests(_rows_bytes(layout, columns, layout.key + layout.hard))
    return total & MASK


def _rows_bytes(
    layout: Layout, columns: Sequence[Sequence[Any]], positions: Sequence[int]
) -> list[bytes]:
    # Column by column, then one C-level call per row for the header and one for the
    # join: the per-row Python work of a naive loop would cost more than the hashing.
    encoded: list[list[bytes]] = []
    lengths: list[list[int]] = []
    for i in positions:
        data, sizes = _encode(layout.types[i], columns[i])
        encoded.append(data)
        lengths.append(sizes)
    header = struct.Struct(f">{len(positions)}i").pack
    headers = list(map(header, *lengths))
    return list(map(b"".join, zip(headers, *encoded, strict=True)))


def _sum_digests(blobs: list[bytes]) -> int:
    digests = b"".join(map(_digest, map(sha256, blobs)))
    words = array("Q", memoryview(digests).cast("Q")[::4])  # first 8 bytes of each
    if struct.pack("=Q", 1) != struct.pack(">Q", 1):
        words.byteswap()  # read them big-endian, as PostgreSQL's bit(64) does
    return sum(words)


def _encode(kind: ColumnType, values: Sequence[Any]) -> tuple[list[bytes], list[int]]:
    """The bytes of each value (b"" for NULL) and their lengths (-1 for NULL)."""
    encode: Callable[[Any], bytes] = (
        _SINGLE if kind.kind == "float" and kind.single else _ENCODERS[kind.kind]
    )
    if None in values:
        data = [b"" if v is None else encode(v) for v in values]
        sizes = [-1 if v is None else len(d) for v, d in zip(values, data, strict=True)]
        return data, sizes
    data = list(map(encode, values))
    return data, list(map(len, data))


def _text(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def _bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def _decimal(value: Any) -> bytes:
    return str(value).encode()


def _date(value: int) -> bytes:
    return _INT32(value - _EPOCH_DAY)


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "text": _text,
    "bytes": bytes,
    "int": _decimal,
    "float": _DOUBLE,
    "bool": _bool,
    "datetime": _INT64,
    "date": _date,
    "json": _as_bytes,
    "numeric": _as_bytes,
}


def _sql_value(quoted: str, kind: ColumnType) -> str:
    if kind.kind == "text":
        inner = f"convert_to({quoted}::text, 'UTF8')"
    elif kind.kind == "bytes":
        inner = quoted
    elif kind.kind == "int":
        inner = f"convert_to({quoted}::text, 'UTF8')"
    elif kind.kind == "float":
        inner = f"float4send({quoted})" if kind.single else f"float8send({quoted})"
    elif kind.kind == "bool":
        inner = f"boolsend({quoted})"
    elif kind.kind == "datetime":
        inner = f"int8send(round(extract(epoch FROM {quoted}) * 1000000)::int8)"
    elif kind.kind == "date":
        inner = f"int4send(({quoted} - DATE '1970-01-01')::int4)"
    else:
        raise ValueError(f"no SQL checksum for {kind.kind}")
    return inner


def sql_checksum(table: str, names: Sequence[str], layout: Layout) -> str:
    """The PostgreSQL query computing (row count, easy-part checksum) of ``table``:
    the same number :func:`row_sum` (``part='easy'``) gives for the same rows.
    ``names`` are the quoted column names in copy order."""
    if not layout.easy:
        return f"SELECT count(*), 0 FROM {table}"
    values = [_sql_value(names[i], layout.types[i]) for i in layout.easy]
    header = [f"int4send(coalesce(octet_length({v}), -1))" for v in values]
    row = " || ".join(header + [f"coalesce({v}, ''::bytea)" for v in values])
    digest = f"('x' || encode(substr(sha256({row}), 1, 8), 'hex'))::bit(64)::bigint"
    return f"SELECT count(*), coalesce(sum({digest}), 0) FROM {table}"
