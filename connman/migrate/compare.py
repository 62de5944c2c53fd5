"""Verify: per table, row counts and a content checksum computed the same way on
both sides, after conversion into the target's types.

Each side is streamed (no ORDER BY needed: the checksum is a sum of per-row digests,
see :func:`connman.migrate.convert.checksum`) and every row goes through the target
column's converter; the checksum is over the canonical values, so a JSON document
re-serialized by ``jsonb``, a timestamp read back as an aware ``datetime`` and the
original ISO text all hash alike when they mean the same. Source rows that cannot be
converted are counted apart ("unconvertible"): they are not expected on the target,
and the migration reported each with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from connman.dialect import quote_ident
from connman.migrate.checksum import MASK, sql_row_word
from connman.migrate.convert import RowConverter, combine
from connman.migrate.endpoints import Endpoints
from connman.migrate.plan import TablePlan
from connman.migrate.sides import Source

__all__ = [
    "Comparison",
    "Differences",
    "Side",
    "driver_key",
    "find_differences",
    "side_checksum",
    "target_identities",
    "target_sql",
]

SHOWN = 10
"""Keys of each kind of difference named per table (all are counted)."""


@dataclass(frozen=True, slots=True)
class Side:
    """What one side holds of one table: rows, checksum, unconvertible rows."""

    rows: int
    checksum: int
    unconvertible: int = 0


@dataclass(slots=True)
class Differences:
    """The rows of one table that differ, found by primary key: the first
    :data:`SHOWN` keys of each kind, and how many there are."""

    differing: list[Any] = field(default_factory=list)
    """Keys on both sides whose rows differ."""
    n_differing: int = 0
    missing: list[Any] = field(default_factory=list)
    """Keys of source rows the target lacks."""
    n_missing: int = 0
    extra: list[Any] = field(default_factory=list)
    """Keys of target rows the source lacks."""
    n_extra: int = 0

    def add(self, kind: str, key: Any) -> None:
        """Count one difference of ``kind`` (``differing``, ``missing``, ``extra``)."""
        count = f"n_{kind}"
        setattr(self, count, getattr(self, count) + 1)
        shown: list[Any] = getattr(self, kind)
        if len(shown) < SHOWN:
            shown.append(key)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Source against target, for one table."""

    table: str
    source: Side
    target: Side | None
    """None: the table is missing on the target."""
    differences: Differences | None = None
    """Which rows differ, when the table differs and has a primary key."""

    @property
    def ok(self) -> bool:
        """Same row count and checksum."""
        return (
            self.target is not None
            and self.source.rows == self.target.rows
            and self.source.checksum == self.target.checksum
        )

    @property
    def status(self) -> str:
        """``ok``, ``missing``, ``rows differ`` or ``content differs``."""
        if self.target is None:
            return "missing on target"
        if self.source.rows != self.target.rows:
            return "rows differ"
        return "ok" if self.ok else "content differs"


def target_sql(plan: TablePlan, positions: Sequence[int] | None = None) -> str:
    """The query that reads ``plan``'s columns (or those at ``positions``) back from
    the target table."""
    return f"SELECT {', '.join(_read_back(plan, positions))} FROM {quote_ident(plan.name)}"


def _read_back(
    plan: TablePlan, positions: Sequence[int] | None = None, alias: str = ""
) -> list[str]:
    names = []
    chosen = plan.columns if positions is None else [plan.columns[i] for i in positions]
    for column in chosen:
        quoted = alias + quote_ident(column.name)
        names.append(f"{quoted}::text" if column.target.cast_text else quoted)
    return names


async def target_identities(
    ends: Endpoints, plan: TablePlan, keys: list[Any]
) -> dict[Any, tuple[int, int]]:
    """Key -> (easy digest, hard digest) of the target's rows under ``keys`` (driver
    values, as the source's rows carry them): what
    :meth:`RowConverter.identities <connman.migrate.convert.RowConverter.identities>`
    gives for the source's rows, so that a row stored under the same key is known to
    be the same row or another. On PostgreSQL the server computes the easy part
    (:func:`connman.migrate.checksum.sql_row_word`); only the key and the JSON and
    numeric columns are read back."""
    converter = plan.converter(ends.target_dialect)
    if not keys:
        return {}
    target = ends.target
    if target.sums_on_server:
        layout = converter.layout
        positions = list(layout.key + layout.hard)
        word = sql_row_word(_read_back(plan, alias="t."), layout)
        select = [*_read_back(plan, positions, alias="t."), word]
        rows = await target.rows_by_key(plan.name, plan.primary_key, plan.key_types, keys, select)
        subset = converter.subset(positions)
        prepared = subset.prepare([r[:-1] for r in rows])
        refused = {i for i, _ in prepared.rejects}
        words = [r[-1] & MASK for i, r in enumerate(rows) if i not in refused]
        return {
            key: (easy, hard)
            for (key, _, hard), easy in zip(subset.identities(prepared.canon), words, strict=True)
        }
    rows = await target.rows_by_key(
        plan.name, plan.primary_key, plan.key_types, keys, _read_back(plan)
    )
    prepared = converter.prepare(rows)
    return {key: (easy, hard) for key, easy, hard in converter.identities(prepared.canon)}


