"""ConnectionManager, Lease, and the process-wide instance.

The manager resolves storage once, owns exactly one :class:`~connman.pool.Pool` per
normalized database URL, and hands out :class:`Lease` objects to named consumers.
Every spelling of a URL reaches the same pool; a URL that stands for a database the
manager degraded away from reaches the pool that replaced it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref
from collections.abc import AsyncGenerator, Sequence
from enum import IntEnum
from types import TracebackType
from typing import Any

from connman.config import CredentialProvider, PoolConfig
from connman.drivers import driver_for
from connman.errors import (
    AcquireTimeout,
    ConfigError,
    ConnectionLost,
    ConnmanError,
    LeaseError,
    PoolClosed,
    PoolUnavailable,
)
from connman.logging import bind_lease_context, get_logger, unbind_lease_context
from connman.pool import Pool, PooledConnection
from connman.replicas import ReplicaPolicy, Rotation, replica_url
from connman.resolve import Storage, resolve_storage, tier_of
from connman.stats import PoolObserver, PoolStats
from connman.urls import DatabaseURL, parse_url

__all__ = ["ConnectionManager", "Lease", "get_manager"]


# Bound once: a Lease compares the running loop with its manager's on every lease.
_running_loop = asyncio.get_running_loop


class _State(IntEnum):
    """Where a :class:`Lease` is in its single use (an IntEnum: compared on every
    lease, as cheaply as the ints it replaces)."""

    NEW = 0
    ACTIVE = 1
    ENDED = 2


# Module-level names for the hot path (a global lookup, not an enum attribute one).
_NEW, _ACTIVE, _ENDED = _State.NEW, _State.ACTIVE, _State.ENDED


class _LeakWatch:
    """A lease's leak detection: the timer, the stack that took it, when reported."""

    __slots__ = ("handle", "reported", "stack")

    def __init__(self, *, stack: str, handle: asyncio.TimerHandle) -> None:
        self.stack = stack
        self.handle = handle
        self.reported = 0.0


