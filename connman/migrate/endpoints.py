"""Open the two sides of a migration from their URLs: a
:class:`~connman.migrate.sides.Source` and a :class:`~connman.migrate.sides.Target`
(:mod:`connman.migrate.postgres_side`, :mod:`connman.migrate.sqlite_side`)."""

from __future__ import annotations

from dataclasses import dataclass

from connman.config import PoolConfig
from connman.errors import PoolUnavailable
from connman.manager import ConnectionManager
from connman.migrate.errors import SourceError, TargetUnavailable
from connman.migrate.postgres_side import PostgresSide
from connman.migrate.sides import Source, Target
from connman.migrate.sqlite_side import SqliteSource, SqliteWriter
from connman.urls import DatabaseURL, parse_url

__all__ = ["Endpoints", "open_endpoints"]


@dataclass(slots=True)
class Endpoints:
    """The source, the target, and the manager whose leases reach them."""

    source_url: DatabaseURL
    target_url: DatabaseURL
    manager: ConnectionManager | None
    source: Source
    target: Target
    """A SQLite target in a dry run is only read (nothing is opened for writing)."""

    @property
    def target_dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return self.target_url.dialect

    async def aclose(self) -> None:
        """Close the pools (a SQLite target's WAL is checkpointed into the file)."""
        if self.manager is not None:
            await self.manager.aclose()


async def open_endpoints(source: str, target: str, *, dry_run: bool) -> Endpoints:
    """Parse both URLs and connect what must be connected; raise
    :class:`SourceError` / :class:`TargetUnavailable` with a clear message (never the
    password) when a side cannot be reached. No pool degrades to another database."""
    src = parse_url(source, source="--from")
    dst = parse_url(target, source="--to")
    if src.is_memory or dst.is_memory:
        raise SourceError(
            "an in-memory SQLite database cannot be migrated (it lives in one process)"
        )
    if src.key == dst.key:
        raise SourceError("--from and --to are the same database")
    # The source first: a missing file is reported as such, whatever the target.
    source_file: SqliteSource | None = None
    if src.dialect == "sqlite":
        source_file = await SqliteSource.open(src.database or "")
    postgres = [u for u in (dst, src) if u.dialect == "postgresql"]
    writes_sqlite = dst.dialect == "sqlite" and not dry_run
    manager: ConnectionManager | None = None
    if postgres or writes_sqlite:
        default = postgres[0] if postgres else dst
        manager = ConnectionManager(default.key, degrade=False, config=PoolConfig.from_env())
    try:
        for url in postgres:
            await _connect(manager, url, role="target" if url is dst else "source")
        source_side: Source
        if source_file is not None:
            source_side = source_file
        else:
            assert manager is not None
            source_side = PostgresSide(manager, src.key)
        target_side: Target
        if dst.dialect == "postgresql":
            assert manager is not None
            target_side = PostgresSide(manager, dst.key)
        else:  # a dry run only reads the file: no manager, nothing opened for writing
            target_side = SqliteWriter(
                manager if writes_sqlite else None, dst.key, dst.database or ""
            )
    except BaseException:
        if manager is not None:
            await manager.aclose()
        raise
    return Endpoints(src, dst, manager, source_side, target_side)


async def _connect(manager: ConnectionManager | None, url: DatabaseURL, *, role: str) -> None:
    assert manager is not None
    error = SourceError if role == "source" else TargetUnavailable
    try:
        async with manager.lease("migrate", url=url.key) as lease:
            await lease.connection.fetchval("SELECT 1")
    except PoolUnavailable as exc:
        # The manager's hint is about its store (start it, or let it degrade; a
        # migration never degrades): the pool's own error under it says what failed
        # and what to do about this URL.
        pool = exc.__cause__ if isinstance(exc.__cause__, PoolUnavailable) else exc
        why = pool.reason.value if pool.reason is not None else "unreachable"
        hint = f" ({pool.hint})" if pool.hint else ""
        raise error(f"cannot connect to the {role} {url.redacted()}: {why}{hint}") from None
