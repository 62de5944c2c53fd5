"""The D-gent adapter: append-only data with causal chains, on a connman lease.

``DgentStore`` implements kgents' D-gent protocol (``put``, ``get``, ``delete``,
``list``, ``causal_chain``, ``exists``, ``count``) on table ``data``
(:mod:`connman.kgents.schema.dgent`), PostgreSQL or SQLite, through leases of the consumer
``dgent`` on the database ``KGENTS_DGENT_BACKEND`` picks (``storage.dgent_url``).

What it guarantees, beyond the old backends:

- **Append-only.** ``put`` of an existing id with the same content is a no-op; with
  other content it raises :class:`~connman.errors.DatumConflict` (the old backends
  silently overwrote). A ``causal_parent`` must exist
  (:class:`~connman.errors.CausalParentMissing`), checked in the INSERT itself.
- **One statement per call** where the protocol allows it: ``put`` is one
  ``INSERT ... SELECT ... WHERE parent exists ON CONFLICT DO NOTHING`` (a second query
  only when nothing was inserted, to say why); ``causal_chain`` is one recursive CTE.
- **Indexed prefix scans.** A prefix is the range ``prefix <= id < next(prefix)`` in
  code point order: on PostgreSQL ``idx_data_id_prefix`` (``text_pattern_ops``), shaped
  so that the range is the plan whatever the planner's statistics (see
  ``_list_query``); on SQLite the primary key.
- **Schema on first use**, idempotent and safe under concurrent first use
  (:mod:`connman.kgents._ddl`).

``semantics="kgents"`` gives up the first guarantee for code written against kgents'
own backends (:mod:`connman.kgents.compat` uses it): ``put`` overwrites, and the
causal links behave as kgents' backend for the dialect made them (see
:class:`DgentStore`).

This module does not import SQLAlchemy (the D-gent track has no use for it).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from connman.adapters._params import bind
from connman.adapters._raw import RawSQL, transaction
from connman.dialect import dialect_of
from connman.errors import AdapterError, ConfigError, InvalidInput
from connman.kgents._ddl import Reads, SchemaGate, check_reads, plan_for
from connman.kgents.errors import CausalParentMissing, DatumConflict
from connman.kgents.schema import dgent as schema
from connman.manager import ConnectionManager, Lease, get_manager

__all__ = ["Datum", "DgentStore", "Semantics", "content_id", "new_id"]

Semantics = Literal["append-only", "kgents"]
"""What ``put`` and ``delete`` do with existing ids and causal links (see
:class:`DgentStore`)."""

# A causal chain longer than this is refused rather than walked forever. Append-only
# data cannot form a cycle (a parent exists before its child, ids never change); data
# written around this adapter, or overwritten with semantics="kgents", can.
MAX_CHAIN_DEPTH = 100_000

_COLUMNS = "id, content, created_at, causal_parent, metadata"


def new_id() -> str:
    """A fresh random id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def content_id(content: bytes) -> str:
    """The content-addressed id of ``content`` (sha256, 64 hex digits): the same
    content always gets the same id, so storing it twice is a no-op."""
    return hashlib.sha256(content).hexdigest()


