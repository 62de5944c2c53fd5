"""Per-column conversions, and the row checksum both sides of a verify share.

Every value goes through its target column's converter, which returns two things:

- the *driver value*, what the target's driver is given (an aware ``datetime`` for a
  ``timestamptz``, the JSON text for a ``jsonb``, ``0``/``1`` for a SQLite boolean...);
- the *canonical value*, what the checksum hashes: the same for equal content on
  either dialect (a point in time as integer microseconds since the epoch, a JSON
  document re-serialized with sorted keys...).

A value that cannot be converted raises :class:`Reject` with the reason; the row is
reported and left out, never silently altered.

Speed: a batch is converted column by column. A column whose values already have the
target's Python type (most text, blob, integer and real columns) passes through
untouched after one C-level type scan; only the others cost a Python call per value,
and JSON / time conversions are memoized per column (the same ``'{}'`` or timestamp
text recurs a lot).
"""

from __future__ import annotations

import json
import math
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import repeat
from typing import Any

from connman.migrate.checksum import MASK, column_sum, layout_for, row_words, sum_digests
from connman.migrate.kinds import ColumnType
from connman.migrate.pgcopy import CopyRows, Encoded, Encoder, encode_column

__all__ = [
    "CHECKSUM_BITS",
    "ColumnConverter",
    "Prepared",
    "Reject",
    "RowConverter",
    "combine",
    "converter_for",
]

CHECKSUM_BITS = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_MICRO = timedelta(microseconds=1)
_MEMO_LIMIT = 4096
_NoneType = type(None)
_contains = operator.contains

Convert = Callable[[Any], tuple[Any, Any]]


class Reject(Exception):
    """A value that cannot be converted; ``str()`` is the reason."""


@dataclass(frozen=True, slots=True)
class ColumnConverter:
    """How one column's values reach the target."""

    name: str
    column_type: ColumnType
    convert: Convert
    """``value -> (driver value, canonical value)``; raises :class:`Reject`."""
    passthrough: frozenset[type[Any]]
    """Python types that go through as they are (driver = canonical = value)."""
    check: Callable[[Sequence[Any]], bool] | None = None
    """Extra condition for a pass-through column (no NUL in text for PostgreSQL...)."""
    nullable: bool = True


@dataclass(slots=True)
class Prepared:
    """A batch after conversion."""

    rows: list[tuple[Any, ...]]
    """Driver values of the accepted rows, in source order."""
    checksum: int
    """Sum of the accepted rows' digests (mod 2**64): see :mod:`connman.migrate.checksum`."""
    rejects: list[tuple[int, str]] = field(default_factory=list)
    """(index in the source batch, reason) of each rejected row."""
    encoded: CopyRows | None = None
    """The accepted rows in PostgreSQL's binary COPY format, when the converter was
    given encoders (:mod:`connman.migrate.pgcopy`)."""
    canon: Sequence[Sequence[Any]] = ()
    """The accepted rows' canonical values, column by column (what is hashed)."""


