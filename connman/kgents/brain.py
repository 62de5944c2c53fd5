"""The Brain adapter: kgents' relational-store interface, and coherent captures.

``BrainStore`` is the store kgents' Brain code talks to (``execute``, ``fetch_one``,
``fetch_all``, ``executemany``, ``transaction``, ``close``, ``health_check``) on
connman leases of the consumer ``brain``, PostgreSQL or SQLite alike. Queries use
``:name`` parameters on both (see :mod:`connman.adapters._params`).

On top of it, ``capture`` closes the protocol's coherence gap: the ``captures`` row
and its ``brain_crystals`` row (same id) and the crystal's tag rows are written in
one transaction on one leased connection, so either all exist or none does.
:mod:`connman.kgents.coherence` checks (and repairs) databases written before that.

The Brain store creates its tables on first use: ``captures`` from
:mod:`connman.kgents.schema.brain`, and the SQLAlchemy track's tables from the models in
:mod:`connman.kgents.schema.models`, compiled for the lease's dialect (one definition).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from connman.adapters._params import bind, bind_many
from connman.adapters._raw import RawSQL, transaction
from connman.errors import InvalidInput, PoolClosed
from connman.kgents._ddl import Reads, SchemaGate, check_reads, plan_for
from connman.kgents.schema import brain as brain_schema
from connman.kgents.schema import models
from connman.manager import ConnectionManager, Lease, get_manager
from connman.urls import redact_text

__all__ = ["BrainQueries", "BrainStore", "BrainTransaction", "Capture", "summarize"]

SUMMARY_LENGTH = 200
"""Characters of content a default crystal summary keeps (whitespace collapsed)."""

_CRYSTALS = models.CRYSTALS
_ID_LENGTH = 64  # brain_crystals.id is String(64): a capture id must fit it
_TAG_LENGTH = 64  # brain_crystal_tags.tag is String(64)


def summarize(content: str) -> str:
    """The default crystal summary of ``content``: whitespace collapsed, at most
    :data:`SUMMARY_LENGTH` characters (cut ones end with ``...``)."""
    flat = " ".join(content.split())
    if len(flat) <= SUMMARY_LENGTH:
        return flat
    return flat[: SUMMARY_LENGTH - 3].rstrip() + "..."


def content_hash(content: str) -> str:
    """md5 hex of ``content`` (UTF-8): the ``content_hash`` of captures and crystals."""
    return hashlib.md5(content.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class Capture:
    """One capture, with what its crystal says about it."""

    id: str
    content: str
    content_hash: str | None
    embedding: list[float] | None
    captured_at: str
    """ISO 8601, UTC."""
    updated_at: str | None
    metadata: dict[str, Any]
    access_count: int
    summary: str | None
    """The crystal's summary; None when the capture has no crystal (incoherent)."""
    tags: tuple[str, ...] = field(default=())
    """The crystal's tags."""