@dataclass(frozen=True, slots=True)
class Datum:
    """One immutable piece of data. ``metadata`` is stored as JSON."""

    id: str
    content: bytes
    created_at: float = field(default_factory=time.time)
    """Unix epoch seconds."""
    causal_parent: str | None = None
    """The id of the datum this one derives from (it must exist when this is put)."""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        content: bytes,
        *,
        id: str | None = None,
        causal_parent: str | None = None,
        metadata: Mapping[str, str] | None = None,
        content_addressed: bool = False,
        created_at: float | None = None,
    ) -> Datum:
        """A new datum: id ``id`` if given, else :func:`new_id`, or :func:`content_id`
        when ``content_addressed``; ``created_at`` now unless given."""
        if id is None:
            id = content_id(content) if content_addressed else new_id()
        return cls(
            id=id,
            content=content,
            created_at=time.time() if created_at is None else created_at,
            causal_parent=causal_parent,
            metadata=dict(metadata or {}),
        )

    # kgents' Datum API (agents/d/datum.py), so its callers need no change.

    def derive(
        self, content: bytes, *, id: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> Datum:
        """A new datum (now, a new id unless given) whose causal parent is this one."""
        return Datum.create(content, id=id, causal_parent=self.id, metadata=metadata)

    def with_metadata(self, **kwargs: str) -> Datum:
        """This datum with ``kwargs`` added to its metadata (same id and time)."""
        return Datum(
            id=self.id,
            content=self.content,
            created_at=self.created_at,
            causal_parent=self.causal_parent,
            metadata={**self.metadata, **kwargs},
        )

    @property
    def size(self) -> int:
        """Bytes of content."""
        return len(self.content)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``content`` in base64."""
        return {
            "id": self.id,
            "content": base64.b64encode(self.content).decode("ascii"),
            "created_at": self.created_at,
            "causal_parent": self.causal_parent,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Datum:
        """The datum of :meth:`to_json`'s dict (``content`` as bytes, base64 or hex)."""
        content = data["content"]
        if isinstance(content, str):
            try:
                content = base64.b64decode(content)
            except ValueError:
                content = bytes.fromhex(content)
        return cls(
            id=data["id"],
            content=content,
            created_at=data["created_at"],
            causal_parent=data.get("causal_parent"),
            metadata=data.get("metadata", {}),
        )

    def to_jsonl_line(self) -> str:
        """:meth:`to_json` as one compact JSON line (no newline)."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_jsonl_line(cls, line: str) -> Datum:
        """The datum of :meth:`to_jsonl_line`."""
        return cls.from_json(json.loads(line))


class DgentStore:
    """kgents' D-gent protocol on connman leases.

    Args:
        manager: the manager to lease from; ``None``: :func:`connman.get_manager`
            (looked up on every call, so the store survives a new event loop).
        consumer: the consumer name of its leases (limits and metrics per consumer).
        url: the database; ``None``: ``manager.storage.dgent_url`` (the database
            ``KGENTS_DGENT_BACKEND`` picks, by default the storage's own).
        semantics: ``"append-only"`` (the default, as the protocol document says):
            an id is written once, a causal parent must exist, deleting a datum
            unlinks its children. ``"kgents"``: what kgents' own backends did, for
            code written against them: ``put`` of an existing id overwrites it
            (content, time, parent, metadata); on SQLite a causal parent need not
            exist and ``delete`` leaves the children pointing at the deleted id
            (kgents' ``SQLiteBackend`` had no foreign key); on PostgreSQL the table's
            foreign key refuses a missing parent (:class:`CausalParentMissing`, where
            kgents' ``PostgresBackend`` raised asyncpg's ``ForeignKeyViolationError``)
            and sets the children's parent to NULL on delete. Either way
            ``causal_chain`` stops at the first missing link. ``get``, ``list``,
            ``causal_chain``, ``exists`` and ``count`` are the same in both.
        reads: ``"primary"`` (the default: a read sees every write made before it)
            or ``"replica"``: ``get``, ``list``, ``causal_chain``, ``exists`` and
            ``count`` take read leases, served by a read replica when one is in
            rotation; they may not see a ``put`` made just before (replica lag).

    Raises:
        ConfigError: an unknown ``semantics`` or ``reads``.
    """

    def __init__(
        self,
        manager: ConnectionManager | None = None,
        *,
        consumer: str = "dgent",
        url: str | None = None,
        semantics: Semantics = "append-only",
        reads: Reads = "primary",
    ) -> None:
        if semantics not in get_args(Semantics):
            raise ConfigError(
                f"semantics must be one of {', '.join(map(repr, get_args(Semantics)))}, "
                f"got {semantics!r}"
            )
        check_reads(reads)
        self._manager = manager
        self._consumer = consumer
        self._url = url
        self._semantics = semantics
        self._reads = reads
        self._gate = SchemaGate(plan_for(schema.TABLES))

    def __repr__(self) -> str:
        extra = "" if self._semantics == "append-only" else f", semantics={self._semantics!r}"
        return f"DgentStore(consumer={self._consumer!r}{extra})"

    @property
    def semantics(self) -> Semantics:
        """``"append-only"`` or ``"kgents"``."""
        return self._semantics

    # -- the protocol ----------------------------------------------------------------

    async def put(self, datum: Datum) -> str:
        """Store ``datum``; its id.

        Raises:
            DatumConflict: the id exists with other content (the same content again
                is a no-op). With ``semantics="kgents"``: never, the datum replaces it.
            CausalParentMissing: ``datum.causal_parent`` does not exist (with
                ``semantics="kgents"``: only on PostgreSQL).
            InvalidInput: a field of the wrong type, or metadata that is not JSON.
        """
        values = _put_values(datum)
        if self._semantics == "kgents":
            return await self._overwrite(datum, values)
        async with self._lease() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            sql, args = bind(_PUT, values, raw.dialect, portable=True)
            # Twice at most: if the row vanished between our INSERT and our look at
            # it (a concurrent delete), inserting again is the right answer.
            for _ in range(2):
                try:
                    if await raw.execute(sql, args):
                        return datum.id
                except Exception as exc:
                    if _is_foreign_key_violation(exc):
                        # The parent was deleted between the existence check and the
                        # insert (PostgreSQL's FK check caught it).
                        raise _parent_missing(datum) from exc
                    raise
                row = await raw.fetch_one(*bind(_CONTENT, values, raw.dialect))
                if row is not None:
                    if bytes(row["content"]) != datum.content:
                        raise _conflict(datum, bytes(row["content"]))
                    return datum.id
                if datum.causal_parent is not None:
                    raise _parent_missing(datum)
        raise AdapterError(f"datum {datum.id!r} could not be stored: it was deleted while put")

    async def get(self, id: str) -> Datum | None:
        """The datum ``id``, or None."""
        _check_id(id)
        async with await self._reader() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            row = await raw.fetch_one(*bind(_GET, {"id": id}, raw.dialect))
        return None if row is None else _datum(row)

    async def delete(self, id: str) -> bool:
        """Delete datum ``id``; True if it existed. Its children keep existing with
        ``causal_parent`` set to NULL (they lose their link, not their data); with
        ``semantics="kgents"`` on SQLite they keep the deleted id."""
        _check_id(id)
        if self._semantics == "kgents":
            async with self._lease() as lease, _kgents_writes(lease, self._gate) as raw:
                return await raw.execute(*bind(_DELETE, {"id": id}, raw.dialect)) == 1
        async with self._lease() as lease:
            await self._gate.ensure(lease)
            async with transaction(lease) as tx:
                # The foreign key's ON DELETE SET NULL does this where it exists; a
                # table created by old kgents may lack it (always on SQLite), so the
                # children are unlinked explicitly, in the same transaction.
                await tx.execute(*bind(_UNLINK_CHILDREN, {"id": id}, tx.dialect))
                deleted = await tx.execute(*bind(_DELETE, {"id": id}, tx.dialect))
            return deleted == 1

    async def list(
        self, prefix: str | None = None, after: float | None = None, limit: int = 100
    ) -> builtins.list[Datum]:
        """Data newest first (``created_at`` descending, then id descending).

        Args:
            prefix: only ids starting with it (taken literally: ``%`` and ``_`` are
                not wildcards).
            after: only data created strictly after this Unix time.
            limit: at most this many.
        """
        if prefix is not None and not isinstance(prefix, str):
            raise InvalidInput(f"prefix must be a str, got {type(prefix).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"limit must be an int >= 0, got {limit!r}")
        async with await self._reader() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            sql, args = _list_query(lease.dialect, prefix or None, after, limit)
            rows = await raw.fetch_all(sql, args)
        return [_datum(row) for row in rows]

    async def causal_chain(self, id: str) -> builtins.list[Datum]:
        """``id`` and its ancestors, oldest first (the root first, ``id`` last); empty
        if ``id`` does not exist. One recursive query, whatever the length.

        Raises:
            AdapterError: the chain loops or is longer than ``MAX_CHAIN_DEPTH`` (only
                data written around this adapter, or overwritten with
                ``semantics="kgents"``, can do that).
        """
        _check_id(id)
        async with await self._reader() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            rows = await raw.fetch_all(
                *bind(_CHAIN, {"id": id, "depth": MAX_CHAIN_DEPTH}, raw.dialect)
            )
        chain = [_datum(row) for row in rows]
        if len({d.id for d in chain}) != len(chain):
            raise AdapterError(f"the causal chain of {id!r} contains a cycle")
        if len(chain) > MAX_CHAIN_DEPTH:
            raise AdapterError(f"the causal chain of {id!r} is longer than {MAX_CHAIN_DEPTH}")
        return chain

    async def exists(self, id: str) -> bool:
        """True if datum ``id`` exists."""
        _check_id(id)
        async with await self._reader() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            found = await raw.fetch_value(*bind(_EXISTS, {"id": id}, raw.dialect))
        return found is not None

    async def count(self) -> int:
        """The number of data."""
        async with await self._reader() as lease:
            await self._gate.ensure(lease)
            raw = RawSQL(lease, autocommit=True)
            return int(await raw.fetch_value("SELECT count(*) FROM data"))

    async def _overwrite(self, datum: Datum, values: dict[str, Any]) -> str:
        """``put`` with ``semantics="kgents"``: insert or replace every column."""
        async with self._lease() as lease, _kgents_writes(lease, self._gate) as raw:
            try:
                await raw.execute(*bind(_OVERWRITE, values, raw.dialect, portable=True))
            except Exception as exc:
                if _is_foreign_key_violation(exc):  # PostgreSQL's foreign key
                    raise _parent_missing(datum) from exc
                raise
        return datum.id

    # -- plumbing --------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """Create table ``data`` and its indexes if missing (every other call does
        this on first use; call it to pay the cost up front)."""
        async with self._lease() as lease:
            await self._gate.ensure(lease)

    async def _reader(self) -> Lease:
        """The lease of a read method: a read lease with ``reads="replica"``."""
        if self._reads == "primary":
            return self._lease()
        await self._gate.ensure_before_reads(self._lease)
        return self._lease(readonly=True)

    def _lease(self, *, readonly: bool = False) -> Lease:
        manager = self._manager if self._manager is not None else get_manager()
        url = self._url
        if url is None:
            storage = manager.storage
            # The default pool when D-gent shares the storage's database: that keeps
            # degradation (the default pool may stand in for an unreachable one).
            url = None if storage.dgent_url in ("", storage.url) else storage.dgent_url
        return manager.lease(self._consumer, url=url, readonly=readonly)


# -- SQL -------------------------------------------------------------------------------

# :name parameters, rendered per dialect by connman.dialect (portable=True: the casts
# stay on PostgreSQL and go on SQLite).
_GET = f"SELECT {_COLUMNS} FROM data WHERE id = :id"
_EXISTS = "SELECT 1 FROM data WHERE id = :id"
_CONTENT = "SELECT content FROM data WHERE id = :id"
_DELETE = "DELETE FROM data WHERE id = :id"
_UNLINK_CHILDREN = "UPDATE data SET causal_parent = NULL WHERE causal_parent = :id"

_PUT = """
INSERT INTO data (id, content, created_at, causal_parent, metadata)
SELECT :id::text, :content::bytea, :created_at::float8, :causal_parent::text, :metadata::jsonb
WHERE :causal_parent::text IS NULL OR EXISTS (SELECT 1 FROM data WHERE id = :causal_parent::text)
ON CONFLICT (id) DO NOTHING
"""

# semantics="kgents": the datum replaces an existing one (kgents' INSERT OR REPLACE /
# ON CONFLICT DO UPDATE), in place, so rows pointing at it keep their link.
_OVERWRITE = """
INSERT INTO data (id, content, created_at, causal_parent, metadata)
VALUES (:id::text, :content::bytea, :created_at::float8, :causal_parent::text, :metadata::jsonb)
ON CONFLICT (id) DO UPDATE SET content = excluded.content,
    created_at = excluded.created_at, causal_parent = excluded.causal_parent,
    metadata = excluded.metadata
"""

# Walks ids only, then joins the rows once: the recursion does not drag contents.
_CHAIN = """
WITH RECURSIVE chain(id, parent, depth) AS (
    SELECT id, causal_parent, 0 FROM data WHERE id = :id
    UNION ALL
    SELECT d.id, d.causal_parent, c.depth + 1
    FROM chain c JOIN data d ON d.id = c.parent
    WHERE c.depth < :depth
)
SELECT d.id, d.content, d.created_at, d.causal_parent, d.metadata
FROM chain c JOIN data d ON d.id = c.id
ORDER BY c.depth DESC
"""


def _list_query(
    dialect_name: str, prefix: str | None, after: float | None, limit: int
) -> tuple[str, builtins.list[Any]]:
    """The SQL and arguments of :meth:`DgentStore.list` (one statement text per
    combination of filters, so each keeps its own cached plan)."""
    dialect = dialect_of(dialect_name)
    where: builtins.list[str] = []
    args: builtins.list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return dialect.param(len(args))

    order = "created_at DESC, id DESC"
    if prefix is not None:
        upper = _prefix_upper_bound(prefix)
        if dialect.postgres:
            # The prefix is the range [prefix, upper) in byte order, on
            # idx_data_id_prefix (text_pattern_ops: ~>=~ and ~<~ compare bytes, i.e.
            # code points in UTF-8), and it must be the plan whatever the estimates:
            # - the bounds are initplans, whose values the planner cannot see, so the
            #   range always gets the default estimate (a small fraction): the index
            #   range (or its bitmap) beats a sequential scan, and a generic plan
            #   (prepared statements, after five executions) keeps the range as an
            #   Index Cond, which `LIKE $1` cannot be;
            # - ordering by `created_at + 0` gives idx_data_created nothing to serve,
            #   so no plan walks the table newest first filtering the prefix
            #   (50k tuples read per call for 3 rows when the planner thought the
            #   prefix was common).
            # Cost: a prefix reads the rows it matches and sorts them (top-N).
            where.append(f"id ~>=~ (SELECT {arg(prefix)}::text)")
            if upper is not None:
                where.append(f"id ~<~ (SELECT {arg(upper)}::text)")
            order = "created_at + 0 DESC, id DESC"
        else:
            where.append(f"id >= {arg(prefix)}")
            if upper is not None:
                where.append(f"id < {arg(upper)}")
    if after is not None:
        where.append(f"created_at > {arg(float(after))}")
    sql = f"SELECT {_COLUMNS} FROM data"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT {arg(limit)}"
    return sql, args


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``, in
    code point order (SQLite's BINARY collation; PostgreSQL's ``text_pattern_ops`` on
    UTF-8, which compares bytes); None when there is none."""
    chars = builtins.list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code > 0x10FFFF:
            continue  # U+10FFFF cannot be incremented: carry to the previous one
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates cannot be stored in UTF-8 text
        return "".join(chars) + chr(code)
    return None


@asynccontextmanager
async def _kgents_writes(lease: Lease, gate: SchemaGate) -> AsyncIterator[RawSQL]:
    """The lease's connection for a ``semantics="kgents"`` write.

    On SQLite, kgents' table had no foreign key: a missing parent was stored as is and
    a delete left the children's link alone. connman's table declares one and every
    connection enforces it (``PRAGMA foreign_keys = ON``), so it is switched off for
    this write (outside a transaction, where the pragma takes effect) and on again
    after. If the write fails or is cancelled in between, the lease asks for a full
    reset, which re-applies the connection's pragmas before anyone else gets it.
    PostgreSQL keeps its foreign key, as kgents' PostgreSQL table had it.
    """
    await gate.ensure(lease)
    raw = RawSQL(lease, autocommit=True)
    if raw.postgres:
        yield raw
        return
    await raw.execute("PRAGMA foreign_keys = OFF")
    try:
        yield raw
    except BaseException:
        lease.request_full_reset()
        raise
    await raw.execute("PRAGMA foreign_keys = ON")


# -- values ----------------------------------------------------------------------------


def _check_id(id: object) -> None:
    if not isinstance(id, str) or not id:
        raise InvalidInput(f"a datum id is a non-empty str, got {id!r}")


def _put_values(datum: Datum) -> dict[str, Any]:
    if not isinstance(datum, Datum):
        raise InvalidInput(f"put() takes a Datum, got {type(datum).__name__}")
    _check_id(datum.id)
    if not isinstance(datum.content, bytes):
        raise InvalidInput(
            f"datum {datum.id!r}: content must be bytes, got {type(datum.content).__name__}"
        )
    if datum.causal_parent is not None:
        _check_id(datum.causal_parent)
    try:
        metadata = json.dumps(datum.metadata if datum.metadata is not None else {})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"datum {datum.id!r}: metadata is not JSON: {exc}") from None
    return {
        "id": datum.id,
        "content": datum.content,
        "created_at": float(datum.created_at),
        "causal_parent": datum.causal_parent,
        "metadata": metadata,
    }


def _datum(row: Mapping[str, Any]) -> Datum:
    metadata = row["metadata"]
    if isinstance(metadata, str | bytes):
        metadata = json.loads(metadata)
    return Datum(
        id=row["id"],
        content=bytes(row["content"]),
        created_at=float(row["created_at"]),
        causal_parent=row["causal_parent"],
        metadata=dict(metadata or {}),
    )


def _is_foreign_key_violation(exc: Exception) -> bool:
    if getattr(exc, "sqlstate", None) == "23503":  # asyncpg ForeignKeyViolationError
        return True
    return isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY" in str(exc)


def _parent_missing(datum: Datum) -> CausalParentMissing:
    return CausalParentMissing(
        f"datum {datum.id!r} names causal_parent {datum.causal_parent!r}, which does not "
        "exist: put the parent first"
    )


def _conflict(datum: Datum, stored: bytes) -> DatumConflict:
    return DatumConflict(
        f"datum {datum.id!r} already exists with different content (stored: {len(stored)} "
        f"bytes, sha256 {content_id(stored)[:12]}...; given: {len(datum.content)} bytes, "
        f"sha256 {content_id(datum.content)[:12]}...). D-gent data is append-only: store "
        f"the new content under a new id (Datum.create(..., causal_parent={datum.id!r}))"
    )
