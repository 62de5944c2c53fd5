"""What the migration asks of its two sides: the :class:`Source` it reads and the
:class:`Target` it writes and verifies. :mod:`connman.migrate.copy` and
:mod:`connman.migrate.compare` talk to these protocols only; the sides implement
them (:mod:`connman.migrate.postgres_side`, :mod:`connman.migrate.sqlite_side`).

Every method is a coroutine: a side that works synchronously (SQLite's ``sqlite3``)
hops to a worker thread itself, so no caller ever wraps a side in ``to_thread``.
Where the two databases differ in what they can do (PostgreSQL sums rows on the
server, SQLite skips existing keys by itself), the target says so in an attribute
and the caller picks the strategy; it never asks which class it holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from connman.migrate.kinds import ValueStats
    from connman.migrate.model import Catalog
    from connman.migrate.pgcopy import CopyRows

__all__ = ["Source", "Target", "Written"]

T = TypeVar("T")

Written = tuple[int, int, list[tuple[int, str]]]
"""What a write did: (rows written, rows whose key the target holds already,
[(index, reason) of each row the target refused])."""


class Source(Protocol):
    """A database read by a migration (or the target read back by a verify)."""

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        ...

    async def catalog(self) -> Catalog:
        """Every table, with columns, keys, foreign keys and indexes."""
        ...

    async def count(self, table: str) -> int:
        """Rows in ``table``."""
        ...

    def batches(
        self,
        sql: str,
        *,
        batch_rows: int,
        batch_bytes: int,
        prepare: Callable[[list[tuple[Any, ...]]], T],
        raw_text: bool = False,
    ) -> AsyncIterator[T]:
        """``prepare(batch)`` for each batch of ``sql`` (at most ``batch_rows`` rows
        and about ``batch_bytes`` bytes). ``prepare`` may run in a worker thread,
        one batch ahead of the consumer. ``raw_text``: text may come as UTF-8 bytes
        (SQLite only: what a binary COPY sends as it is)."""
        ...

    async def fetch_all(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row of a small query."""
        ...

    async def present_keys(
        self, table: str, key_columns: Sequence[str], key_types: Sequence[str], keys: list[Any]
    ) -> set[Any]:
        """Which of ``keys`` exist in ``table`` (values for one key column, tuples
        for several); reads only."""
        ...

    async def value_stats(self, table: str, columns: Sequence[str]) -> dict[str, ValueStats] | None:
        """One scan describing each of ``columns``' values, for type inference;
        None where the columns' types are declared (no inference needed)."""
        ...

    async def parents_precede(self, table: str, key: str, parent: str) -> bool:
        """Whether ``table``'s rowid order already puts every row after its parent
        (False where there is no rowid order)."""
        ...


class Target(Protocol):
    """A database a migration writes into, then verifies."""

    sums_on_server: bool
    """The server computes row counts and checksums (:meth:`aggregate`,
    ``rows_by_key`` with SQL expressions): no row leaves it for a verify."""
    verifies_while_building: bool
    """The verify may run while the table's indexes are built (PostgreSQL
    synchronizes the scans; SQLite has one writer and builds first)."""
    skips_existing: bool
    """:meth:`write` leaves a row whose key exists and counts it as present
    (SQLite's ``ON CONFLICT DO NOTHING``). False: a batch with such a row fails
    whole (PostgreSQL's COPY), :meth:`write` returns None and the caller looks the
    keys up first."""
    writes_in_flight: int
    """Batches written at once: two keep a server busy while the next COPY is
    encoded; one for a file with a single writer."""

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        ...

    async def catalog(self) -> Catalog:
        """The target's tables (none if it does not exist yet; looking creates
        nothing)."""
        ...

    async def count(self, table: str) -> int:
        """Rows in ``table``."""
        ...

    async def create(self, statements: Sequence[str]) -> None:
        """Run DDL in one transaction."""
        ...

    async def write(
        self,
        table: str,
        columns: Sequence[str],
        rows: list[tuple[Any, ...]],
        *,
        encoded: CopyRows | None = None,
        keyed: bool = True,
    ) -> Written | None:
        """Write ``rows`` in one transaction (see :data:`Written`); None when a row's
        key exists and nothing was written (see :attr:`skips_existing`).
        ``encoded``: the same rows in binary COPY form, for a target that takes it;
        ``keyed``: the table has a primary key."""
        ...

    async def finish(
        self,
        table: str,
        statements: Sequence[str],
        serial: str | None,
        *,
        constraints: Sequence[str] = (),
        key_build: str | None = None,
    ) -> None:
        """After the copy: indexes (``key_build``, ``statements``), keys
        (``constraints``) and the sequence of ``serial``, where the target has them."""
        ...

    async def present_keys(
        self, table: str, key_columns: Sequence[str], key_types: Sequence[str], keys: list[Any]
    ) -> set[Any]:
        """Which of ``keys`` exist in ``table``; reads only (a dry run asks too)."""
        ...

    async def rows_by_key(
        self,
        table: str,
        key_columns: Sequence[str],
        key_types: Sequence[str],
        keys: list[Any],
        select: Sequence[str],
    ) -> list[tuple[Any, ...]]:
        """The ``select`` expressions (over the table as ``t``) of the rows whose
        key is among ``keys``; reads only."""
        ...

    async def aggregate(self, sql: str) -> tuple[int, int]:
        """(row count, checksum) computed by the server; only where
        :attr:`sums_on_server`."""
        ...

    def reader(self) -> Source:
        """The target as a :class:`Source`, to read it back (verify)."""
        ...