class Lease:
    """One connection lent to one consumer, for the span of an ``async with``.

    ``lease.connection`` is the driver's own connection (``asyncpg.Connection`` or
    ``aiosqlite.Connection``); after the lease ends, touching it through the lease
    raises :class:`LeaseError`. Keep no other reference to it.

    On release the pool rolls back an open or failed transaction and undoes session
    settings the server reports (TimeZone, DateStyle, ...). For state it cannot see
    (search_path before PG 18, advisory locks, temp tables, LISTEN made by raw SQL),
    call :meth:`request_full_reset` while holding the lease.
    """

    __slots__ = (
        "_full_reset",
        "_leak",
        "_log_tokens",
        "_manager",
        "_pool",
        "_pooled",
        "_readonly",
        "_state",
        "_timeout",
        "_url",
        "consumer",
    )

    def __init__(
        self,
        manager: ConnectionManager,
        pool: Pool | None,
        url: str | None,
        consumer: str,
        timeout: float | None,
        full_reset: bool,
        readonly: bool = False,
    ) -> None:
        # Few attributes, set once: a Lease is made per lease, on the hot path.
        self._manager = manager
        self._readonly = readonly
        self._pool = pool
        self._url = url
        self.consumer = consumer
        self._timeout = timeout
        self._full_reset = full_reset
        self._pooled: PooledConnection | None = None
        self._state = _NEW
        self._leak: _LeakWatch | None = None  # only with leak_threshold set
        self._log_tokens: tuple[Any, Any] | None = None  # structlog context

    # -- what a holder uses ----------------------------------------------------------

    @property
    def connection(self) -> Any:
        """The driver's connection. Raises :class:`LeaseError` outside the lease."""
        if self._state is not _ACTIVE:
            raise LeaseError(
                f"lease of {self.consumer!r} has "
                + ("ended" if self._state is _ENDED else "not started")
                + ": take a new lease with manager.lease(...) instead of keeping the old one"
            )
        assert self._pooled is not None
        return self._pooled.conn.raw

    @property
    def connection_state(self) -> dict[object, Any]:
        """A dict that lives as long as the physical connection, for adapters that
        set a connection up once (SQLAlchemy's connection record, codecs...)."""
        if self._state is not _ACTIVE or self._pooled is None:
            raise LeaseError(f"lease of {self.consumer!r} is not active")
        return self._pooled.state

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        if self._pool is None:
            raise LeaseError("lease not started")
        return self._pool.dialect

    @property
    def url(self) -> str:
        """The (redacted) URL of the database this lease is on."""
        if self._pool is None:
            raise LeaseError("lease not started")
        return self._pool.url.redacted()

    @property
    def readonly(self) -> bool:
        """True for a read lease (``lease(readonly=True)``): on a replica when one is
        usable, else on the primary (where the session is not made read-only)."""
        return self._readonly

    @property
    def active(self) -> bool:
        """True between acquire and release."""
        return self._state is _ACTIVE

    def request_full_reset(self) -> None:
        """Ask for a full session reset on release (asyncpg's reset query: advisory
        locks released, cursors closed, UNLISTEN *, RESET ALL; on SQLite the pragmas
        re-applied). Costs one round trip."""
        self._full_reset = True

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        pool = self._pool
        if pool is not None and self._state is _NEW and self._manager._loop is _running_loop():
            # The common case inline: no nested coroutine, and an idle connection
            # taken without any await. Kept on purpose: __aenter__/__aexit__ folded
            # into acquire()/release() cost 4 to 6 % CPU per lease at c=1/16/128
            # (tests/bench/RESULTS.md, "Lease fast paths").
            pooled = pool.try_acquire(self.consumer)
            if pooled is None:
                if self._readonly and self._url is None:
                    pool, pooled = await self._manager._acquire_read(
                        pool, self.consumer, self._timeout
                    )
                    self._pool = pool
                else:
                    pooled = await pool.acquire_queued(self.consumer, self._timeout)
            self._take(pool, pooled)
        else:
            await self.acquire()
            pool = self._pool
            assert pool is not None
        # Events logged inside the block, connman's and the application's, carry the
        # consumer and the pool (structlog's context variables) until the release.
        self._log_tokens = bind_lease_context(self.consumer, pool.name)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A driver-internal error means the connection is gone: drop it, and say so.
        # The common case inline, as in __aenter__ (a fold into release() costs).
        lost = exc is not None and self._lost(exc)
        try:
            failed = exc_type is not None
            pool, pooled = self._pool, self._pooled
            if self._state is _ACTIVE and not self._full_reset and self._leak is None:
                assert pool is not None
                assert pooled is not None
                self._state = _ENDED
                self._pooled = None
                if not pool.release_nowait(pooled, failed=failed):
                    await pool.release(pooled, failed=failed)
            else:
                await self.release(failed=failed)
        finally:
            tokens, self._log_tokens = self._log_tokens, None
            unbind_lease_context(tokens)
        if lost:
            assert exc is not None
            raise self._lost_error(exc) from exc

    def holder_error(self, exc: BaseException) -> ConnectionLost | None:
        """For an adapter that sees its holder's errors outside ``async with`` (the
        SQLAlchemy engine): what ``__aexit__`` does with ``exc``. Returns the
        :class:`ConnectionLost` to raise instead when ``exc`` is the driver saying the
        connection is gone (it has been terminated, the release drops it), else None
        (and the connection has noted ``exc``: a write refused read-only, say)."""
        return self._lost_error(exc) if self._lost(exc) else None

    def _lost_error(self, exc: BaseException) -> ConnectionLost:
        assert self._pool is not None
        return ConnectionLost(
            f"the connection of consumer {self.consumer!r} to {self._pool.name} was "
            f"lost while leased ({type(exc).__name__} from the driver: the server "
            "ended the session, or the driver lost track of it); it has been "
            "dropped. Retry on a new lease."
        )

    def _lost(self, exc: BaseException) -> bool:
        """Is ``exc`` the driver saying the leased connection is unusable? Then it is
        terminated here (no I/O), so the release drops it as lost."""
        pooled = self._pooled
        if self._state is not _ACTIVE or pooled is None:
            return False
        if not pooled.conn.is_lost_error(exc):
            if not self._readonly:
                # e.g. a write refused read-only: has the primary turned standby? (A
                # read lease may well be on a standby: that says nothing.)
                pooled.conn.saw_error(exc)
            return False
        pooled.conn.terminate()
        return True

    def try_acquire(self) -> bool:
        """The synchronous fast path of :meth:`acquire`, for code that cannot await
        (SQLAlchemy's pool runs in a greenlet): True when the lease now holds an idle
        connection, taken without waiting or I/O; False when nothing happened and
        ``await acquire()`` is needed."""
        pool = self._pool
        if self._state is not _NEW or pool is None:
            return False
        try:
            if self._manager._loop is not _running_loop():
                return False
        except RuntimeError:  # no loop runs here: await acquire() says what is wrong
            return False
        pooled = pool.try_acquire(self.consumer)
        if pooled is None:
            return False
        self._take(pool, pooled)
        return True

    def release_nowait(self, *, failed: bool = False) -> bool:
        """The synchronous fast path of :meth:`release`: True when the lease has ended
        without I/O (a clean connection went back, a broken one was dropped); False
        when nothing happened and ``await release()`` is needed."""
        if self._state is not _ACTIVE:
            self._state = _ENDED
            return True
        pool = self._pool
        pooled = self._pooled
        if self._full_reset or self._leak is not None or pool is None or pooled is None:
            return False
        if not pool.release_nowait(pooled, failed=failed):
            return False
        self._state = _ENDED
        self._pooled = None
        return True

    async def acquire(self) -> Lease:
        """Take the connection (``async with`` does this). Single use."""
        if self._state is not _NEW:
            raise LeaseError("a Lease is single use: call manager.lease(...) again")
        manager = self._manager
        pool = self._pool
        if pool is None or manager._loop is not asyncio.get_running_loop():
            if manager._loop is not asyncio.get_running_loop():
                await manager._bind_loop()
            if pool is None:
                pool = self._pool = await manager._pool_for(self._url, self._readonly)
        pooled = pool.try_acquire(self.consumer)
        if pooled is None:
            if self._readonly and self._url is None:
                pool, pooled = await manager._acquire_read(pool, self.consumer, self._timeout)
                self._pool = pool
            else:
                pooled = await pool.acquire_queued(self.consumer, self._timeout)
        self._take(pool, pooled)
        return self

    def _take(self, pool: Pool, pooled: PooledConnection) -> None:
        self._pooled = pooled
        self._state = _ACTIVE
        threshold = pool.leak_threshold
        if threshold is not None:
            loop = asyncio.get_running_loop()
            self._leak = _LeakWatch(
                stack=pool.leak_stack(),
                handle=loop.call_later(threshold, self._leaked),
            )

    async def release(self, *, failed: bool = False, discard: bool = False) -> None:
        """Give the connection back (``async with`` does this). Idempotent.

        ``failed``: the holder's work ended with an error or a cancellation, so the
        connection may be mid-operation; it is cleaned (or closed) before reuse.
        ``discard``: close this physical connection instead of reusing it (the pool
        opens a new one when needed), e.g. after changing what a session cannot undo.
        """
        pool, pooled = self._pool, self._pooled
        if discard and self._state is _ACTIVE and pool is not None and pooled is not None:
            pool.retire(pooled)
        if self._state is not _ACTIVE:
            self._state = _ENDED
            return
        self._state = _ENDED
        self._pooled = None
        assert pooled is not None
        assert pool is not None
        leak, self._leak = self._leak, None
        if leak is not None:
            leak.handle.cancel()
            if leak.reported:
                held = asyncio.get_running_loop().time() - leak.reported
                self._pool_log().warning(
                    "lease_returned_after_leak",
                    consumer=self.consumer,
                    held_seconds=round(held + (pool.leak_threshold or 0), 3),
                )
        if self._full_reset or not pool.release_nowait(pooled, failed=failed):
            await pool.release(pooled, failed=failed, full_reset=self._full_reset)

    def _leaked(self) -> None:
        pool, leak = self._pool, self._leak
        if pool is None or leak is None or self._state is not _ACTIVE:
            return
        leak.reported = asyncio.get_running_loop().time()
        pool.note_leak(self.consumer)
        self._pool_log().warning(
            "lease_leak_suspected",
            consumer=self.consumer,
            held_seconds=pool.leak_threshold,
            stack=leak.stack,
        )

    def _pool_log(self) -> Any:
        assert self._pool is not None
        return get_logger("connman.lease", pool=self._pool.name)

    def __repr__(self) -> str:
        where = self._pool.name if self._pool is not None else "unresolved"
        state = self._state.name.lower()
        return f"<Lease {self.consumer!r} {state} on {where}>"