class RowConverter:
    """Converts batches of rows of one table (columns in plan order) and sums their
    canonical values (:mod:`connman.migrate.checksum`)."""

    __slots__ = ("columns", "copy", "key", "layout", "shareable")

    def __init__(
        self,
        columns: Sequence[ColumnConverter],
        key: Sequence[int] = (),
        *,
        copy: Sequence[Encoder] | None = None,
    ) -> None:
        """``copy``: the binary COPY encoder of each column (see
        :mod:`connman.migrate.pgcopy`); each batch is then also encoded for COPY."""
        self.columns = tuple(columns)
        self.key = tuple(key)
        self.layout = layout_for([c.column_type for c in self.columns], self.key)
        self.copy = tuple(copy) if copy is not None else None
        # Columns whose COPY bytes are the checksum's bytes for the same values: one
        # encoding serves both.
        self.shareable = tuple(
            i
            for i, c in enumerate(self.columns)
            if c.column_type.kind in ("text", "bytes", "float", "bool", "int")
        )

    def subset(self, positions: Sequence[int]) -> RowConverter:
        """The converter of only the columns at ``positions`` (the key's among them
        stay the key): for reading back a table's JSON columns with their key."""
        key = [positions.index(k) for k in self.key if k in positions]
        return RowConverter([self.columns[i] for i in positions], key)

    def prepare(self, rows: Sequence[tuple[Any, ...]]) -> Prepared:
        """Convert ``rows`` (raw values, one tuple per row, columns in plan order)."""
        return self._prepare(rows, part="all")

    def _prepare(self, rows: Sequence[tuple[Any, ...]], *, part: str) -> Prepared:
        n = len(rows)
        if n == 0:
            return Prepared([], 0)
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
        driver = list(cols)
        canon = list(cols)
        bad: dict[int, str] = {}
        changed = False
        for i, column in enumerate(self.columns):
            values = cols[i]
            if not column.nullable and None in values:
                for j, v in enumerate(values):
                    if v is None:
                        bad.setdefault(j, f"{column.name}: NULL in a NOT NULL column")
            if set(map(type, values)) <= column.passthrough and (
                column.check is None or column.check(values)
            ):
                continue
            d: list[Any] = [None] * n
            c: list[Any] = [None] * n
            convert = column.convert
            for j, v in enumerate(values):
                if v is None:
                    continue
                try:
                    d[j], c[j] = convert(v)
                except Reject as exc:
                    bad.setdefault(j, f"{column.name}: {exc}")
            driver[i] = d
            canon[i] = c
            changed = True
        if bad:
            keep = [j for j in range(n) if j not in bad]
            canon = [[values[j] for j in keep] for values in canon]
            source = zip(*driver, strict=True) if changed else rows
            out = [row for j, row in enumerate(source) if j not in bad]
            driver = list(zip(*out, strict=True)) if out else []
        else:  # nothing converted: the rows are their own driver values
            out = list(zip(*driver, strict=True)) if changed else list(rows)
        encoded: CopyRows | None = None
        shared: dict[int, Encoded] = {}
        if self.copy is not None and out:
            columns = [encode_column(e, v) for e, v in zip(self.copy, driver, strict=True)]
            encoded = CopyRows.from_columns(columns)
            shared = {i: columns[i] for i in self.shareable if driver[i] is canon[i]}
        if encoded is not None and not self.layout.hard and part == "all":
            # Every column has its canonical form in the COPY data: hash the rows
            # there (checksum.py), nothing is encoded twice.
            checksum = sum_digests(encoded.rows()) & MASK
        else:
            checksum = column_sum(self.layout, canon, part=part, shared=shared)
        return Prepared(out, checksum, sorted(bad.items()), encoded, canon)

    def identities(
        self, canon: Sequence[Sequence[Any]], indices: Sequence[int] | None = None
    ) -> list[tuple[Any, int, int]]:
        """(key, easy digest, hard digest) of each row of ``canon`` (a
        :attr:`Prepared.canon`), or of those at ``indices``: a row's identity on either
        side, compared by key. Text keys are ``str`` whether read as text or as UTF-8
        bytes."""
        columns = canon
        if indices is not None:
            columns = [[values[j] for j in indices] for values in columns]
        if not columns or not columns[0]:
            return []
        keys = [
            list(map(as_text, columns[i]))
            if self.columns[i].column_type.kind == "text"
            else columns[i]
            for i in self.key
        ]
        ids: list[Any] = list(keys[0]) if len(keys) == 1 else list(zip(*keys, strict=True))
        easy = row_words(self.layout, columns, part="easy")
        hard = row_words(self.layout, columns, part="hard")
        return list(zip(ids, easy, hard, strict=True))

    def canonical(
        self, rows: Sequence[tuple[Any, ...]], *, part: str = "all"
    ) -> tuple[int, int, list[tuple[int, str]]]:
        """(accepted rows, checksum of ``part``, rejects) of ``rows``: what verify
        needs (``part``: ``all``, ``easy``, ``hard``; see checksum.row_sum)."""
        prepared = self._prepare(rows, part=part)
        return len(prepared.rows), prepared.checksum, prepared.rejects


