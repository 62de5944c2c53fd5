"""SQLite on either side: a file read strictly read-only, or a target written
through connman leases.

**Reading** (:class:`SqliteFile`) uses the standard library's ``sqlite3`` in a worker
thread rather than aiosqlite: one thread hop per chunk instead of one per call, and
the ``sqlite3`` step loop releases the GIL while SQLite works. The file is opened as
a URI with ``immutable=1`` when no ``-wal`` file sits beside it: SQLite then takes no
lock and never creates a ``-wal`` or ``-shm`` file, so the source stays byte-identical
(``mode=ro`` alone may create ``-shm`` for a WAL database). When a ``-wal`` file
exists its content is part of the database, so the file is opened ``mode=ro``
instead, which reads it (and writes nothing to the database file).

:class:`SqliteSource` is the same file as a migration's
:class:`~connman.migrate.sides.Source`: every call hops to a worker thread there, so
no caller does.

**Writing** (:class:`SqliteWriter`) goes through a ``migrate`` lease of the
ConnectionManager (WAL, ``foreign_keys=ON``, ``BEGIN IMMEDIATE``): one transaction per
batch, ``INSERT ... ON CONFLICT DO NOTHING``, and ``total_changes`` says how many rows
were new, so rows already present are counted, not guessed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import anyio

from connman.dialect import SQLITE, quote_ident
from connman.manager import ConnectionManager
from connman.migrate.errors import SchemaIncompatible, SourceError, TargetFull, TargetUnavailable
from connman.migrate.kinds import ValueStats, from_sqlite, stats_sql
from connman.migrate.model import Catalog, Column, ForeignKey, Table
from connman.migrate.pgcopy import CopyRows
from connman.migrate.sides import Written

__all__ = [
    "SqliteFile",
    "SqliteSource",
    "SqliteWriter",
    "approx_size",
    "present_in_file",
    "quote_ident",
    "rows_in_file",
]

_HEADER = b"SQLite format 3\x00"
_CONSUMER = "migrate"
T = TypeVar("T")


def approx_size(rows: Sequence[tuple[Any, ...]]) -> int:
    """Bytes of text and blob values in ``rows`` (+8 per other value), column by
    column with C-level loops: what bounds a batch's memory."""
    if not rows:
        return 0
    total = 0
    for values in zip(*rows, strict=True):
        kinds = set(map(type, values))
        if kinds <= {str, bytes, type(None)}:
            total += sum(map(len, filter(None, values))) + 8 * len(values)
        elif kinds & {str, bytes}:
            total += sum(len(v) if isinstance(v, str | bytes) else 8 for v in values)
        else:
            total += 8 * len(values)
    return total


