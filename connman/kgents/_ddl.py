"""Create an adapter's tables on first use: idempotent, and safe when many tasks (or
processes) use a fresh database at once.

``CREATE TABLE IF NOT EXISTS`` alone is not enough on PostgreSQL: two sessions
creating the same table at once can both pass the existence check and one fails with
a unique violation in ``pg_type``. So the statements run in one transaction that first
takes a transaction-scoped advisory lock (one key for all of connman's DDL); SQLite's
``BEGIN IMMEDIATE`` serializes them the same way (both: :mod:`connman.dialect`).
Before any of that, one catalog query checks whether every table and index is already
there, so the usual first use of an existing database takes no lock at all (a
``CREATE INDEX IF NOT EXISTS`` on PostgreSQL takes a SHARE lock on its table even
when the index exists).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

from connman.adapters._raw import RawSQL, transaction
from connman.errors import ConfigError
from connman.kgents.schema.spec import DIALECTS, TableSpec
from connman.manager import Lease

__all__ = ["Reads", "SchemaGate", "SchemaPlan", "check_reads", "plan_for"]


@dataclass(frozen=True, slots=True)
class SchemaPlan:
    """What must exist, and the statements that create it, per dialect."""

    objects: Mapping[str, tuple[str, ...]]
    """Names of the tables and indexes that must exist (per dialect)."""
    statements: Mapping[str, tuple[str, ...]]
    """Idempotent DDL, in order (per dialect)."""
    columns: tuple[tuple[str, str, str], ...] = field(default=())
    """``(table, column, ALTER TABLE ...)``: columns older tables may lack."""


def plan_for(
    specs: Sequence[TableSpec],
    *,
    extra: Mapping[str, Sequence[str]] | None = None,
    extra_objects: Sequence[str] = (),
    columns: Sequence[tuple[str, str, str]] = (),
) -> SchemaPlan:
    """The plan for ``specs``' tables and indexes, plus ``extra`` statements per
    dialect (creating ``extra_objects``)."""
    objects: dict[str, tuple[str, ...]] = {}
    statements: dict[str, tuple[str, ...]] = {}
    for dialect in DIALECTS:
        names: list[str] = []
        ddl: list[str] = []
        for spec in specs:
            names.append(spec.name)
            names.extend(ix.name for ix in spec.indexes if dialect in ix.ddl)
            ddl.extend(spec.ddl_for(dialect))
        names.extend(extra_objects)
        ddl.extend((extra or {}).get(dialect, ()))
        objects[dialect] = tuple(names)
        statements[dialect] = tuple(ddl)
    return SchemaPlan(objects=objects, statements=statements, columns=tuple(columns))


class SchemaGate:
    """Applies a :class:`SchemaPlan` once per gate (one gate per store). Concurrent
    first users may all apply it: the database serializes them and the later ones
    find everything in place."""

    __slots__ = ("_done", "_plan")

    def __init__(self, plan: SchemaPlan) -> None:
        self._plan = plan
        self._done = False

    @property
    def done(self) -> bool:
        """True once the schema is known to exist (from this gate's point of view)."""
        return self._done

    async def ensure(self, lease: Lease) -> None:
        """Create what is missing, on ``lease``'s connection. A no-op once done."""
        if self._done:
            return
        await apply_plan(lease, self._plan)
        self._done = True

    async def ensure_before_reads(self, primary: Callable[[], Lease]) -> None:
        """Before the first read on a replica, which cannot create tables: make sure
        of the schema on a ``primary()`` lease. A no-op once done."""
        if not self._done:
            async with primary() as lease:
                await self.ensure(lease)


Reads = Literal["primary", "replica"]
"""Where a store's read methods lease: ``primary`` (reads see the store's own writes at
once) or ``replica`` (read leases: a read replica when one is usable; may lag)."""


def check_reads(reads: object) -> None:
    """Raise :class:`ConfigError` unless ``reads`` is a :data:`Reads` value."""
    if reads not in get_args(Reads):
        raise ConfigError(f"reads must be 'primary' or 'replica', got {reads!r}")


async def apply_plan(lease: Lease, plan: SchemaPlan) -> None:
    """Create what ``plan`` describes, unless it all exists already."""
    dialect = lease.dialect
    if await _complete(RawSQL(lease, autocommit=True), plan, dialect):
        return
    async with transaction(lease) as tx:
        if tx.sql.ddl_lock is not None:
            await tx.execute(tx.sql.ddl_lock)
        for statement in plan.statements[dialect]:
            await tx.execute(statement)
        for table, column, alter in plan.columns:
            if column not in await _columns(tx, table):
                await tx.execute(alter)


async def _complete(raw: RawSQL, plan: SchemaPlan, dialect: str) -> bool:
    names = plan.objects[dialect]
    if raw.postgres:
        found = await raw.fetch_value(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relname = ANY($1::text[])",
            [list(names)],
        )
    else:
        marks = ", ".join("?" * len(names))
        found = await raw.fetch_value(
            f"SELECT count(*) FROM sqlite_master WHERE name IN ({marks})", names
        )
    if found != len(set(names)):
        return False
    for table, column, _ in plan.columns:
        if column not in await _columns(raw, table):
            return False
    return True


async def _columns(raw: RawSQL, table: str) -> set[str]:
    if raw.postgres:
        rows = await raw.fetch_all(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            [table],
        )
    else:
        # PRAGMA arguments cannot be bound; table names here are connman's own.
        rows = await raw.fetch_all(f"PRAGMA table_info({table})")
    return {str(row["name"]) for row in rows}
