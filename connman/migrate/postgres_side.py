"""PostgreSQL on either side, through ``migrate`` leases of the ConnectionManager.

**Writing** a batch is one transaction: ``COPY`` (asyncpg's binary
``copy_records_to_table``, or connman's own binary COPY data) straight into the
table. A row whose primary key exists already makes that fail with a unique
violation, and nothing of the batch stays: :meth:`PostgresSide.write` says so, and
the caller (:mod:`connman.migrate.copy`) looks the batch's keys up
(:meth:`PostgresSide.rows_by_key`, ``JOIN unnest($1::type[])``) and copies the rest.
A batch the server refuses for a row's content (a foreign key, a constraint, an
encoding) is split in halves under savepoints until each refused row is alone; those
are rejected with the server's message, the rest copied.

**Reading** runs one server-side cursor inside a ``REPEATABLE READ READ ONLY``
transaction: a consistent snapshot, streamed in chunks, never a whole table in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import anyio
import asyncpg

from connman.dialect import POSTGRES, quote_ident
from connman.manager import ConnectionManager
from connman.migrate.errors import SchemaIncompatible, TargetFull, TargetUnavailable
from connman.migrate.kinds import ValueStats, from_postgres
from connman.migrate.model import Catalog, Column, ForeignKey, Table
from connman.migrate.pgcopy import CopyRows
from connman.migrate.sides import Written
from connman.migrate.sqlite_side import approx_size
from connman.urls import redact_text

__all__ = ["PostgresSide"]

_CONSUMER = "migrate"
T = TypeVar("T")

_ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    TypeError,
    ValueError,
    OverflowError,
)
"""Errors one row's content can cause: found by bisection, the row rejected."""