def as_text(value: Any) -> Any:
    """Text read as UTF-8 bytes (for a binary COPY) as the text it is; anything else,
    and bytes that are not UTF-8, as it is."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def combine(a: int, b: int) -> int:
    """Two partial checksums of disjoint row sets, as one."""
    return (a + b) & MASK


# -- converters ----------------------------------------------------------------------


def converter_for(
    name: str,
    column: ColumnType,
    *,
    target: str,
    nullable: bool = True,
    raw_text: bool = False,
) -> ColumnConverter:
    """The converter into ``column`` on the ``target`` dialect (``postgresql`` or
    ``sqlite``). ``raw_text``: text arrives as UTF-8 bytes (read from SQLite as
    blobs) and stays bytes, checked, for a binary COPY into PostgreSQL."""
    postgres = target == "postgresql"
    kind = column.kind
    check: Callable[[Sequence[Any]], bool] | None = None
    passthrough: frozenset[type[Any]]
    convert: Convert
    if kind == "text" and raw_text and postgres:
        convert = _raw_text(column.max_length)
        passthrough = frozenset({bytes, _NoneType})
        check = _utf8_text(column.max_length)
        return ColumnConverter(name, column, convert, passthrough, check, nullable)
    if kind == "text":
        convert = _text(nul_ok=not postgres, max_length=column.max_length if postgres else None)
        passthrough = frozenset({str, _NoneType})
        if postgres:
            check = _no_nul if column.max_length is None else _fits(column.max_length)
    elif kind == "bytes":
        convert, passthrough = _bytes, frozenset({bytes, _NoneType})
    elif kind == "int":
        convert = _int(column.int_bits)
        passthrough = frozenset({int, _NoneType})
        if column.int_bits < 64:
            check = _in_range(column.int_bits)
    elif kind == "float":
        convert = _float(column.single)
        passthrough = frozenset() if column.single else frozenset({float, _NoneType})
    elif kind == "bool":
        convert = _bool(as_int=not postgres)
        passthrough = frozenset({bool, _NoneType}) if postgres else frozenset()
    elif kind == "json":
        convert, passthrough = _memo(_json), frozenset()
    elif kind == "datetime":
        style = "postgres" if postgres else column.time_style
        convert, passthrough = _memo(_datetime(column.timezone, style)), frozenset()
    elif kind == "date":
        convert, passthrough = _date(as_text=not postgres), frozenset()
    else:
        convert, passthrough = _numeric(as_text=not postgres), frozenset()
    if raw_text and kind not in ("bytes", "json"):
        # Text read as bytes: decoded here, where a value must be parsed as text
        # (times, numbers written as text...). A blob in such a column is read as
        # the UTF-8 text it holds, as SQLite's own CAST would.
        convert = _decoded(convert)
    return ColumnConverter(name, column, convert, passthrough, check, nullable)


def _decoded(convert: Convert) -> Convert:
    def decoded(value: Any) -> tuple[Any, Any]:
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Reject(f"bytes that are not UTF-8 text ({exc.reason})") from None
        return convert(value)

    return decoded


def _utf8_text(limit: int | None) -> Callable[[Sequence[Any]], bool]:
    """Bytes that PostgreSQL takes as text: UTF-8, no NUL, at most ``limit``
    characters. ASCII (nearly all of it) is checked without decoding."""

    def check(values: Sequence[Any]) -> bool:
        present = list(filter(None, values))
        if any(map(_contains, present, repeat(0))):  # an int needle: memchr, 5x faster
            return False
        if all(map(bytes.isascii, present)):
            return limit is None or not present or max(map(len, present)) <= limit
        try:
            texts = [v.decode("utf-8") for v in present]
        except UnicodeDecodeError:
            return False
        return limit is None or not texts or max(map(len, texts)) <= limit

    return check


def _raw_text(limit: int | None) -> Convert:
    as_text = _text(nul_ok=False, max_length=limit)

    def convert(value: Any) -> tuple[Any, Any]:
        data = as_text(value)[0].encode("utf-8")
        return data, data

    return convert


def _no_nul(values: Sequence[Any]) -> bool:
    return not any(map(_contains, filter(None, values), repeat("\x00")))


def _fits(limit: int) -> Callable[[Sequence[Any]], bool]:
    def check(values: Sequence[Any]) -> bool:
        present = list(filter(None, values))
        return _no_nul(present) and (not present or max(map(len, present)) <= limit)

    return check


def _in_range(bits: int) -> Callable[[Sequence[Any]], bool]:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def check(values: Sequence[Any]) -> bool:
        present = [v for v in values if v is not None]
        return not present or (min(present) >= low and max(present) <= high)

    return check


def _memo(convert: Convert) -> Convert:
    """Remember recent conversions of hashable values (texts mostly)."""
    memo: dict[Any, tuple[Any, Any]] = {}

    def cached(value: Any) -> tuple[Any, Any]:
        hit = memo.get(value)
        if hit is not None:
            return hit
        result = convert(value)
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[value] = result
        return result

    return cached


def _text(*, nul_ok: bool, max_length: int | None = None) -> Convert:
    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, str):
            text = value
        elif isinstance(value, bytes | bytearray | memoryview):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise Reject(f"bytes that are not UTF-8 text ({exc.reason})") from None
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        elif isinstance(value, datetime | date):
            text = value.isoformat()
        else:
            text = str(value)
        if not nul_ok and "\x00" in text:
            raise Reject("text contains a NUL character (PostgreSQL text cannot hold it)")
        if max_length is not None and len(text) > max_length:
            raise Reject(f"{len(text)} characters do not fit varchar({max_length})")
        return text, text

    return convert


def _bytes(value: Any) -> tuple[Any, Any]:
    if isinstance(value, bytes):
        return value, value
    if isinstance(value, bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
    elif isinstance(value, bool):
        raise Reject("a boolean in a binary column")
    elif isinstance(value, int | float):
        data = repr(value).encode()  # as SQLite's CAST(x AS BLOB) would
    else:
        raise Reject(f"a {type(value).__name__} in a binary column")
    return data, data


def _int(bits: int) -> Convert:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float | Decimal):
            if not math.isfinite(value) or value != int(value):
                raise Reject(f"{value!r} is not a whole number")
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                raise Reject(f"text {_short(value)} is not an integer") from None
        else:
            raise Reject(f"a {type(value).__name__} in an integer column")
        if not low <= number <= high:
            raise Reject(f"{number} does not fit a {bits}-bit integer")
        return number, number

    return convert


_FLOAT32 = struct.Struct("f")


def _float(single: bool) -> Convert:
    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, float):
            number = value
        elif isinstance(value, bool):
            raise Reject("a boolean in a floating-point column")
        elif isinstance(value, int | Decimal):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                raise Reject(f"text {_short(value)} is not a number") from None
        else:
            raise Reject(f"a {type(value).__name__} in a floating-point column")
        if single:
            try:
                number = _FLOAT32.unpack(_FLOAT32.pack(number))[0]
            except OverflowError:
                raise Reject(f"{number!r} does not fit a single-precision real") from None
        return number, number

    return convert


_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})


def _bool(*, as_int: bool) -> Convert:
    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, bool):
            flag = value
        elif isinstance(value, int | float) and value in (0, 1):
            flag = bool(value)
        elif isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            flag = value.strip().lower() in _TRUE
        else:
            raise Reject(f"{_short(value)} is not a boolean (0/1, true/false)")
        return (int(flag) if as_int else flag), flag

    return convert


def _reject_constant(name: str) -> Any:
    raise Reject(f"JSON with {name}, which JSON does not allow")


def _canonical_float(text: str) -> Any:
    # jsonb keeps numbers as numeric and prints 1e2 as 100: a whole number is
    # canonically an int on both sides, whatever its spelling.
    number = float(text)
    if number.is_integer() and abs(number) < 1e16:
        return int(number)
    return number


def _canonical_int(text: str) -> Any:
    number = int(text)
    if abs(number) >= 10**16:
        as_float = float(number)
        if as_float == number:
            return as_float
    return number


_DECODER = json.JSONDecoder(
    parse_float=_canonical_float, parse_int=_canonical_int, parse_constant=_reject_constant
)


def _json(value: Any) -> tuple[Any, Any]:
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise Reject("JSON bytes that are not UTF-8") from None
    elif isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float | list | dict) or value is None:
        text = json.dumps(value)
    else:
        raise Reject(f"a {type(value).__name__} in a JSON column")
    if "\\u0000" in text:
        raise Reject("JSON with \\u0000, which PostgreSQL's jsonb cannot store")
    try:
        document = _DECODER.decode(text)
    except ValueError as exc:
        raise Reject(f"not valid JSON ({exc})") from None
    try:
        canonical = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (UnicodeEncodeError, ValueError) as exc:
        raise Reject(f"JSON that cannot be stored ({exc})") from None
    return text, canonical


def _parse_time(value: Any, aware: bool) -> datetime:
    """A point in time from ISO text, epoch seconds or a datetime; naive values are
    UTC (SQLite's datetime('now') and SQLAlchemy write UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, bool):
        raise Reject("a boolean in a time column")
    elif isinstance(value, int | float):
        try:
            moment = datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            raise Reject(f"{value!r} is not a valid epoch time") from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            try:
                moment = datetime.fromtimestamp(float(text), UTC)
            except (ValueError, OverflowError, OSError):
                raise Reject(f"text {_short(value)} is not an ISO 8601 time") from None
    else:
        raise Reject(f"a {type(value).__name__} in a time column")
    if moment.tzinfo is not None and moment.utcoffset() is not None:
        moment = moment.astimezone(UTC)
        return moment if aware else moment.replace(tzinfo=None)
    return moment.replace(tzinfo=UTC) if aware else moment


def _datetime(aware: bool, style: str) -> Convert:
    epoch = _EPOCH if aware else _EPOCH_NAIVE

    def convert(value: Any) -> tuple[Any, Any]:
        moment = _parse_time(value, aware)
        canonical = (moment - epoch) // _MICRO
        if style == "postgres":
            return moment, canonical
        if style == "sqlalchemy" or not aware:
            naive = moment.replace(tzinfo=None)
            return naive.isoformat(sep=" ", timespec="microseconds"), canonical
        return moment.isoformat(sep=" ", timespec="microseconds"), canonical

    return convert


def _date(*, as_text: bool) -> Convert:
    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, datetime):
            day = value.date()
        elif isinstance(value, date):
            day = value
        elif isinstance(value, str):
            try:
                day = date.fromisoformat(value.strip()[:10])
            except ValueError:
                raise Reject(f"text {_short(value)} is not a YYYY-MM-DD date") from None
        else:
            raise Reject(f"a {type(value).__name__} in a date column")
        return (day.isoformat() if as_text else day), day.toordinal()

    return convert


def _numeric(*, as_text: bool) -> Convert:
    def convert(value: Any) -> tuple[Any, Any]:
        if isinstance(value, bool):
            raise Reject("a boolean in a numeric column")
        try:
            number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
        except InvalidOperation:
            raise Reject(f"{_short(value)} is not a number") from None
        canonical = "NaN" if number.is_nan() else str(number.normalize())
        return (str(number) if as_text else number), canonical

    return convert


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