class ConnectionManager:
    """One pool per database, leases for every subsystem.

    Args:
        url: the database; ``None`` resolves storage from the environment
            (:func:`connman.resolve_storage`). A :class:`~connman.Storage` is used as is.
        config: pool settings; ``None`` reads :meth:`PoolConfig.from_env`.
        credential_provider: a function (sync or async) returning the password (or
            token) for every new PostgreSQL connection; sets
            ``config.credential_provider``.
        degrade: fall back Production -> Unified -> Portable when nothing answers at
            start-up (connection refused, name not resolved, connect timeout). A server
            that answers and refuses (password, database, TLS, too many clients) is a
            :class:`PoolUnavailable` whatever this says. ``None``: on for resolved storage unless
            ``KGENTS_STORAGE_STRICT`` is set; off for an explicit ``url`` string (code
            that names a database wants that database, not a file in ``~``).
        observer: receives per-lease timings (see :mod:`connman.metrics`).
        replicas: URLs of read replicas (streaming standbys) of the default database,
            for ``lease(readonly=True)``. ``None``: ``KGENTS_DATABASE_REPLICA_URLS``
            for resolved storage, none for an explicit ``url`` string.
        replica_policy: when a replica serves reads; ``None`` reads
            :meth:`ReplicaPolicy.from_env`.
    """

    def __init__(
        self,
        url: str | Storage | None = None,
        *,
        config: PoolConfig | None = None,
        degrade: bool | None = None,
        observer: PoolObserver | None = None,
        credential_provider: CredentialProvider | None = None,
        replicas: Sequence[str] | None = None,
        replica_policy: ReplicaPolicy | None = None,
    ) -> None:
        if url is None or isinstance(url, Storage):
            storage = resolve_storage() if url is None else url
            default_degrade = not storage.strict
        else:
            parsed = parse_url(url, source="ConnectionManager(url=...)")
            storage = Storage(
                url=parsed.key, tier=tier_of(parsed), source="url", dgent_url=parsed.key
            )
            default_degrade = False
        self.storage = storage
        """What was asked for (the resolved storage); see :attr:`degraded`."""
        self.config = config if config is not None else PoolConfig.from_env()
        if credential_provider is not None:
            self.config = dataclasses.replace(self.config, credential_provider=credential_provider)
        self._degrade = default_degrade if degrade is None else degrade
        self._observer = observer
        self._pools: dict[str, Pool] = {}  # normalized URL key -> pool (aliases too)
        self._by_text: dict[str, Pool] = {}  # URL as callers spell it -> pool
        self._default: Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock: asyncio.Lock | None = None
        self._closing = False
        # Set on get_manager()'s instance only: nobody owns it, so it closes itself
        # when its event loop shuts down (see _closed_with_loop).
        self._close_with_loop = False
        self._loop_hook: AsyncGenerator[None, None] | None = None
        self._start_error: PoolUnavailable | None = None
        self._degraded_reason: str | None = None
        self._log = get_logger("connman.manager")
        self._replica_urls = _replica_urls(storage, replicas)
        self._replica_policy = (
            replica_policy
            if replica_policy is not None or not self._replica_urls
            else ReplicaPolicy.from_env()
        )
        self._rotation: Rotation | None = None
        self._rotation_task: asyncio.Task[None] | None = None
        self._reads: dict[str, int] = {}  # pool name -> read leases routed there

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the default pool (degrading if allowed). Idempotent.

        Raises:
            PoolUnavailable: no candidate database could be reached, or one answered
                and refused; ``reason``, ``hint`` and ``host`` say which and why.
        """
        if self._default is not None:
            return
        if self._closing:
            raise PoolClosed("the ConnectionManager is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:
            raise ConnmanError(_WRONG_LOOP)
        self._loop = loop
        if self._close_with_loop and self._loop_hook is None:
            self._loop_hook = _closed_with_loop(weakref.ref(self))
            await anext(self._loop_hook)
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._default is None:
                await self._open_default()
                await self._open_replicas()

    async def _open_default(self) -> None:
        try:
            await self._open_first_reachable()
        except PoolUnavailable as exc:
            # Kept for /healthz: a readiness probe must say why nothing serves.
            self._start_error = exc
            raise
        self._start_error = None

    async def _open_first_reachable(self) -> None:
        wanted = self.storage
        candidates = [wanted, *(wanted.fallbacks if self._degrade else ())]
        failures: list[str] = []
        first: PoolUnavailable | None = None
        for candidate in candidates:
            url = parse_url(candidate.url, source=candidate.source)
            pool = self._new_pool(url)
            pool.tier = candidate.tier.value
            try:
                await pool.open(wait=True)
            except PoolUnavailable as exc:
                first = first or exc
                failures.append(f"{candidate.tier.value} ({exc})")
                if not exc.unreachable:
                    # The server answered and refused (password, database, TLS, max
                    # connections...): a fallback would hide that while the data went
                    # elsewhere. Only a database nothing answers for is degraded from.
                    raise self._refused(candidate, exc, failures[:-1]) from None
                if self._degrade and candidate is not candidates[-1]:
                    self._log.warning(
                        "storage_unreachable",
                        tier=candidate.tier.value,
                        url=url.redacted(),
                        error=str(exc),
                    )
                continue
            if candidate is not wanted:
                pool.degraded_from = wanted.redacted_url
                self._degraded_reason = "; ".join(failures)
                self._log.warning(
                    "storage_degraded",
                    wanted=wanted.redacted_url,
                    wanted_tier=wanted.tier.value,
                    got=url.redacted(),
                    got_tier=candidate.tier.value,
                    reason=self._degraded_reason,
                )
            self._pools[url.key] = pool
            self._pools[parse_url(wanted.url).key] = pool
            self._default = pool
            return
        assert first is not None
        # Each failure already ends with its own hint; only strict mode adds one.
        text = "; ".join(failures)
        hint = first.hint or "Start the database or fix the URL"
        if wanted.strict:
            hint += ", or unset KGENTS_STORAGE_STRICT to allow degradation"
            text += " (KGENTS_STORAGE_STRICT is set: no fallback was tried)"
        raise PoolUnavailable(
            f"no storage reachable: {text}", reason=first.reason, hint=hint, host=first.host
        )

    async def _open_replicas(self) -> None:
        """Open the replica pools and run the first check before any lease reads, so
        reads go to replicas from the start; then check every ``check_interval``."""
        default = self._default
        if not self._replica_urls or default is None:
            return
        if default.degraded_from is not None:
            # The replicas follow the database that could not be reached, not the
            # fallback the writes now go to: reading them would read other data.
            self._log.warning("replicas_unused", reason="storage degraded", primary=default.name)
            return
        pools: list[Pool] = []
        for url in self._replica_urls:
            pool = self._pools.get(url.key)
            if pool is None:
                pool = self._new_pool(url)
                pool.tier = tier_of(url).value
                self._pools[url.key] = pool
                # Not wait=True: a replica that is down must not stop the manager; the
                # check keeps it out of rotation until it answers.
                await pool.open(wait=False)
            pools.append(pool)
        policy = self._replica_policy
        assert policy is not None
        rotation = Rotation(default, pools, policy)
        await rotation.check()
        self._rotation = rotation
        assert self._loop is not None
        self._rotation_task = self._loop.create_task(rotation.run(), name="ReplicaRotation")

    def _refused(
        self, candidate: Storage, exc: PoolUnavailable, earlier: list[str]
    ) -> PoolUnavailable:
        """The error for a candidate that answered and refused: never degraded from."""
        wanted = self.storage
        text = str(exc)
        if earlier:
            text = (
                f"{wanted.redacted_url} cannot be reached ({'; '.join(earlier)}), and its "
                f"{candidate.tier.value} fallback refused: {text}"
            )
        elif self._degrade and wanted.fallbacks:
            text += (
                " connman does not fall back to another store for this: the server "
                f"answered ({exc.reason}), so a fallback would put the data elsewhere."
            )
        return PoolUnavailable(text, reason=exc.reason, hint=exc.hint, host=exc.host)

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close every pool: waiters get PoolClosed, leases still out get ``timeout``
        seconds to come back before their connections are terminated."""
        self._closing = True
        task, self._rotation_task = self._rotation_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pools = {id(p): p for p in self._pools.values()}
        if self._default is not None:
            pools[id(self._default)] = self._default
        await asyncio.gather(*(p.aclose(timeout) for p in pools.values()))

    async def __aenter__(self) -> ConnectionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closing

    # -- leases ----------------------------------------------------------------------

    def lease(
        self,
        consumer: str,
        *,
        url: str | None = None,
        timeout: float | None = None,
        full_reset: bool = False,
        readonly: bool = False,
    ) -> Lease:
        """A lease for ``consumer`` (``"sqlalchemy"``, ``"dgent"``, ``"brain"``...),
        to use as ``async with manager.lease("dgent") as lease:``.

        ``url``: another database than the default; any spelling of it reaches its one
        pool (created on first use). ``timeout``: seconds to wait (default
        ``config.acquire_timeout``). ``full_reset``: see :meth:`Lease.request_full_reset`.
        ``readonly``: the holder only reads, so a read replica may serve it (see
        :mod:`connman.replicas`): one in rotation, in turn; the primary when none is
        configured or usable. Reads on a replica may lag the writes (up to the policy's
        ``max_lag``); read your own writes with a normal lease. With ``url``, that
        database serves it.
        """
        if type(consumer) is not str or not consumer:
            raise ConfigError(f"a lease needs a consumer name (a non-empty str), got {consumer!r}")
        if self._closing:
            raise PoolClosed("the ConnectionManager is closed")
        if url is not None:
            pool = self._by_text.get(url)
        elif readonly:
            pool = self._read_pool()
        else:
            pool = self._default
        return Lease(self, pool, url, consumer, timeout, full_reset, readonly)

    async def acquire(
        self,
        consumer: str,
        *,
        url: str | None = None,
        timeout: float | None = None,
        full_reset: bool = False,
        readonly: bool = False,
    ) -> Lease:
        """Like :meth:`lease`, already acquired; the caller must ``await
        lease.release()`` (for code that cannot use ``async with``)."""
        lease = self.lease(
            consumer, url=url, timeout=timeout, full_reset=full_reset, readonly=readonly
        )
        return await lease.acquire()

    async def _acquire_read(
        self, pool: Pool, consumer: str, timeout: float | None
    ) -> tuple[Pool, PooledConnection]:
        """A read lease's wait: on a replica at most ``check_timeout``, then on the
        primary. A replica that died since the last check would otherwise hold its
        reads for their whole deadline before the next check takes it out."""
        rotation, default = self._rotation, self._default
        if rotation is None or default is None or pool is default:
            return pool, await pool.acquire_queued(consumer, timeout)
        total = self.config.acquire_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            return pool, await pool.acquire_queued(
                consumer, min(total, rotation.policy.check_timeout)
            )
        except (AcquireTimeout, PoolUnavailable):
            remaining = total - (loop.time() - started)
            if remaining <= 0:
                raise
        self._reads[pool.name] -= 1
        self._reads[default.name] = self._reads.get(default.name, 0) + 1
        return default, await default.acquire(consumer, remaining)

    def _read_pool(self) -> Pool | None:
        """The pool of a read lease (None before start), counted per pool."""
        rotation = self._rotation
        pool = self._default if rotation is None else rotation.pick()
        if pool is not None:
            self._reads[pool.name] = self._reads.get(pool.name, 0) + 1
        return pool

    async def _bind_loop(self) -> None:
        if self._loop is None:
            await self.start()
        elif self._loop is not asyncio.get_running_loop():
            raise ConnmanError(_WRONG_LOOP)

    async def _pool_for(self, url: str | None, readonly: bool = False) -> Pool:
        if url is None:
            await self.start()
            pool = self._read_pool() if readonly else self._default
            assert pool is not None
            return pool
        pool = self._by_text.get(url)
        if pool is not None:
            return pool
        parsed = parse_url(url, source="lease(url=...)")
        pool = self._pools.get(parsed.key)
        if pool is None:
            if self._closing:
                raise PoolClosed("the ConnectionManager is closed")
            pool = self._new_pool(parsed)
            pool.tier = tier_of(parsed).value
            self._pools[parsed.key] = pool
            await pool.open(wait=False)
        self._by_text[url] = pool
        return pool

    async def expire_connections(self, url: str | None = None) -> None:
        """Replace every connection of every pool (or of ``url``'s pool) with a new one
        (asyncpg's name): idle ones close now, leased ones when they are released, so
        no lease fails. After a credential rotation, a server's configuration change,
        or before maintenance. ``url`` reaches every pool that connects with it: the
        one leased by that URL and a replica pool configured with it (which connects
        with :func:`~connman.replicas.replica_url`'s default added)."""
        found: list[Pool | None]
        if url is None:
            found = list(self._pools.values())
        else:
            parsed = parse_url(url)
            keys = (parsed.key, replica_url(parsed).key)
            found = [self._by_text.get(url), *(self._pools.get(key) for key in keys)]
        for pool in {id(p): p for p in found if p is not None}.values():
            pool.expire_connections()

    def set_observer(self, observer: PoolObserver | None) -> None:
        """Route per-lease timings of every pool, present and future, to ``observer``
        (:func:`connman.metrics.instrument` does this for a manager built without one,
        such as :func:`get_manager`'s)."""
        self._observer = observer
        for pool in {id(p): p for p in self._pools.values()}.values():
            pool.set_observer(observer)

    def _new_pool(self, url: DatabaseURL) -> Pool:
        # Pools of URLs that differ only in their password redact to the same text:
        # number them so stats and metric labels stay apart.
        name = url.redacted()
        taken = {pool.name for pool in self._pools.values()}
        n = 2
        while name in taken:
            name = f"{url.redacted()}#{n}"
            n += 1
        return Pool(
            url, driver_for(url, self.config), self.config, name=name, observer=self._observer
        )

    # -- what it reports -------------------------------------------------------------

    def stats(self) -> list[PoolStats]:
        """One snapshot per pool (the default one first). Nothing in them is secret."""
        seen: dict[int, Pool] = {}
        if self._default is not None:
            seen[id(self._default)] = self._default
        for pool in self._pools.values():
            seen.setdefault(id(pool), pool)
        rotation = self._rotation
        if rotation is None and not self._reads:
            return [pool.stats() for pool in seen.values()]
        replicas = {id(p) for p in rotation.pools} if rotation is not None else set()
        out = []
        for pool in seen.values():
            st = dataclasses.replace(pool.stats(), reads=self._reads.get(pool.name, 0))
            if id(pool) in replicas:
                assert rotation is not None
                st = dataclasses.replace(st, role="replica", replica=rotation.status(pool))
            out.append(st)
        return out

    @property
    def replicas(self) -> list[Pool]:
        """The read replica pools (empty before :meth:`start`, or without replicas)."""
        return [] if self._rotation is None else self._rotation.pools

    async def check_replicas(self) -> None:
        """Check every replica now (the manager does it every ``check_interval``):
        promoted, lagging or silent ones leave the rotation, recovered ones return."""
        if self._rotation is not None:
            await self._rotation.check()

    @property
    def degraded(self) -> bool:
        """True when the default pool is a fallback for the storage asked for."""
        return self._default is not None and self._default.degraded_from is not None

    @property
    def degraded_reason(self) -> str | None:
        """Why the manager serves from a fallback (None when not :attr:`degraded`)."""
        return self._degraded_reason if self.degraded else None

    @property
    def start_error(self) -> PoolUnavailable | None:
        """The error of the last failed :meth:`start` (None once one succeeded): what
        ``/healthz`` reports for a manager whose default store cannot serve."""
        return self._start_error

    @property
    def observer(self) -> PoolObserver | None:
        """Where the pools report per-lease timings (see :meth:`set_observer`)."""
        return self._observer

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the manager's pools run on, once started (None before)."""
        return self._loop

    @property
    def default_pool(self) -> Pool | None:
        """The pool behind ``lease()`` without ``url`` (None before :meth:`start`)."""
        return self._default

    def __repr__(self) -> str:
        where = self._default.name if self._default is not None else self.storage.redacted_url
        return f"<ConnectionManager {where} pools={len(self.stats())}>"