_CATALOG_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       a.atthasdef, a.attgenerated <> '' AS generated, a.attnum
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
ORDER BY c.relname, a.attnum
"""
_CATALOG_KEYS = """
SELECT c.relname, con.contype::text, con.conkey, fc.relname, con.confkey
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class fc ON fc.oid = con.confrelid
WHERE n.nspname = current_schema() AND con.contype IN ('p', 'f')
ORDER BY c.relname, con.conname
"""
_CATALOG_COMMENTS = """
SELECT c.relname, obj_description(c.oid, 'pg_class')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
"""
_CATALOG_INDEXES = """
SELECT tablename, indexname FROM pg_indexes WHERE schemaname = current_schema()
"""


class PostgresSide:
    """A PostgreSQL database as a migration's source or target (implements both
    :class:`~connman.migrate.sides.Source` and :class:`~connman.migrate.sides.Target`)."""

    dialect = "postgresql"
    sums_on_server = True
    verifies_while_building = True
    skips_existing = False
    writes_in_flight = 2

    def __init__(self, manager: ConnectionManager, url: str) -> None:
        self._manager = manager
        self._url = url

    # -- catalogue -------------------------------------------------------------------

    async def catalog(self) -> Catalog:
        """Every table of the current schema."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            conn = lease.connection
            columns = await conn.fetch(_CATALOG_COLUMNS)
            keys = await conn.fetch(_CATALOG_KEYS)
            indexes = await conn.fetch(_CATALOG_INDEXES)
            comments = dict(await conn.fetch(_CATALOG_COMMENTS))
        by_table: dict[str, list[Any]] = {}
        attnames: dict[tuple[str, int], str] = {}
        for row in columns:
            by_table.setdefault(row[0], []).append(row)
            attnames[(row[0], row[6])] = row[1]
        catalog = Catalog()
        for name, rows in by_table.items():
            primary: tuple[str, ...] = ()
            fks: list[ForeignKey] = []
            for table, kind, conkey, ftable, confkey in keys:
                if table != name:
                    continue
                if kind == "p":
                    primary = tuple(attnames[(name, k)] for k in conkey)
                elif len(conkey) == 1 and ftable is not None:
                    fks.append(
                        ForeignKey(
                            attnames[(name, conkey[0])], ftable, attnames[(ftable, confkey[0])]
                        )
                    )
            catalog.tables[name] = Table(
                name=name,
                columns=tuple(
                    Column(
                        name=r[1],
                        declared=r[2],
                        nullable=not r[3],
                        has_default=r[4],
                        type=from_postgres(r[2]),
                        generated=r[5],
                    )
                    for r in rows
                ),
                primary_key=primary,
                foreign_keys=tuple(fks),
                indexes=tuple(i[1] for i in indexes if i[0] == name),
                comment=comments.get(name),
            )
        return catalog

    async def count(self, table: str) -> int:
        """Rows in ``table``."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            return int(
                await lease.connection.fetchval(f"SELECT count(*) FROM {quote_ident(table)}")
            )

    # -- reading ---------------------------------------------------------------------

    async def stream(
        self, sql: str, *, batch_rows: int, batch_bytes: int
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Rows of ``sql`` in batches (rows and bytes bounded), from one snapshot."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            conn = lease.connection
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = await conn.cursor(sql)
                chunk = 64
                while True:
                    batch: list[tuple[Any, ...]] = []
                    size = 0
                    while len(batch) < batch_rows and size < batch_bytes:
                        records = await cursor.fetch(min(chunk, batch_rows - len(batch)))
                        if not records:
                            break
                        rows = list(map(tuple, records))
                        batch.extend(rows)
                        got = approx_size(rows)
                        size += got
                        room = max(1, (batch_bytes - size) // max(1, got // len(rows)))
                        chunk = max(1, min(chunk * 2, 2048, room))
                    if not batch:
                        return
                    yield batch

    async def batches(
        self,
        sql: str,
        *,
        batch_rows: int,
        batch_bytes: int,
        prepare: Callable[[list[tuple[Any, ...]]], T],
        raw_text: bool = False,
    ) -> AsyncIterator[T]:
        """``prepare(batch)`` for each batch of :meth:`stream` (``raw_text`` does not
        apply: asyncpg decodes text)."""
        async for batch in self.stream(sql, batch_rows=batch_rows, batch_bytes=batch_bytes):
            yield prepare(batch)

    async def fetch_all(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row of a small query, from one snapshot."""
        rows: list[tuple[Any, ...]] = []
        async for batch in self.stream(sql, batch_rows=10_000, batch_bytes=1 << 20):
            rows.extend(batch)
        return rows

    async def value_stats(self, table: str, columns: Sequence[str]) -> dict[str, ValueStats] | None:
        """None: PostgreSQL columns declare their types (nothing to infer)."""
        return None

    async def parents_precede(self, table: str, key: str, parent: str) -> bool:
        """False: a PostgreSQL table has no rowid order (the parents-first query
        sorts)."""
        return False

    def reader(self) -> PostgresSide:
        """Itself: a target is read back through the same leases."""
        return self

    async def aggregate(self, sql: str) -> tuple[int, int]:
        """(row count, checksum) from a :func:`connman.migrate.checksum.sql_checksum`
        query: computed by the server, no row leaves it."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            row = await lease.connection.fetchrow(sql)
        return int(row[0]), int(row[1]) & ((1 << 64) - 1)

    async def read_only_check(self) -> None:
        """Connect and look, writing nothing (dry runs)."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            await lease.connection.fetchval("SELECT 1")

    async def present_keys(
        self, table: str, key_columns: Sequence[str], key_types: Sequence[str], keys: list[Any]
    ) -> set[Any]:
        """Which of ``keys`` exist in ``table`` (values for one column, tuples for
        several), without writing anything. Text read as UTF-8 bytes is looked up
        (and returned) as text."""
        select = [f"t.{quote_ident(c)}" for c in key_columns]
        rows = await self.rows_by_key(table, key_columns, key_types, keys, select)
        return {r[0] for r in rows} if len(key_columns) == 1 else set(rows)

    # -- writing ---------------------------------------------------------------------

    async def create(self, statements: Sequence[str]) -> None:
        """Run DDL in one transaction, serialized with connman's other DDL."""
        if not statements:
            return
        async with self._writing() as conn, conn.transaction():
            await conn.execute(POSTGRES.ddl_lock)
            for statement in statements:
                await conn.execute(statement)

    async def write(
        self,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        encoded: CopyRows | None = None,
        keyed: bool = True,
    ) -> Written | None:
        """Copy ``rows``: (written, already present, [(index, reason) refused]), or
        None when a row's key exists on the target (nothing written: the caller looks
        the keys up and copies the rest). ``encoded``: the same rows in binary COPY
        form (:mod:`connman.migrate.pgcopy`), sent as they are. ``keyed`` changes
        nothing here: a unique violation says a key exists, whichever key it is."""
        async with self._writing() as conn:
            try:
                # One COPY is one transaction by itself (autocommit): no
                # BEGIN/COMMIT round trips.
                await _copy(conn, table, columns, rows, encoded)
                return len(rows), 0, []
            except asyncpg.UniqueViolationError:
                return None
            except _ROW_ERRORS:
                return await _bisect(conn, table, columns, rows, encoded)

    async def rows_by_key(
        self,
        table: str,
        key_columns: Sequence[str],
        key_types: Sequence[str],
        keys: list[Any],
        select: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """The ``select`` expressions (over the table as ``t``) of the rows of
        ``table`` whose key is among ``keys`` (values for one key column, tuples for
        several; text read as UTF-8 bytes is looked up as text). Reads only."""
        keys = [_text_key(k, key_types) for k in keys]
        names = ", ".join(quote_ident(c) for c in key_columns)
        arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(key_types))
        sql = (
            f"SELECT {', '.join(select)} FROM {quote_ident(table)} AS t "
            f"JOIN unnest({arrays}) AS k({names}) USING ({names})"
        )
        if len(key_columns) == 1:
            args: list[Any] = [keys]
        else:
            args = [list(c) for c in zip(*keys, strict=True)] if keys else [[] for _ in key_columns]
        async with self._writing() as conn:
            return [tuple(r) for r in await conn.fetch(sql, *args)]

    async def finish(
        self,
        table: str,
        statements: Sequence[str],
        serial: str | None,
        *,
        constraints: Sequence[str] = (),
        key_build: str | None = None,
    ) -> None:
        """After the copy: the indexes (``key_build`` and ``statements``), the keys of
        a bulk load (``constraints``, one transaction), and the sequence of ``serial``
        moved past the largest id (never backwards).

        The indexes are built side by side, each on a connection of its own: their
        scans of the table are synchronized by PostgreSQL (one read of the heap
        serves them all) and the sorts use both cores. A verify may read the table
        meanwhile; only the keys, which find their index built, lock it briefly."""
        builds = [s for s in (key_build, *statements) if s]
        try:
            async with anyio.create_task_group() as group:
                for statement in builds:
                    group.start_soon(self._execute, statement)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        if constraints:
            await self.create(constraints)
        if serial is None:
            return
        async with self._writing() as conn:
            sequence = await conn.fetchval(
                "SELECT pg_get_serial_sequence($1, $2)", quote_ident(table), serial
            )
            if sequence is not None:
                await conn.execute(
                    f"SELECT setval($1, greatest(max({quote_ident(serial)}), "
                    f"(SELECT last_value FROM {sequence}))) FROM {quote_ident(table)} "
                    f"HAVING max({quote_ident(serial)}) IS NOT NULL",
                    sequence,
                )

    async def _execute(self, statement: str) -> None:
        async with self._writing() as conn:
            await conn.execute(statement)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[Any]:
        """A leased connection whose server errors come out as the migration's own
        (:func:`_classify`: target full, incompatible schema, unavailable)."""
        async with self._manager.lease(_CONSUMER, url=self._url) as lease:
            try:
                yield lease.connection
            except asyncpg.PostgresError as exc:
                raise _classify(exc) from None