async def find_differences(
    ends: Endpoints, plan: TablePlan, target_rows: int, *, batch_rows: int, batch_bytes: int
) -> Differences:
    """Which rows of a keyed table differ: the source is read as the copy reads it
    and each batch's rows looked up on the target by key (differing, missing); then,
    when the target holds more rows than it matched, its keys are read until
    :data:`SHOWN` of them are found missing from the source (extra)."""
    found = Differences()
    raw = plan.binary_copy(ends.source_url.dialect, ends.target_dialect)
    converter = plan.converter(ends.target_dialect, raw_text=raw)
    key_index = plan.key_index
    flagged = plan.self_fk is not None

    def prepare(batch: list[tuple[Any, ...]]) -> tuple[list[Any], list[tuple[Any, int, int]]]:
        if flagged:
            batch = [r[:-1] for r in batch if not (r[-1] and plan.reject_orphans)]
        prepared = converter.prepare(batch)
        keys = [driver_key(r, key_index) for r in prepared.rows]
        return keys, converter.identities(prepared.canon)

    matched = 0
    async for keys, ids in ends.source.batches(
        plan.source_sql(ends.source_url.dialect),
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        prepare=prepare,
        raw_text=raw,
    ):
        there = await target_identities(ends, plan, keys)
        for key, easy, hard in ids:
            other = there.get(key)
            if other is None:
                found.add("missing", key)
            else:
                matched += 1
                if other != (easy, hard):
                    found.add("differing", key)
    found.n_extra = max(0, target_rows - matched)
    if found.n_extra:
        await _extra_keys(ends, plan, found, batch_rows=batch_rows, batch_bytes=batch_bytes)
    return found


async def _extra_keys(
    ends: Endpoints, plan: TablePlan, found: Differences, *, batch_rows: int, batch_bytes: int
) -> None:
    """The first keys of target rows the source lacks."""
    names = ", ".join(quote_ident(k) for k in plan.primary_key)
    sql = f"SELECT {names} FROM {quote_ident(plan.name)}"
    single = len(plan.primary_key) == 1
    async for batch in ends.target.reader().batches(
        sql, batch_rows=batch_rows, batch_bytes=batch_bytes, prepare=list
    ):
        keys = [r[0] if single else tuple(r) for r in batch]
        there = await ends.source.present_keys(plan.name, plan.primary_key, plan.key_types, keys)
        for key in keys:
            if key not in there:
                found.extra.append(key)
                if len(found.extra) >= SHOWN:
                    return


def driver_key(row: tuple[Any, ...], key_index: Sequence[int]) -> Any:
    """The key of a row of driver values (a tuple for a key of several columns)."""
    if len(key_index) == 1:
        return row[key_index[0]]
    return tuple(row[i] for i in key_index)


async def side_checksum(
    side: Source,
    sql: str,
    converter: RowConverter,
    *,
    batch_rows: int,
    batch_bytes: int,
    strip_flag: bool = False,
    orphans_unconvertible: bool = False,
    part: str = "all",
    raw_text: bool = False,
) -> Side:
    """Stream ``sql`` on ``side`` and sum the canonical rows. ``strip_flag``: the
    query ends with the "orphan" column of a parents-first read (dropped; with
    ``orphans_unconvertible`` those rows count as unconvertible, as the migration
    rejects them). ``raw_text``: SQLite text is read as UTF-8 bytes (see
    :meth:`connman.migrate.sqlite_side.SqliteFile.stream`)."""

    def measure(batch: list[tuple[Any, ...]]) -> tuple[int, int, int]:
        orphans = 0
        if strip_flag:
            if orphans_unconvertible:
                kept = [r[:-1] for r in batch if not r[-1]]
                orphans = len(batch) - len(kept)
                batch = kept
            else:
                batch = [r[:-1] for r in batch]
        rows, checksum, rejects = converter.canonical(batch, part=part)
        return rows, checksum, len(rejects) + orphans

    total = unconvertible = 0
    checksum = 0
    async for rows, piece, bad in side.batches(
        sql,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        prepare=measure,
        raw_text=raw_text,
    ):
        total += rows
        unconvertible += bad
        checksum = combine(checksum, piece)
    return Side(total, checksum, unconvertible)