def _replica_urls(storage: Storage, replicas: Sequence[str] | None) -> tuple[DatabaseURL, ...]:
    """The replica URLs a manager uses, checked: PostgreSQL, not the primary itself."""
    if replicas is None:
        texts: Sequence[str] = storage.replica_urls
        source = "KGENTS_DATABASE_REPLICA_URLS"
    else:
        if isinstance(replicas, str):
            raise ConfigError("replicas= takes a list of URLs, not one string")
        texts, source = replicas, "ConnectionManager(replicas=...)"
    urls: list[DatabaseURL] = []
    for text in texts:
        url = replica_url(parse_url(text, source=source))
        if url.dialect != "postgresql" or storage.dialect != "postgresql":
            raise ConfigError(
                f"{source}: read replicas need PostgreSQL URLs and a PostgreSQL primary "
                f"(replica {url.redacted()}, primary {storage.redacted_url})"
            )
        if url.key == parse_url(storage.url).key:
            raise ConfigError(f"{source} names the primary itself ({url.redacted()})")
        if all(url.key != u.key for u in urls):
            urls.append(url)
    return tuple(urls)


_WRONG_LOOP = (
    "this ConnectionManager was started on another event loop; asyncpg and aiosqlite "
    "connections cannot cross loops. Create one manager per loop, or call "
    "connman.get_manager() from inside the loop that uses it."
)