def _text_key(key: Any, key_types: Sequence[str]) -> Any:
    """A key as the server returns it: text read as UTF-8 bytes (binary COPY) is
    decoded again (the probe compares it with what the server sends back)."""
    if len(key_types) == 1:
        return _as_str(key, key_types[0])
    return tuple(_as_str(k, t) for k, t in zip(key, key_types, strict=True))


def _as_str(value: Any, type_name: str) -> Any:
    if isinstance(value, bytes) and type_name != "bytea":
        return value.decode("utf-8")
    return value


async def _copy(
    conn: Any,
    table: str,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    encoded: CopyRows | None,
) -> None:
    if encoded is None:
        await conn.copy_records_to_table(table, records=rows, columns=columns)
    else:
        await conn.copy_to_table(table, source=encoded.stream(), columns=columns, format="binary")


async def _bisect(
    conn: Any,
    table: str,
    columns: Sequence[str],
    rows: list[tuple[Any, ...]],
    encoded: CopyRows | None = None,
) -> tuple[int, int, list[tuple[int, str]]]:
    """Copy ``rows`` in halves under savepoints until each refused row is alone.
    Order is kept (parents before children)."""
    written = present = 0
    refused: list[tuple[int, str]] = []
    async with conn.transaction():
        stack = [(0, len(rows))]
        while stack:
            low, high = stack.pop()
            try:
                async with conn.transaction():
                    part = None if encoded is None else encoded.slice(low, high)
                    await _copy(conn, table, columns, rows[low:high], part)
                written += high - low
            except asyncpg.UniqueViolationError:
                if high - low == 1:
                    present += 1
                else:
                    mid = (low + high) // 2
                    stack += [(mid, high), (low, mid)]
            except _ROW_ERRORS as exc:
                if high - low == 1:
                    refused.append((low, f"refused by the target: {_reason(exc)}"))
                else:
                    mid = (low + high) // 2
                    stack += [(mid, high), (low, mid)]
    return written, present, refused


def _reason(exc: BaseException) -> str:
    text = redact_text(str(exc)).strip().replace("\n", " ")
    detail = getattr(exc, "detail", None)
    if detail:
        text += f" ({redact_text(str(detail))})"
    return f"{type(exc).__name__}: {text}" if isinstance(exc, TypeError | ValueError) else text


def _classify(exc: asyncpg.PostgresError) -> Exception:
    text = redact_text(str(exc))
    state = getattr(exc, "sqlstate", "") or ""
    if state == "53100" or "no space left" in text.lower():
        return TargetFull(
            f"the target is out of disk space ({text}): free space and run the same "
            "command again; it goes on where it stopped"
        )
    if state.startswith("42"):
        return SchemaIncompatible(f"the target refused the schema: {text}")
    return TargetUnavailable(f"the target failed: {text}")
