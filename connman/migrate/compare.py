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
from dataclasses import dataclass
from typing import Any

from connman.migrate.convert import RowConverter, combine
from connman.migrate.endpoints import read_batches
from connman.migrate.plan import TablePlan
from connman.migrate.postgres_side import PostgresSide
from connman.migrate.sqlite_side import SqliteFile, quote_ident

__all__ = ["Comparison", "Side", "side_checksum", "target_sql"]


@dataclass(frozen=True, slots=True)
class Side:
    """What one side holds of one table: rows, checksum, unconvertible rows."""

    rows: int
    checksum: int
    unconvertible: int = 0


@dataclass(frozen=True, slots=True)
class Comparison:
    """Source against target, for one table."""

    table: str
    source: Side
    target: Side | None
    """None: the table is missing on the target."""

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
    names = []
    chosen = plan.columns if positions is None else [plan.columns[i] for i in positions]
    for column in chosen:
        quoted = quote_ident(column.name)
        names.append(f"{quoted}::text" if column.target.cast_text else quoted)
    return f"SELECT {', '.join(names)} FROM {quote_ident(plan.name)}"


async def side_checksum(
    side: SqliteFile | PostgresSide,
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
    async for rows, piece, bad in read_batches(
        side,
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