_default_manager: ConnectionManager | None = None
_default_lock = threading.Lock()


def get_manager() -> ConnectionManager:
    """The process-wide manager, created on first use from :func:`resolve_storage`
    and started by its first lease. If the previous one was closed, or its event loop
    has closed (a new ``asyncio.run``), a fresh one replaces it."""
    global _default_manager
    with _default_lock:
        current = _default_manager
        stale = (
            current is None
            or current.closed
            or (current._loop is not None and current._loop.is_closed())
        )
        if stale:
            current = _default_manager = ConnectionManager()
            current._close_with_loop = True
        assert current is not None
        return current


async def _closed_with_loop(
    manager_ref: weakref.ref[ConnectionManager],
) -> AsyncGenerator[None, None]:
    """Close a manager nobody owns when its event loop shuts down.

    asyncio has no "loop closing" callback, but every runner that ends a loop
    properly (``asyncio.run``, ``asyncio.Runner``, anyio, pytest's loops) calls
    ``loop.shutdown_asyncgens()``, which closes each async generator still suspended
    on that loop, inside the loop. Suspended here, this generator's ``finally`` is that
    hook: connections get a polite close (asyncpg's Terminate, SQLite's close) instead
    of being cut at exit. The weak reference lets a dropped manager go.
    """
    try:
        yield
    finally:
        manager = manager_ref()
        if manager is not None and not manager.closed:
            await manager.aclose(timeout=manager.config.close_timeout)