class BrainQueries:
    """``execute``, ``fetch_one``, ``fetch_all``, ``executemany`` on one lease."""

    __slots__ = ("_raw",)

    def __init__(self, raw: RawSQL) -> None:
        self._raw = raw

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self._raw.dialect

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> int:
        """Run ``query``; the number of rows it affected (0 for statements that
        report none, such as DDL and, on SQLite, SELECT)."""
        sql, args = bind(query, params, self._raw.dialect)
        return await self._raw.execute(sql, args)

    async def fetch_one(
        self, query: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row as a dict (column name -> value), or None."""
        sql, args = bind(query, params, self._raw.dialect)
        return await self._raw.fetch_one(sql, args)

    async def fetch_all(
        self, query: str, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every row, as dicts."""
        sql, args = bind(query, params, self._raw.dialect)
        return await self._raw.fetch_all(sql, args)

    async def executemany(self, query: str, params_list: Iterable[Mapping[str, Any]]) -> int:
        """Run ``query`` once per dict of ``params_list``, batched (asyncpg pipelines
        the executions; sqlite3 steps one prepared statement), atomically. Returns
        the number of parameter sets run (asyncpg reports no row counts here)."""
        batch = list(params_list)
        if not batch:
            return 0
        sql, rows = bind_many(query, batch, self._raw.dialect)
        return await self._raw.executemany(sql, rows)


class BrainTransaction(BrainQueries):
    """What :meth:`BrainStore.transaction` yields: the four calls, all inside one
    transaction on one connection. Valid only inside the ``async with``."""

    __slots__ = ()


class BrainStore:
    """kgents' relational store for Brain, on connman leases.

    Args:
        manager: the manager to lease from; ``None``: :func:`connman.get_manager`
            (looked up on every call).
        consumer: the consumer name of its leases.
        url: the database; ``None``: the manager's default database.
        reads: ``"primary"`` (the default: reads see every earlier write) or
            ``"replica"``: ``fetch_one``, ``fetch_all``, ``get_capture`` and ``recent``
            take read leases, served by a read replica when one is in rotation (they
            may lag the writes); ``execute``, ``executemany``, ``transaction`` and
            ``capture`` always write on the primary.

    Every call leases a connection for its own duration, except inside
    :meth:`transaction`. Writes outside a transaction are committed when the call
    returns, on both dialects.
    """

    def __init__(
        self,
        manager: ConnectionManager | None = None,
        *,
        consumer: str = "brain",
        url: str | None = None,
        reads: Reads = "primary",
    ) -> None:
        check_reads(reads)
        self._reads = reads
        self._manager = manager
        self._consumer = consumer
        self._url = url
        self._closed = False
        self._gate = SchemaGate(
            plan_for(
                [*brain_schema.TABLES, *models.TABLES],
                columns=[
                    (table, column, alter)
                    for table, upgrades in brain_schema.UPGRADES.items()
                    for column, alter in upgrades
                ],
            )
        )

    def __repr__(self) -> str:
        return f"BrainStore(consumer={self._consumer!r}{', closed' if self._closed else ''})"

    # -- the relational-store interface ----------------------------------------------

    async def execute(self, query: str, params: Mapping[str, Any] | None = None) -> int:
        """Run ``query`` with ``:name`` ``params``; rows affected. See
        :meth:`BrainQueries.execute`."""
        async with self._session() as q:
            return await q.execute(query, params)

    async def fetch_one(
        self, query: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row of ``query`` as a dict, or None."""
        async with self._session(reading=True) as q:
            return await q.fetch_one(query, params)

    async def fetch_all(
        self, query: str, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Every row of ``query``, as dicts."""
        async with self._session(reading=True) as q:
            return await q.fetch_all(query, params)

    async def executemany(self, query: str, params_list: Iterable[Mapping[str, Any]]) -> int:
        """``query`` once per dict, batched and atomic; the number of dicts. See
        :meth:`BrainQueries.executemany`."""
        async with self._session() as q:
            return await q.executemany(query, params_list)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[BrainTransaction]:
        """``async with store.transaction() as tx:`` -- ``tx`` has the four calls,
        all on one leased connection, in one transaction: committed when the block
        ends normally, rolled back (before the connection is lent again) when it
        raises or is cancelled. On SQLite it starts with ``BEGIN IMMEDIATE``."""
        self._check_open()
        async with self._lease() as lease:
            await self._gate.ensure(lease)
            async with transaction(lease) as raw:
                yield BrainTransaction(raw)

    async def close(self) -> None:
        """Stop using the store: later calls raise :class:`~connman.PoolClosed`. The
        connections belong to the manager, which stays open for everyone else."""
        self._closed = True

    async def health_check(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """One round trip, and the pool's numbers. Never raises for a database that
        does not answer: ``connected`` is False and ``error`` says why (redacted)."""
        self._check_open()
        started = time.perf_counter()
        report: dict[str, Any] = {"connected": False, "consumer": self._consumer}
        try:
            async with self._lease(timeout=timeout) as lease:
                await RawSQL(lease, autocommit=True).fetch_value("SELECT 1")
                report.update(dialect=lease.dialect, url=lease.url)
        except Exception as exc:
            report["error"] = redact_text(f"{type(exc).__name__}: {exc}")
            return report
        report["connected"] = True
        report["latency_ms"] = round((time.perf_counter() - started) * 1000, 3)
        for stats in self._manager_now().stats():
            if stats.url == report["url"]:
                report.update(
                    pool_size=stats.size,
                    pool_min=stats.min_size,
                    pool_max=stats.max_size,
                    pool_in_use=stats.in_use,
                    consumer_in_use=stats.consumers.get(self._consumer, 0),
                    consumer_limit=stats.consumer_limits.get(self._consumer),
                )
                break
        return report

    async def ensure_schema(self) -> None:
        """Create ``captures`` and the SQLAlchemy track's tables if missing (every
        call does this on first use; call it to pay the cost up front)."""
        async with self._session():
            pass

    # -- captures --------------------------------------------------------------------

    async def capture(
        self,
        content: str,
        *,
        embedding: Sequence[float] | None = None,
        metadata: Mapping[str, Any] | None = None,
        summary: str | None = None,
        tags: Iterable[str] = (),
        capture_id: str | None = None,
    ) -> str:
        """Store ``content`` as a capture and its crystal, coherently; the id.

        One transaction on one connection writes the ``captures`` row, the
        ``brain_crystals`` row with the same id (``content_hash`` md5, ``summary``
        given or :func:`summarize` of the content, ``tags`` as JSON) and one
        ``brain_crystal_tags`` row per tag. If any write fails, none is kept.

        ``capture_id`` (at most 64 characters) re-captures an existing id: content,
        embedding, metadata, summary and tags are replaced, ``captured_at`` and
        ``created_at`` kept, ``updated_at`` set (kgents' ``concept_id`` upsert).

        Raises:
            InvalidInput: content not a str; a tag not a non-empty str of at most 64
                characters; an id too long; metadata or embedding not JSON.
        """
        if not isinstance(content, str):
            raise InvalidInput(f"capture content is a str, got {type(content).__name__}")
        clean_tags = _clean_tags(tags)
        if capture_id is None:
            cid, replace = _new_capture_id(), False
        else:
            _check_capture_id(capture_id)
            cid, replace = capture_id, True
        now = models.utcnow()
        digest = content_hash(content)
        capture_row = {
            "id": cid,
            "content": content,
            "content_hash": digest,
            "embedding_json": _embedding_json(embedding),
            "captured_at": _iso(now),
            "updated_at": None,  # set by the upsert when the id existed
            "metadata_json": _metadata_json(metadata),
        }
        crystal_values = {
            "id": cid,
            "content_hash": digest,
            "summary": summarize(content) if summary is None else str(summary),
            "tags": list(clean_tags),
            "source_type": "capture",
            "created_at": now,
            "updated_at": now,
        }
        async with self.transaction() as tx:
            crystal_row = models.encode_row(_CRYSTALS, tx.dialect, crystal_values)
            await tx.execute(_UPSERT_CAPTURE if replace else _INSERT_CAPTURE, capture_row)
            await tx.execute(_UPSERT_CRYSTAL if replace else _INSERT_CRYSTAL, crystal_row)
            if replace:
                await tx.execute(_DELETE_TAGS, {"id": cid})
            if clean_tags:
                await tx.executemany(
                    _INSERT_TAG, [{"crystal_id": cid, "tag": t} for t in clean_tags]
                )
        return cid

    async def get_capture(self, id: str) -> Capture | None:
        """The capture ``id`` with its crystal's summary and tags, or None."""
        async with self._session(reading=True) as q:
            row = await q.fetch_one(_SELECT_CAPTURES + " WHERE c.id = :id", {"id": id})
            return None if row is None else _capture(row, q.dialect)

    async def recent(self, limit: int = 10) -> list[Capture]:
        """The ``limit`` newest captures, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"limit must be an int >= 0, got {limit!r}")
        async with self._session(reading=True) as q:
            rows = await q.fetch_all(
                _SELECT_CAPTURES + " ORDER BY c.captured_at DESC, c.id DESC LIMIT :limit",
                {"limit": limit},
            )
            return [_capture(row, q.dialect) for row in rows]

    # -- plumbing --------------------------------------------------------------------

    @asynccontextmanager
    async def _session(self, *, reading: bool = False) -> AsyncIterator[BrainQueries]:
        """Queries on one lease; ``reading``: a read lease if ``reads="replica"``."""
        self._check_open()
        readonly = reading and self._reads == "replica"
        if readonly:
            await self._gate.ensure_before_reads(self._lease)
        async with self._lease(readonly=readonly) as lease:
            await self._gate.ensure(lease)
            yield BrainQueries(RawSQL(lease, autocommit=True))

    def _check_open(self) -> None:
        if self._closed:
            raise PoolClosed(f"{self!r} is closed: create a new BrainStore")

    def _manager_now(self) -> ConnectionManager:
        return self._manager if self._manager is not None else get_manager()

    def _lease(self, timeout: float | None = None, *, readonly: bool = False) -> Lease:
        return self._manager_now().lease(
            self._consumer, url=self._url, timeout=timeout, readonly=readonly
        )


# -- SQL (":name" parameters, compiled per dialect by _params) ---------------------------

_CAPTURE_COLUMNS = (
    "id, content, content_hash, embedding_json, captured_at, updated_at, metadata_json"
)
_CAPTURE_VALUES = ", ".join(":" + c.strip() for c in _CAPTURE_COLUMNS.split(","))
_INSERT_CAPTURE = (
    f"INSERT INTO captures ({_CAPTURE_COLUMNS}, access_count) VALUES ({_CAPTURE_VALUES}, 0)"
)
_UPSERT_CAPTURE = (
    _INSERT_CAPTURE + " ON CONFLICT (id) DO UPDATE SET content = excluded.content, "
    "content_hash = excluded.content_hash, embedding_json = excluded.embedding_json, "
    "metadata_json = excluded.metadata_json, updated_at = excluded.captured_at"
)
_CRYSTAL_COLUMNS = "id, content_hash, summary, tags, source_type, created_at, updated_at"
_CRYSTAL_VALUES = ", ".join(":" + c.strip() for c in _CRYSTAL_COLUMNS.split(","))
_INSERT_CRYSTAL = (
    f"INSERT INTO brain_crystals ({_CRYSTAL_COLUMNS}, access_count) VALUES ({_CRYSTAL_VALUES}, 0)"
)
_UPSERT_CRYSTAL = (
    _INSERT_CRYSTAL + " ON CONFLICT (id) DO UPDATE SET content_hash = excluded.content_hash, "
    "summary = excluded.summary, tags = excluded.tags, updated_at = excluded.updated_at"
)
_DELETE_TAGS = "DELETE FROM brain_crystal_tags WHERE crystal_id = :id"
_INSERT_TAG = "INSERT INTO brain_crystal_tags (crystal_id, tag) VALUES (:crystal_id, :tag)"
_SELECT_CAPTURES = (
    "SELECT c.id, c.content, c.content_hash, c.embedding_json, c.captured_at, "
    "c.updated_at, c.metadata_json, c.access_count, b.id AS crystal_id, "
    "b.summary AS summary, b.tags AS tags "
    "FROM captures c LEFT JOIN brain_crystals b ON b.id = c.id"
)


# -- values ------------------------------------------------------------------------------


def _new_capture_id() -> str:
    # kgents' shape (capture_<time>_<hash>), with a random part so two captures of
    # the same content in the same second do not collide.
    return f"capture_{time.strftime('%Y%m%d_%H%M%S', time.gmtime())}_{uuid.uuid4().hex[:12]}"


def _check_capture_id(capture_id: object) -> None:
    if not isinstance(capture_id, str) or not capture_id or len(capture_id) > _ID_LENGTH:
        raise InvalidInput(
            f"capture_id must be a non-empty str of at most {_ID_LENGTH} characters "
            f"(brain_crystals.id is String({_ID_LENGTH})), got {capture_id!r}"
        )


def _clean_tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise InvalidInput(f"tags is a collection of str, not one str ({tags!r})")
    clean: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str) or not tag.strip():
            raise InvalidInput(f"a tag is a non-empty str, got {tag!r}")
        tag = tag.strip()
        # PostgreSQL refuses a longer one (VARCHAR(64)); SQLite would store it, and the
        # database could then not be migrated. Refuse it on both.
        if len(tag) > _TAG_LENGTH:
            raise InvalidInput(
                f"tag {tag[:20]!r}... is {len(tag)} characters; at most {_TAG_LENGTH}"
            )
        clean[tag] = None
    return tuple(clean)


def _embedding_json(embedding: Sequence[float] | None) -> str | None:
    if embedding is None:
        return None
    try:
        return json.dumps([float(x) for x in embedding])
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"embedding must be a sequence of floats: {exc}") from None


def _metadata_json(metadata: Mapping[str, Any] | None) -> str | None:
    if not metadata:
        return None
    try:
        return json.dumps(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata is not JSON: {exc}") from None


def _iso(moment: datetime) -> str:
    # Fixed width (microseconds always shown): ISO strings then sort as the times do.
    return moment.isoformat(timespec="microseconds")


def _capture(row: Mapping[str, Any], dialect: str) -> Capture:
    crystal = models.decode_row(_CRYSTALS, dialect, {"tags": row["tags"]})
    embedding = row["embedding_json"]
    metadata = row["metadata_json"]
    return Capture(
        id=row["id"],
        content=row["content"],
        content_hash=row["content_hash"],
        embedding=None if embedding is None else [float(x) for x in json.loads(embedding)],
        captured_at=row["captured_at"],
        updated_at=row["updated_at"],
        metadata=json.loads(metadata) if metadata else {},
        access_count=int(row["access_count"] or 0),
        summary=row["summary"] if row["crystal_id"] is not None else None,
        tags=tuple(crystal["tags"] or ()),
    )
