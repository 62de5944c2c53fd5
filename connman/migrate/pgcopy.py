"""PostgreSQL's binary COPY format, built in Python column by column.

asyncpg's ``copy_records_to_table`` encodes every value through its codec for the
column's type: for text that means one UTF-8 encode per value, after the checksum has
already produced those very bytes. A table whose columns all have a binary form here
(text, bytea, integers, floats, booleans, times, dates, json and jsonb) is sent as
rows this module builds instead: each value's bytes and int32 length are computed
once per column with C-level loops (``map``), shared with the checksum where they are
the same bytes (text and bytea), and joined once into the COPY data
(:class:`CopyRows`). Those bytes are also what the checksum hashes
(:mod:`connman.migrate.checksum`), row by row where they lie, and a batch can be
resent in part (keys already present, a refused row found by bisection). Any other
type (numeric, uuid, arrays...) keeps asyncpg's path (:func:`encoders_for` returns
None).

The format (PostgreSQL docs, "COPY: Binary Format"): an 11-byte signature, int32
flags and int32 header-extension length; per row an int16 field count, then per field
an int32 length (-1 for NULL) and the value's binary send form; int16 -1 at the end.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import accumulate
from typing import Any

from connman.migrate.kinds import ColumnType

__all__ = [
    "HEADER",
    "TRAILER",
    "CopyRows",
    "Encoded",
    "Encoder",
    "encode_column",
    "encoders_for",
    "utf8",
]

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
TRAILER = struct.pack(">h", -1)
CHUNK_BYTES = 256 << 10
"""Rows are sent in CopyData messages of about this size."""

INT32 = struct.Struct(">i").pack
NULL = INT32(-1)
_INT16 = struct.Struct(">h").pack
_INT64 = struct.Struct(">q").pack
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_NAIVE = datetime(2000, 1, 1)
_PG_EPOCH_DAY = date(2000, 1, 1).toordinal()
_MICRO = timedelta(microseconds=1)
_TEXT_TYPES = frozenset({"text", "character varying", "varchar", "character", "char", "bpchar"})

Encoded = tuple[list[bytes], list[bytes]]
"""A column's values as bytes (b"" for NULL) and their int32 lengths (-1 for NULL)."""

Encoder = Callable[[Any], bytes]


def utf8(value: str | bytes) -> bytes:
    """Text as UTF-8 bytes (bytes: as they are)."""
    # surrogatepass: a lone surrogate becomes bytes the server refuses (the row is
    # then found and reported) instead of an exception that stops the batch.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _jsonb(value: str | bytes) -> bytes:
    return b"\x01" + utf8(value)  # jsonb's binary form: a version byte, then the text


def _bool(value: bool) -> bytes:
    return b"\x01" if value else b"\x00"