class SqliteFile:
    """A SQLite database file, read-only."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._check()

    def _check(self) -> None:
        if not os.path.exists(self.path):
            raise SourceError(f"no such SQLite file: {self.path}")
        if os.path.isdir(self.path):
            raise SourceError(f"{self.path} is a directory, not a SQLite file")
        try:
            with open(self.path, "rb") as handle:
                header = handle.read(len(_HEADER))
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
        if header and header != _HEADER:
            raise SourceError(f"{self.path} is not a SQLite database (bad header)")

    @property
    def live(self) -> bool:
        """True when a ``-wal`` file exists: a writer may be (or was) using it."""
        wal = self.path + "-wal"
        return os.path.exists(wal) and os.path.getsize(wal) > 0

    def connect(self, *, lenient_text: bool = False) -> sqlite3.Connection:
        """A read-only connection (see the module docstring); usable from any one
        thread at a time."""
        mode = "mode=ro" if self.live else "mode=ro&immutable=1"
        uri = f"file:{quote(self.path)}?{mode}"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"cannot read {self.path} as SQLite: {exc}") from None
        if lenient_text:
            conn.text_factory = _lenient_text
        return conn

    # -- catalogue -------------------------------------------------------------------

    def catalog(self) -> Catalog:
        """Every table, with columns, primary key, foreign keys, indexes."""
        conn = self.connect()
        try:
            return _catalog(conn)
        finally:
            conn.close()

    def count(self, table: str) -> int:
        """Rows in ``table``."""
        conn = self.connect()
        try:
            return int(conn.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchone()[0])
        finally:
            conn.close()

    def value_stats(self, table: str, columns: Sequence[str]) -> dict[str, ValueStats]:
        """One scan of ``table`` describing each column's values (type inference)."""
        if not columns:
            return {}
        parts = [stats_sql(quote_ident(c)) for c in columns]
        sql = f"SELECT count(*), {', '.join(parts)} FROM {quote_ident(table)}"
        conn = self.connect()
        try:
            try:
                row = conn.execute(sql).fetchone()
            except sqlite3.OperationalError:  # no JSON1: ask without json_valid
                row = conn.execute(sql.replace("AND json_valid(", "AND 0 AND (")).fetchone()
        finally:
            conn.close()
        total = int(row[0])
        stats: dict[str, ValueStats] = {}
        width = 9
        for i, name in enumerate(columns):
            values = [int(v or 0) for v in row[1 + i * width : 1 + (i + 1) * width]]
            stats[name] = ValueStats(total, *values)
        return stats

    def parents_precede(self, table: str, key: str, parent: str) -> bool:
        """Whether every row of ``table`` comes after its parent in rowid order (a row
        whose ``parent`` names its own ``key``, or a later row's, says no).

        An append-only causal chain is written parents first, so its rowid order is
        already a parents-first order: the copy reads it as a sequential scan instead
        of sorting the table by chain depth (seconds before the first row). Such an
        order also rules out cycles. One index probe per row, stopped at the first
        row out of order."""
        t, k, p = quote_ident(table), quote_ident(key), quote_ident(parent)
        sql = (
            f"SELECT NOT EXISTS (SELECT 1 FROM {t} AS c JOIN {t} AS p ON p.{k} = c.{p} "
            "WHERE p.rowid >= c.rowid)"
        )
        conn = self.connect()
        try:
            return bool(conn.execute(sql).fetchone()[0])
        finally:
            conn.close()

    # -- streaming -------------------------------------------------------------------

    def stream(
        self, sql: str, *, batch_rows: int, batch_bytes: int, raw_text: bool = False
    ) -> Generator[list[tuple[Any, ...]], None, None]:
        """Run ``sql`` and yield its rows in batches of at most ``batch_rows`` rows
        and about ``batch_bytes`` bytes (a single row larger than that is a batch of
        its own). One statement, stepped as rows are taken: memory holds one batch.

        Text that is not valid UTF-8 would stop ``sqlite3`` mid-table; from the row
        that has it on, the table is read with a text factory that hands such values
        over as bytes (the converter then rejects or keeps them, per target type).

        ``raw_text``: every text value comes as its bytes, undecoded (for a binary
        COPY, which sends UTF-8 as it is; the converter checks it).
        """
        conn = self.connect()
        if raw_text:
            conn.text_factory = bytes
        delivered = 0
        try:
            cursor = conn.execute(sql)
            chunk = 16
            while True:
                batch: list[tuple[Any, ...]] = []
                size = 0
                while len(batch) < batch_rows and size < batch_bytes:
                    want = min(chunk, batch_rows - len(batch))
                    try:
                        rows = cursor.fetchmany(want)
                    except sqlite3.OperationalError as exc:
                        if "decode" not in str(exc).lower():
                            raise SourceError(f"reading {self.path}: {exc}") from None
                        conn.close()
                        conn = self.connect(lenient_text=True)
                        skip = delivered + len(batch)
                        cursor = conn.execute(f"SELECT * FROM ({sql}) LIMIT -1 OFFSET {skip}")
                        continue
                    if not rows:
                        break
                    batch.extend(rows)
                    # Sized from every 8th row of a long read (sizing them all cost
                    # a tenth of the copy): a batch ends near ``batch_bytes``, and
                    # a read of big rows is caught by the rows it samples.
                    sample = rows if len(rows) <= 64 else rows[::8]
                    got = approx_size(sample) * len(rows) // len(sample)
                    size += got
                    per_row = max(1, got // len(rows))
                    # Grow the next read while rows are small, shrink it at once when
                    # they are large (a 10 MB blob must not come 256 at a time).
                    room = max(1, (batch_bytes - size) // per_row)
                    chunk = max(1, min(chunk * 2, 1024, room))
                if not batch:
                    return
                delivered += len(batch)
                yield batch
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"reading {self.path}: {exc}") from None
        finally:
            conn.close()

    def fetch_all(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row of a small query (reports, unreached rows)."""
        conn = self.connect()
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


class SqliteSource:
    """A :class:`SqliteFile` as a migration's :class:`~connman.migrate.sides.Source`:
    the same reads, each in a worker thread (one hop per call, one per batch)."""

    dialect = "sqlite"

    def __init__(self, file: SqliteFile) -> None:
        self.file = file

    @classmethod
    async def open(cls, path: str) -> SqliteSource:
        """The file at ``path``, checked (in a worker thread: it reads the header)."""
        return cls(await anyio.to_thread.run_sync(SqliteFile, path))

    @property
    def path(self) -> str:
        """The file's path."""
        return self.file.path

    async def catalog(self) -> Catalog:
        """See :meth:`SqliteFile.catalog`."""
        return await anyio.to_thread.run_sync(self.file.catalog)

    async def count(self, table: str) -> int:
        """See :meth:`SqliteFile.count`."""
        return await anyio.to_thread.run_sync(self.file.count, table)

    async def fetch_all(self, sql: str) -> list[tuple[Any, ...]]:
        """See :meth:`SqliteFile.fetch_all`."""
        return await anyio.to_thread.run_sync(self.file.fetch_all, sql)

    async def value_stats(self, table: str, columns: Sequence[str]) -> dict[str, ValueStats]:
        """See :meth:`SqliteFile.value_stats`."""
        return await anyio.to_thread.run_sync(self.file.value_stats, table, columns)

    async def parents_precede(self, table: str, key: str, parent: str) -> bool:
        """See :meth:`SqliteFile.parents_precede`."""
        return await anyio.to_thread.run_sync(self.file.parents_precede, table, key, parent)

    async def present_keys(
        self, table: str, key_columns: Sequence[str], key_types: Sequence[str], keys: list[Any]
    ) -> set[Any]:
        """See :func:`present_in_file` (``key_types`` do not apply to SQLite)."""
        return await anyio.to_thread.run_sync(
            present_in_file, self.file.path, table, key_columns, keys
        )

    async def batches(
        self,
        sql: str,
        *,
        batch_rows: int,
        batch_bytes: int,
        prepare: Callable[[list[tuple[Any, ...]]], T],
        raw_text: bool = False,
    ) -> AsyncIterator[T]:
        """``prepare(batch)`` for each batch of :meth:`SqliteFile.stream`. The read
        and ``prepare`` run in a worker thread, and the next batch is read while the
        caller works on the current one (one batch ahead: memory stays bounded)."""
        rows = self.file.stream(
            sql, batch_rows=batch_rows, batch_bytes=batch_bytes, raw_text=raw_text
        )

        def step() -> T | None:
            batch = next(rows, None)
            return None if batch is None else prepare(batch)

        ahead = _Ahead(step)
        try:
            while True:
                item = await ahead.take()
                if item is None:
                    return
                yield item
        finally:
            await ahead.settle()
            rows.close()


class _Ahead:
    """Runs ``step`` in a worker thread one call ahead of the consumer."""

    def __init__(self, step: Callable[[], Any]) -> None:
        self._step = step
        self._next: asyncio.Future[Any] | None = None

    def _start(self) -> None:
        self._next = asyncio.ensure_future(anyio.to_thread.run_sync(self._step))

    async def settle(self) -> None:
        """Wait for a read still running in its thread (the generator must not be
        closed under it)."""
        pending, self._next = self._next, None
        if pending is not None:
            with contextlib.suppress(BaseException):
                await pending

    async def take(self) -> Any:
        if self._next is None:
            self._start()
        assert self._next is not None
        item = await self._next
        self._next = None
        if item is not None:
            self._start()
        return item


def _lenient_text(raw: bytes) -> Any:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _catalog(conn: sqlite3.Connection) -> Catalog:
    catalog = Catalog()
    rows = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    virtual = [name for name, sql in rows if (sql or "").upper().startswith("CREATE VIRTUAL")]
    for name, sql in rows:
        if name.startswith("sqlite_"):
            continue  # SQLite's own (sqlite_sequence, sqlite_stat1...)
        if name in virtual:
            catalog.skipped[name] = "virtual table (e.g. full-text index): rebuild it on the target"
            continue
        owner = next((v for v in virtual if name.startswith(v + "_")), None)
        if owner is not None:
            catalog.skipped[name] = f"storage of the virtual table {owner}"
            continue
        catalog.tables[name] = _table(conn, name, sql or "")
    return catalog


def _table(conn: sqlite3.Connection, name: str, sql: str) -> Table:
    quoted = quote_ident(name)
    info = conn.execute(f"PRAGMA table_xinfo({quoted})").fetchall()
    columns: list[Column] = []
    keyed: list[tuple[int, str]] = []
    for _cid, col, declared, notnull, default, pk, hidden in info:
        if hidden == 1:
            continue  # a virtual table's hidden column
        columns.append(
            Column(
                name=col,
                declared=declared or "",
                nullable=not notnull and not pk,
                has_default=default is not None,
                type=from_sqlite(declared or ""),
                generated=hidden in (2, 3),
            )
        )
        if pk:
            keyed.append((pk, col))
    fks = tuple(
        ForeignKey(column=row[3], table=row[2], referenced=row[4] or "")
        for row in conn.execute(f"PRAGMA foreign_key_list({quoted})").fetchall()
    )
    indexes = tuple(
        row[1]
        for row in conn.execute(f"PRAGMA index_list({quoted})").fetchall()
        if row[3] == "c"  # created by CREATE INDEX (not a PK/UNIQUE autoindex)
    )
    # A foreign key to the primary key may omit the column: fill it in.
    primary = tuple(col for _, col in sorted(keyed))
    fks = tuple(
        ForeignKey(fk.column, fk.table, fk.referenced or (primary[0] if primary else ""))
        if fk.table == name
        else fk
        for fk in fks
    )
    without_rowid = "WITHOUT ROWID" in sql.upper().replace("\n", " ")
    return Table(
        name=name,
        columns=tuple(columns),
        primary_key=primary,
        foreign_keys=fks,
        rowid=not without_rowid,
        indexes=indexes,
    )


class SqliteWriter:
    """A SQLite file as a migration's :class:`~connman.migrate.sides.Target`: written
    through ``migrate`` leases, read (lookups, verify) straight from the file. Without
    a ``manager`` (a dry run) nothing is opened for writing and only the reads work."""

    dialect = "sqlite"
    sums_on_server = False
    verifies_while_building = False
    skips_existing = True
    writes_in_flight = 1

    def __init__(self, manager: ConnectionManager | None, url: str, path: str) -> None:
        self._manager = manager
        self._url = url
        self.path = path

    async def catalog(self) -> Catalog:
        """The target's tables (empty if the file does not exist yet; nothing is
        created by looking)."""
        exists = await anyio.to_thread.run_sync(os.path.exists, self.path)
        if not exists:
            return Catalog()
        return await anyio.to_thread.run_sync(SqliteFile(self.path).catalog)

    def reader(self) -> SqliteSource:
        """The file, read-only (it must exist)."""
        return SqliteSource(SqliteFile(self.path))

    async def present_keys(
        self, table: str, key_columns: Sequence[str], key_types: Sequence[str], keys: list[Any]
    ) -> set[Any]:
        """See :func:`present_in_file` (a missing file or table holds none)."""
        return await anyio.to_thread.run_sync(present_in_file, self.path, table, key_columns, keys)

    async def rows_by_key(
        self,
        table: str,
        key_columns: Sequence[str],
        key_types: Sequence[str],
        keys: list[Any],
        select: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """See :func:`rows_in_file` (a missing file or table holds none)."""
        columns = ", ".join(select)
        return await anyio.to_thread.run_sync(
            rows_in_file, self.path, table, key_columns, keys, columns
        )

    async def aggregate(self, sql: str) -> tuple[int, int]:
        """Not here: SQLite has no checksum in SQL (``sums_on_server`` is False, the
        verify reads the rows back)."""
        raise NotImplementedError("SQLite computes no checksum; read the rows back")

    async def finish(
        self,
        table: str,
        statements: Sequence[str],
        serial: str | None,
        *,
        constraints: Sequence[str] = (),
        key_build: str | None = None,
    ) -> None:
        """The indexes (``statements``). SQLite tables are created with their keys
        (no ``constraints`` or ``key_build``), and a rowid needs no sequence."""
        if statements:
            await self.create(statements)

    def _lease(self) -> Any:
        if self._manager is None:
            raise TargetUnavailable(f"{self.path}: a dry run writes nothing")
        return self._manager.lease(_CONSUMER, url=self._url)

    async def create(self, statements: Sequence[str]) -> None:
        """Run DDL in one transaction."""
        async with self._lease() as lease:
            conn = lease.connection
            try:
                await conn.execute(SQLITE.begin)
                for statement in statements:
                    await conn.execute(statement)
                await conn.commit()
            except sqlite3.Error as exc:
                raise _classify(exc, self.path) from None

    async def write(
        self,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        encoded: CopyRows | None = None,
        keyed: bool = True,
    ) -> Written:
        """Insert ``rows``: (rows new, rows whose key exists, [(index, reason) of rows
        the database refused]). With ``keyed``, rows whose key exists already are
        skipped by the database. ``encoded`` (binary COPY) does not apply."""
        written, refused = await self._insert(table, columns, rows, keyed=keyed)
        return written, len(rows) - written - len(refused), refused

    async def _insert(
        self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]], *, keyed: bool
    ) -> tuple[int, list[tuple[int, str]]]:
        names = ", ".join(quote_ident(c) for c in columns)
        marks = ", ".join("?" * len(columns))
        conflict = " ON CONFLICT DO NOTHING" if keyed else ""
        sql = f"INSERT INTO {quote_ident(table)} ({names}) VALUES ({marks}){conflict}"
        async with self._lease() as lease:
            conn = lease.connection
            try:
                before = conn.total_changes
                await conn.execute(SQLITE.begin)
                try:
                    await conn.executemany(sql, rows)
                    await conn.commit()
                    return conn.total_changes - before, []
                except sqlite3.IntegrityError:
                    await conn.rollback()
                # One row at a time, to name the rows the database refuses.
                refused: list[tuple[int, str]] = []
                before = conn.total_changes
                await conn.execute(SQLITE.begin)
                for i, row in enumerate(rows):
                    await conn.execute("SAVEPOINT row")
                    try:
                        await conn.execute(sql, row)
                    except sqlite3.IntegrityError as exc:
                        refused.append((i, f"refused by the target: {exc}"))
                        await conn.execute("ROLLBACK TO row")
                    await conn.execute("RELEASE row")
                await conn.commit()
                return conn.total_changes - before, refused
            except sqlite3.Error as exc:
                raise _classify(exc, self.path) from None

    async def count(self, table: str) -> int:
        """Rows in ``table``."""
        async with self._lease() as lease:
            cursor = await lease.connection.execute(f"SELECT count(*) FROM {quote_ident(table)}")
            row = await cursor.fetchone()
            await cursor.close()
            return int(row[0])


def _out_of_space(path: str) -> str | None:
    import resource

    try:
        stats = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return None
    if stats.f_bavail * stats.f_frsize < 64 << 20:
        return "the disk is full"
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        sizes = [os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p)]
        if sizes and max(sizes) + (1 << 20) >= soft:
            return f"the file size limit (ulimit -f, {soft:,} bytes) is reached"
    return None