def _timestamptz(value: datetime) -> bytes:
    return _INT64((value - _PG_EPOCH) // _MICRO)


def _timestamp(value: datetime) -> bytes:
    return _INT64((value - _PG_EPOCH_NAIVE) // _MICRO)


def _date(value: date) -> bytes:
    return INT32(value.toordinal() - _PG_EPOCH_DAY)


def _encoder(column: ColumnType) -> Encoder | None:
    base = column.ddl.lower().split("(", 1)[0].strip()
    kind = column.kind
    if column.cast_text:
        return None
    if kind == "text":
        return utf8 if base in _TEXT_TYPES else None
    if kind == "bytes":
        return bytes
    if kind == "int":
        return {16: _INT16, 32: INT32, 64: _INT64}[column.int_bits]
    if kind == "float":
        return struct.Struct(">f" if column.single else ">d").pack
    if kind == "bool":
        return _bool
    if kind == "datetime":
        return _timestamptz if column.timezone else _timestamp
    if kind == "date":
        return _date
    if kind == "json":
        return _jsonb if base == "jsonb" else utf8 if base == "json" else None
    return None  # numeric: asyncpg's codec


def encoders_for(types: Sequence[ColumnType]) -> tuple[Encoder, ...] | None:
    """The binary encoder of each PostgreSQL column, or None when one of the types
    has none here (the table then goes through asyncpg's codecs)."""
    encoders = tuple(_encoder(t) for t in types)
    if any(e is None for e in encoders):
        return None
    return tuple(e for e in encoders if e is not None)


def encode_column(encode: Encoder, values: Sequence[Any]) -> Encoded:
    """``values`` (driver values of one column) as bytes and int32 lengths."""
    if None in values:
        data = [b"" if v is None else encode(v) for v in values]
        sizes = [NULL if v is None else INT32(len(d)) for v, d in zip(values, data, strict=True)]
        return data, sizes
    if encode is utf8:
        kinds = set(map(type, values))
        if kinds == {bytes}:  # read from SQLite as UTF-8 bytes: as they are
            data = list(values)
        else:
            try:  # str.encode through map: no Python call per value
                data = list(map(str.encode, values))
            except (UnicodeEncodeError, TypeError):  # lone surrogates; str and bytes
                data = list(map(utf8, values))
    elif encode is bytes:
        data = list(values)
    else:
        data = list(map(encode, values))
    return data, list(map(INT32, map(len, data)))


class CopyRows:
    """A batch of rows in binary COPY form: the COPY data in chunks of about
    :data:`CHUNK_BYTES` (each value copied once, from its column, into its chunk),
    with each row's place in its chunk, so that rows can be hashed where they lie
    (:meth:`rows`) and any subset of them sent again."""

    __slots__ = ("_bounds", "_chunks", "_count")

    def __init__(self, chunks: list[bytes], bounds: list[list[int]]) -> None:
        self._chunks = chunks
        self._bounds = bounds
        """Per chunk, the offsets where its rows start, and its end."""
        self._count = sum(len(b) - 1 for b in bounds)

    @classmethod
    def from_columns(cls, columns: Sequence[Encoded]) -> CopyRows:
        """The rows of encoded ``columns`` (all of the same length)."""
        if not columns or not columns[0][0]:
            return cls([], [])
        count = len(columns[0][0])
        # Row sizes column by column (C-level maps), then chunk boundaries.
        sizes = [2 + 4 * len(columns)] * count
        for data, _ in columns:
            sizes = list(map(operator.add, sizes, map(len, data)))
        step = max(1, CHUNK_BYTES * count // max(1, sum(sizes)))
        header = _INT16(len(columns))
        width = 1 + 2 * len(columns)  # pieces per row: the count, then length, value...
        chunks: list[bytes] = []
        bounds: list[list[int]] = []
        for low in range(0, count, step):
            high = min(low + step, count)
            # The pieces in row order, laid out by extended-slice assignment (C
            # loops; zip + chain made a tuple per row: a fifth of the build time).
            pieces: list[bytes] = [header] * ((high - low) * width)
            for i, (data, lengths) in enumerate(columns):
                pieces[1 + 2 * i :: width] = lengths[low:high]
                pieces[2 + 2 * i :: width] = data[low:high]
            chunks.append(b"".join(pieces))
            bounds.append(list(accumulate(sizes[low:high], initial=0)))
        return cls(chunks, bounds)

    def __len__(self) -> int:
        return self._count

    def rows(self) -> Iterator[memoryview]:
        """Each row's bytes, where it lies in its chunk."""
        for chunk, bounds in zip(self._chunks, self._bounds, strict=True):
            view = memoryview(chunk)
            yield from map(view.__getitem__, map(slice, bounds[:-1], bounds[1:]))

    def subset(self, indices: Sequence[int]) -> CopyRows:
        """The rows at ``indices``, in that order (one chunk)."""
        rows = list(self.rows())
        picked = [rows[i] for i in indices]
        return CopyRows([b"".join(picked)], [list(accumulate(map(len, picked), initial=0))])

    def slice(self, low: int, high: int) -> CopyRows:
        """Rows ``low`` to ``high`` (excluded)."""
        return self.subset(range(low, high))

    async def stream(self) -> AsyncIterator[bytes]:
        """The COPY data: the header, the chunks, the trailer."""
        yield HEADER
        for chunk in self._chunks:
            yield chunk
        yield TRAILER