def _classify(exc: sqlite3.Error, path: str) -> Exception:
    text = str(exc)
    lower = text.lower()
    name = str(getattr(exc, "sqlite_errorname", ""))
    why = None
    if name == "SQLITE_FULL" or "full" in lower:
        why = "the disk is full"
    elif name.startswith("SQLITE_IOERR"):
        # A write that hit the end of the disk or a file-size limit comes back as a
        # plain I/O error when the write failed outright rather than short.
        why = _out_of_space(path)
    if why is not None:
        return TargetFull(
            f"the target {path} cannot grow: {why} ({text}). Make room and run the same "
            "command again: it goes on where it stopped"
        )
    if "readonly" in lower or "read-only" in lower or "unable to open" in lower:
        return TargetUnavailable(f"cannot write {path}: {text}")
    if "no such table" in lower or "has no column" in lower:
        return SchemaIncompatible(f"{path}: {text}")
    return TargetUnavailable(f"writing {path}: {text}")


def present_in_file(path: str, table: str, key_columns: Sequence[str], keys: list[Any]) -> set[Any]:
    """Which of ``keys`` exist in ``table`` of the SQLite file at ``path`` (read-only;
    a missing file or table holds none)."""
    select = ", ".join(quote_ident(c) for c in key_columns)
    rows = rows_in_file(path, table, key_columns, keys, select)
    return {r[0] for r in rows} if len(key_columns) == 1 else {tuple(r) for r in rows}


def rows_in_file(
    path: str, table: str, key_columns: Sequence[str], keys: list[Any], select: str
) -> list[tuple[Any, ...]]:
    """The ``select`` columns of the rows of ``table`` in the SQLite file at ``path``
    whose key is among ``keys`` (read-only; a missing file or table holds none)."""
    if not keys or not os.path.exists(path):
        return []
    source = SqliteFile(path)
    conn = source.connect()
    try:
        names = ", ".join(quote_ident(c) for c in key_columns)
        found: list[tuple[Any, ...]] = []
        step = 500 // max(1, len(key_columns))
        for start in range(0, len(keys), step):
            part = keys[start : start + step]
            if len(key_columns) == 1:
                marks = ", ".join("?" * len(part))
                where, args = f"{names} IN ({marks})", list(part)
            else:
                marks = ", ".join("(" + ", ".join("?" * len(key_columns)) + ")" for _ in part)
                where, args = f"({names}) IN (VALUES {marks})", [v for key in part for v in key]
            sql = f"SELECT {select} FROM {quote_ident(table)} AS t WHERE {where}"
            found.extend(tuple(r) for r in conn.execute(sql, args).fetchall())
        return found
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
