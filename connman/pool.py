"""The driver-agnostic pool: one set of connections to one database.

What it guarantees, and how:

- **Strict FIFO with direct handoff.** A released connection goes straight to the
  oldest eligible waiter (its future is resolved with the connection); it never passes
  through the idle list where a newcomer could take it first (asyncpg#1247).
- **Limits per consumer.** A waiter whose consumer is at its limit is skipped, not
  served and not blocking: the next eligible waiter gets the connection.
- **Deadlines everywhere.** A waiter's deadline is a timer that removes it from the
  queue and fails it, so a waiter that timed out can never be handed a connection.
  Connecting, pinging and resetting run under timeouts.
- **Cancellation never leaks.** A waiter cancelled after it was handed a connection
  gives it back; a lease cancelled mid-query is cleaned (the cancel acknowledged, the
  transaction rolled back) or closed; cleanup runs shielded.
- **No round trip on a clean release.** The driver decides from client-side state
  whether a connection needs a reset; a clean one goes back with no I/O.
- **Self-healing.** Connections are opened by background tasks, never by the waiter,
  so a cancelled waiter cannot leave a half-open connection behind; failed attempts
  back off exponentially with jitter and the pool refills itself when the server
  returns.

Everything runs on one event loop; the bookkeeping is synchronous code between awaits,
which is what makes the handoff atomic without locks.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import traceback
from typing import TYPE_CHECKING, Any, Final

import anyio

from connman import stats as S
from connman.diagnose import diagnose
from connman.drivers import BROKEN, CLEAN, NEEDS_FULL_RESET, Driver, DriverConnection
from connman.errors import (
    AcquireTimeout,
    ConnmanError,
    PoolClosed,
    PoolUnavailable,
)
from connman.logging import get_logger
from connman.outage import Outage
from connman.urls import redact_text
from connman.waitqueue import Waiter, WaitQueue

if TYPE_CHECKING:
    from connman.config import PoolConfig
    from connman.stats import PoolObserver
    from connman.urls import DatabaseURL

__all__ = ["Pool", "PooledConnection"]

_monotonic: Final = time.monotonic
# Share of max_lifetime taken off at random per connection (psycopg_pool uses 5 %).
_LIFETIME_JITTER: Final = 0.05
# Relative jitter of each reconnect delay, so several processes do not retry in step.
_BACKOFF_JITTER: Final = 0.1
# The longest reconnect delay while someone waits: during a failover the waiters'
# writes resume within about this long of a standby's promotion.
_WAITED_MAX_DELAY: Final = 1.0


class PooledConnection:
    """A physical connection and the pool's bookkeeping about it."""

    __slots__ = ("conn", "consumer", "created", "expires", "last_used", "leased_at", "state")

    def __init__(self, conn: DriverConnection, now: float, lifetime: float) -> None:
        self.conn = conn
        # Per-physical-connection state for adapters (e.g. SQLAlchemy's connection
        # record): lives exactly as long as the connection.
        self.state: dict[object, Any] = {}
        self.created = now
        self.expires = now + lifetime * (1.0 - _LIFETIME_JITTER * random.random())
        self.last_used = now
        self.leased_at = now
        self.consumer: str | None = None


class Pool:
    """Connections to one database, leased to named consumers.

    Use it through :class:`connman.ConnectionManager`; a pool on its own is the
    engine room (``acquire``/``release``), without the lease object's safety net.
    """

    def __init__(
        self,
        url: DatabaseURL,
        driver: Driver,
        config: PoolConfig,
        *,
        name: str | None = None,
        observer: PoolObserver | None = None,
    ) -> None:
        self.url = url
        self.name = name or url.redacted()
        self.dialect = driver.dialect
        self.config = config
        # Set by the manager when this pool stands in for one it could not reach.
        self.degraded_from: str | None = None
        self.tier: str | None = None
        self._driver = driver
        self._observer = observer
        self._limits = dict(config.consumer_limits)
        self._max_size = config.max_size
        # (An in-memory SQLite database needs no connection kept here: the driver's
        # anchor connection keeps it from start to stop.)
        self._min_size = config.min_size
        self._check_after = config.health_check_after
        self.leak_threshold = config.leak_threshold

        self._idle: list[PooledConnection] = []  # LIFO: hot connections stay hot
        # Who waits, in what order, until when: owned by the queue (see waitqueue.py).
        self._queue: WaitQueue[PooledConnection] = WaitQueue(self._limits, self._expired)
        # The queue's deque, read for the hot paths' one test: empty means nobody waits.
        self._waiters = self._queue.waiters
        self._in_use = 0
        self._consumers: dict[str, int] = {}
        self._connecting = 0
        self._closing_conns = 0
        self._counters = dict.fromkeys(S.COUNTERS, 0)
        # The hot counters, kept out of the dict (merged in stats()).
        self._acquired = 0
        self._waited = 0
        self._acquire_timeout = config.acquire_timeout

        # Bumped by expire_connections(): a connect begun before it is retired too.
        self._generation = 0
        self._permanent_error = False
        self._backoff = 0.0
        self._backoff_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maintenance: asyncio.Task[None] | None = None
        self._conns: set[PooledConnection] = set()  # every open connection
        self._all_returned = asyncio.Event()
        self._closed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opened = False
        self._closing = False
        # Events about connections (opened, failed, closed, reconnects) say consumer=None:
        # they belong to the pool, not to the lease whose context spawned the task.
        self._log = get_logger("connman.pool", pool=self.name)
        # Connect failures since the last success: the last error and its diagnosis
        # (the fields of PoolUnavailable), and the outage's log lines.
        self._outage = Outage(self._log)

    # ================================================================= lifecycle

    async def open(self, *, wait: bool = True) -> None:
        """Start the pool. With ``wait``, open one connection first and raise
        :class:`PoolUnavailable` if that fails within ``connect_timeout``."""
        if self._opened:
            return
        self._loop = asyncio.get_running_loop()
        self._queue.bind(self._loop)
        self._opened = True
        pooled: PooledConnection | None = None
        try:
            # start() inside: a SQLite directory that cannot be made is a failed open too.
            await self._driver.start()
            if wait:
                with anyio.fail_after(self.config.connect_timeout):
                    pooled = await self._open_connection()
        except BaseException as exc:
            self._closing = True
            self._closed.set()
            await self._driver.stop()
            if isinstance(exc, Exception):
                found = diagnose(exc, self.url)
                raise PoolUnavailable(
                    f"cannot connect to {self.name}: {_describe(exc)}. {found.hint}.",
                    reason=found.reason,
                    hint=found.hint,
                    host=found.host,
                ) from None
            raise
        self._log.debug(
            "pool_created", min_size=self._min_size, max_size=self._max_size, consumer=None
        )
        if pooled is not None:
            self._idle.append(pooled)
        self._maintenance = self._loop.create_task(self._maintain(), name="MaintenanceTask")
        self._maintenance.add_done_callback(self._task_done)
        self._grow()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Close the pool: new acquires and every waiter get :class:`PoolClosed`;
        leases still out get ``timeout`` seconds to come back, then their connections
        are terminated (their holders get errors on next use)."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._queue.fail_all(lambda _: PoolClosed(f"pool {self.name} is closed"))
        self._queue.close()
        if self._backoff_handle is not None:
            self._backoff_handle.cancel()
        if self._maintenance is not None:
            self._maintenance.cancel()
        idle, self._idle = self._idle, []
        for pooled in idle:
            self._drop(pooled, lost=False)
        if self._in_use:
            with anyio.move_on_after(timeout):
                await self._all_returned.wait()
        for pooled in list(self._conns):  # leased and never returned
            self._drop(pooled, lost=False, terminate=True)
        # Connects, polite closes and cleanups, each bounded by its own timeout; a task
        # may spawn another (a connect that lands now closes its connection), so loop.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.close_timeout
        while self._tasks and (remaining := deadline - loop.time()) > 0:
            await asyncio.wait(list(self._tasks), timeout=remaining)
        if self._tasks:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._driver.stop()
        self._closed.set()
        self._log.debug("pool_closed", counters=dict(self._counters), consumer=None)

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has begun."""
        return self._closing

    # ================================================================= acquire

    def try_acquire(self, consumer: str) -> PooledConnection | None:
        """The synchronous fast path of :meth:`acquire`: a connection if one is idle,
        nobody is queued ahead, the consumer is under its limit and the connection
        needs no check. None otherwise (then ``await acquire()``, which queues)."""
        idle = self._idle
        if not idle or self._closing or (self._waiters and self._queue):
            return None
        if self._limits:
            limit = self._limits.get(consumer)
            if limit is not None and self._consumers.get(consumer, 0) >= limit:
                return None
        pooled = idle[-1]
        now = _monotonic()
        if not self._fresh(pooled, now):
            return None  # the queued path validates it
        idle.pop()
        pooled.consumer = consumer
        pooled.leased_at = now
        self._in_use += 1
        consumers = self._consumers
        consumers[consumer] = consumers.get(consumer, 0) + 1
        self._acquired += 1
        if self._observer is not None:
            self._observer.lease_acquired(self.name, consumer, 0.0)
        return pooled

    async def acquire(self, consumer: str, timeout: float | None = None) -> PooledConnection:
        """Lease a connection to ``consumer`` within ``timeout`` seconds (default
        ``acquire_timeout``).

        Raises:
            AcquireTimeout: none became free in time (the message says why).
            PoolUnavailable: the database cannot be reached.
            PoolClosed: the pool is closing.
        """
        pooled = self.try_acquire(consumer)
        if pooled is not None:
            return pooled
        return await self.acquire_queued(consumer, timeout)

    async def acquire_queued(self, consumer: str, timeout: float | None = None) -> PooledConnection:
        """:meth:`acquire` without its :meth:`try_acquire` first (for a caller that
        just tried): join the queue, be handed a connection, check it if needed."""
        if self._closing:
            raise PoolClosed(f"pool {self.name} is closed")
        loop = self._loop
        assert loop is not None
        queue = self._queue
        # Deadlines are on the loop's clock: the queue's one deadline timer uses it.
        started = loop.time()
        deadline = started + (self._acquire_timeout if timeout is None else timeout)
        front = False
        while True:
            future: asyncio.Future[PooledConnection] = loop.create_future()
            waiter = Waiter(consumer, future, deadline, started)
            if front:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            if self._idle:
                self._dispatch()
            if not future.done():
                if not front:
                    self._waited += 1
                if len(self._idle) + self._in_use + self._connecting < self._max_size:
                    self._grow()
                if deadline < queue.timer_at:
                    queue.arm(deadline)
            try:
                pooled = await future
            except BaseException:
                self._gave_up(waiter)
                raise
            # From the handoff until the return, this frame owns the connection:
            # whatever raises in between gives it back (nothing else would: no lease
            # holds it yet, no leak watch runs for it).
            owned: PooledConnection | None = pooled
            try:
                now = _monotonic()
                if not self._fresh(pooled, now):
                    owned = None  # _validate keeps it (True) or disposes of it
                    if not await self._validate(pooled, consumer, deadline, started):
                        # The connection we were given was dead: keep our place.
                        front = True
                        continue
                    owned = pooled
                pooled.leased_at = now
                self._acquired += 1
                if self._observer is not None:
                    self._observer.lease_acquired(self.name, consumer, loop.time() - started)
                return pooled
            except BaseException:
                if owned is not None:
                    self._return_unused(owned)
                raise

    def _gave_up(self, waiter: Waiter[PooledConnection]) -> None:
        """``waiter``'s task stopped waiting (cancelled, or an error thrown into it):
        it leaves the queue, and a connection handed to it in the same loop iteration
        as the cancellation goes back."""
        future = waiter.future
        if not future.done():
            future.cancel()  # skipped, then dropped, by whoever meets it next
        elif future.cancelled():
            pass
        elif future.exception() is None:
            self._return_unused(future.result())
        else:
            return  # it had failed (timed out, pool closed): not a cancellation
        self._counters[S.CANCELLED] += 1

    def _fresh(self, pooled: PooledConnection, now: float) -> bool:
        """May ``pooled`` be lent without a round trip? Recently used, not past its
        lifetime, and nothing arrived while it sat idle (``checkout``, no I/O)."""
        return (
            now - pooled.last_used < self._check_after
            and now < pooled.expires
            and pooled.conn.checkout()
        )

    def _expired(self, consumer: str, waited: float, waiting: int) -> ConnmanError:
        """The error for a waiter whose deadline passed (called by the queue's timer)."""
        return self._acquire_error(consumer, waited, waiting)

    async def _validate(
        self, pooled: PooledConnection, consumer: str, deadline: float, started: float
    ) -> bool:
        """Check a connection just handed to us that is not :meth:`_fresh`. True: it
        works, keep it. Otherwise it has been disposed of (dropped, or cleaned in the
        background) and False means: wait again within the same deadline."""
        conn = pooled.conn
        if conn.is_closed() or _monotonic() >= pooled.expires:
            self._lease_ended(pooled, None)
            self._slot_freed()
            self._drop(pooled, lost=conn.is_closed())
            return False
        self._counters[S.HEALTH_CHECKS] += 1
        assert self._loop is not None
        remaining = deadline - self._loop.time()
        try:
            with anyio.fail_after(max(0.0, min(remaining, self.config.connect_timeout))):
                await conn.ping()
        except BaseException as exc:
            self._lease_ended(pooled, None)
            if isinstance(exc, asyncio.CancelledError | TimeoutError):
                # Interrupted, not failed: the ping may still be on the wire. Clean
                # the connection in the background, like a lease that was cancelled.
                self._spawn(self._clean_and_return(pooled, True, False), "ReturnConnection")
            else:
                self._slot_freed()
                self._drop(pooled, lost=True)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._counters[S.HEALTH_CHECKS_FAILED] += 1
            self._log.info("health_check_failed", error=_describe(exc))
            if self._loop.time() >= deadline:
                waited = self._loop.time() - started
                raise self._acquire_error(consumer, waited, self._queue.count()) from None
            return False
        conn.checked()
        pooled.last_used = _monotonic()
        return True

    # ================================================================= release

    def release_nowait(self, pooled: PooledConnection, *, failed: bool = False) -> bool:
        """Return a connection without I/O: a clean one goes back to the idle list (or
        to the oldest waiter), a broken one is dropped. Returns False when the
        connection needs :meth:`release` (a reset, a polite close); nothing has changed
        then."""
        now = _monotonic()
        verdict = pooled.conn.verdict(failed)
        if verdict is CLEAN and not self._closing and now < pooled.expires:
            # _lease_ended() and _slot_freed() inline: this is the hot path.
            consumer = pooled.consumer
            if consumer is not None:
                pooled.consumer = None
                consumers = self._consumers
                left = consumers[consumer] - 1
                if left:
                    consumers[consumer] = left
                else:
                    del consumers[consumer]
                if self._observer is not None:
                    self._observer.lease_released(self.name, consumer, now - pooled.leased_at)
            pooled.last_used = now
            pooled.conn.checkin()
            # _put_back() inline: straight to the oldest eligible waiter (it stays in
            # use), else idle (not closing: nobody to tell that all are back).
            if not (self._waiters and self._hand(pooled)):
                self._in_use -= 1
                self._idle.append(pooled)
            return True
        if verdict is BROKEN:  # lost mid-use: nothing to say to the server
            self._lease_ended(pooled, now)
            self._slot_freed()
            self._drop(pooled, lost=True)
            return True
        return False

    async def release(
        self, pooled: PooledConnection, *, failed: bool = False, full_reset: bool = False
    ) -> None:
        """Return a connection, cleaning it first if it needs it.

        The cleanup runs in its own task, so a cancellation of the caller
        (``Task.cancel()``, ``asyncio.timeout``, a task group) cannot interrupt it;
        anyio's shielded scopes do not stop a native ``Task.cancel()``, hence the task.
        After a clean exit the caller awaits it (through ``asyncio.shield``): the
        connection is back when ``release`` returns. After a failure (``failed``: an
        error or a cancellation) the caller does not wait: the cleanup may have to
        wait for the server to acknowledge a cancelled query, and a caller with a
        deadline (``asyncio.timeout``) must not overshoot it by ``reset_timeout``. The
        connection counts as in use until it is clean either way.
        """
        if not full_reset and self.release_nowait(pooled, failed=failed):
            return
        self._lease_ended(pooled, _monotonic())
        cleanup = self._spawn(
            self._clean_and_return(pooled, failed, full_reset), "ReturnConnection"
        )
        if not failed:
            await asyncio.shield(cleanup)

    async def _clean_and_return(self, pooled: PooledConnection, failed: bool, full: bool) -> None:
        """Background half of a release: the lease has ended, the connection still
        counts as in use until it is clean (or closed)."""
        conn = pooled.conn
        verdict = conn.verdict(failed)
        if verdict is BROKEN:
            self._slot_freed()
            self._drop(pooled, lost=True)
            return
        if self._closing or _monotonic() >= pooled.expires:
            self._slot_freed()
            self._drop(pooled, lost=False)
            return
        full = full or verdict is NEEDS_FULL_RESET
        if verdict is not CLEAN or full:
            self._counters[S.RESETS] += 1
            if full:
                self._counters[S.FULL_RESETS] += 1
            try:
                with anyio.fail_after(self.config.reset_timeout):
                    clean = await conn.reset(full)
            except Exception as exc:
                clean = False
                self._log.info("reset_failed", error=_describe(exc))
            if not clean or self._closing:
                self._counters[S.RETURNS_BAD] += int(not clean)
                self._slot_freed()
                self._drop(pooled, lost=conn.is_closed())
                if conn.demoted:
                    self._server_read_only(conn.server)
                return
        pooled.last_used = _monotonic()
        self._put_back(pooled)

    def _return_unused(self, pooled: PooledConnection) -> None:
        """Give back a connection that was handed over but never used (no I/O)."""
        self._lease_ended(pooled, None)
        self._put_back(pooled)

    # ================================================================= bookkeeping

    def _lease_ended(self, pooled: PooledConnection, now: float | None) -> None:
        """The consumer's slot is free. ``now`` is None for a lease never granted
        (handed over, then cancelled or failed validation): not observed."""
        consumer = pooled.consumer
        if consumer is None:
            return
        pooled.consumer = None
        left = self._consumers[consumer] - 1
        if left:
            self._consumers[consumer] = left
        else:
            del self._consumers[consumer]
        if now is not None and self._observer is not None:
            self._observer.lease_released(self.name, consumer, now - pooled.leased_at)

    def _slot_freed(self) -> None:
        """The connection is no longer in use (back in idle, or dropped)."""
        self._in_use -= 1
        if self._closing and not self._in_use:
            self._all_returned.set()

    # ================================================================= handoff
    #
    # The connection states, and who moves a connection between them:
    #   idle (in self._idle)  --_dispatch / try_acquire-->  in use (counted in _in_use)
    #   in use --_hand-->  in use by the next waiter (never through idle: strict FIFO)
    #   in use --_put_back / release_nowait-->  idle, when nobody can take it
    # A connection handed to a waiter belongs to that waiter's acquire_queued from then
    # on, which returns it (_return_unused) if anything stops it from reaching a lease.

    def _hand(self, pooled: PooledConnection) -> bool:
        """The one handoff: give ``pooled`` (counted in use, of no consumer) to the
        oldest eligible waiter. True: it is that waiter's now. False: nobody waiting
        may take it, it is still the caller's."""
        consumers = self._consumers
        consumer = self._queue.hand(pooled, consumers)
        if consumer is None:
            return False
        pooled.consumer = consumer
        consumers[consumer] = consumers.get(consumer, 0) + 1
        return True

    def _put_back(self, pooled: PooledConnection) -> None:
        """``pooled`` (counted in use, of no consumer) is free for its next user: the
        oldest eligible waiter, else the idle list (or closed, if the pool is). The
        driver parks it here (``checkin``), whichever way it came back."""
        if self._closing:
            self._slot_freed()
            self._drop(pooled, lost=False)
            return
        pooled.conn.checkin()
        if not (self._waiters and self._hand(pooled)):
            self._slot_freed()
            self._idle.append(pooled)

    def _dispatch(self) -> None:
        """Hand idle connections to the oldest eligible waiters."""
        idle = self._idle
        while idle and self._waiters:
            pooled = idle.pop()
            self._in_use += 1
            if not self._hand(pooled):
                self._in_use -= 1
                idle.append(pooled)
                return

    def _acquire_error(self, consumer: str, waited: float, waiting: int) -> ConnmanError:
        size = len(self._idle) + self._in_use
        by_consumer = ", ".join(f"{c} {n}" for c, n in sorted(self._consumers.items())) or "none"
        text = (
            f"no connection for consumer {consumer!r} within {waited:.3g}s from pool "
            f"{self.name}: size {size}/{self._max_size} (connecting {self._connecting}), "
            f"in use {self._in_use} ({by_consumer}), idle {len(self._idle)}, "
            f"waiting {waiting}"
        )
        limit = self._limits.get(consumer)
        if limit is not None:
            text += f", limit of {consumer!r} {limit}"
        outage = self._outage
        if outage.diagnosis is not None and size == 0:
            return self._unavailable(
                f"{text}; the database is unreachable, last connect error: {outage.last_error}",
                consumer,
                names_pool=True,
            )
        advice = (
            "Raise max_size or acquire_timeout (KGENTS_POOL_MAX_SIZE, "
            "KGENTS_POOL_ACQUIRE_TIMEOUT), or set leak_threshold to find who holds them"
        )
        if outage.last_error is not None:
            text += f"; last connect error: {outage.last_error}"
            if outage.diagnosis is not None:
                advice = outage.diagnosis.hint  # e.g. a full server: more connections won't do
        self._counters[S.TIMEOUTS] += 1
        if self._observer is not None:
            self._observer.acquire_failed(self.name, consumer, "timeout")
        self._log.info(
            "acquire_timeout",
            consumer=consumer,
            waited=round(waited, 3),
            size=size,
            in_use=self._in_use,
            waiting=waiting,
            limit=limit,
        )
        return AcquireTimeout(f"{text}. {advice}.")

    def _unavailable(self, text: str, consumer: str, *, names_pool: bool) -> PoolUnavailable:
        """The error for a waiter the pool cannot serve. ``names_pool``: ``text``
        already says which pool and consumer (a deadline's description does)."""
        if not names_pool:
            text = f"pool {self.name}, consumer {consumer!r}: {text}"
        self._counters[S.UNAVAILABLE] += 1
        if self._observer is not None:
            self._observer.acquire_failed(self.name, consumer, "unavailable")
        found = self._outage.diagnosis
        hint = f" {found.hint}." if found is not None else ""
        return PoolUnavailable(
            f"{text}.{hint} The pool keeps reconnecting in the background.",
            reason=found.reason if found is not None else None,
            hint=found.hint if found is not None else None,
            host=found.host if found is not None else None,
        )

    # ================================================================= growth

    def _grow(self) -> None:
        """Start background connects for waiters and for min_size, within max_size."""
        if self._closing or self._loop is None:
            return
        if self._backoff_handle is not None:
            self._hurry_backoff()
            return
        size = len(self._idle) + self._in_use
        room = self._max_size - size - self._connecting - self._closing_conns
        # After a permanent error (wrong password, no such database) connect only on
        # demand: no endless background retries for min_size, no log line every 5 s.
        floor = 0 if self._permanent_error else self._min_size - size
        if room <= 0:
            return
        idle = len(self._idle)
        # Counting waiters costs a scan: stop once there are enough to fill the room.
        waiting = self._queue.count(at_most=room + idle + self._connecting)
        want = max(floor, waiting - idle) - self._connecting
        # A few attempts at a time (the next starts when one ends): against a full or
        # slow server a burst of connects only adds load.
        in_flight = self.config.max_connecting - self._connecting
        for _ in range(min(room, want, in_flight)):
            self._connecting += 1
            self._spawn(self._connect_in_background(), "AddConnection")

    async def _connect_in_background(self) -> None:
        try:
            pooled = await self._open_connection()
        except Exception:
            self._connecting -= 1
            found = self._outage.diagnosis
            if found is not None and found.permanent and not self._conns:
                # Retrying will not fix a wrong password or a missing database: say
                # so now rather than at every waiter's deadline.
                self._permanent_error = True
                reason = f"connecting fails: {self._outage.last_error}"
                self._queue.fail_all(
                    lambda consumer: self._unavailable(reason, consumer, names_pool=False)
                )
            self._enter_backoff()
            return
        except BaseException:
            self._connecting -= 1
            raise
        self._connecting -= 1
        if self._closing:
            self._drop(pooled, lost=False)  # aclose waits for this polite close
            return
        self._idle.append(pooled)
        self._dispatch()
        self._grow()

    async def _open_connection(self) -> PooledConnection:
        started = _monotonic()
        generation = self._generation
        try:
            conn = await self._driver.connect()
        except Exception as exc:
            self._counters[S.CONNECT_ERRORS] += 1
            if self._observer is not None:
                self._observer.connect_failed(self.name)
            self._outage.failed(_describe(exc), diagnose(exc, self.url))
            raise
        now = _monotonic()
        self._counters[S.CONNECTIONS_OPENED] += 1
        self._outage.recovered()
        self._permanent_error = False
        self._backoff = 0.0
        if self._observer is not None:
            self._observer.connection_opened(self.name, now - started)
        self._log.debug("connection_opened", seconds=round(now - started, 6), consumer=None)
        pooled = PooledConnection(conn, now, self.config.max_lifetime)
        if generation != self._generation:
            pooled.expires = -math.inf  # begun before expire_connections(): retire it
        self._conns.add(pooled)
        return pooled

    def _enter_backoff(self) -> None:
        if self._closing or self._backoff_handle is not None or self._loop is None:
            return
        cfg = self.config
        self._backoff = min(max(self._backoff * 2, cfg.reconnect_initial_delay), self._max_delay())
        delay = self._backoff * (1 + random.uniform(-_BACKOFF_JITTER, _BACKOFF_JITTER))
        # connect_failed says it at warning level, a few times per outage.
        self._log.debug("reconnect_scheduled", delay=round(delay, 3), consumer=None)
        self._backoff_handle = self._loop.call_later(delay, self._leave_backoff)

    def _max_delay(self) -> float:
        """The backoff ceiling: ``reconnect_max_delay``, at most ~1 s while waiters queue."""
        ceiling = self.config.reconnect_max_delay
        if self._waiters and self._queue:
            ceiling = min(ceiling, _WAITED_MAX_DELAY)
        return ceiling

    def _hurry_backoff(self) -> None:
        """A waiter arrived during a long backoff (the pool idled through an outage):
        bring the next attempt within ``_WAITED_MAX_DELAY``."""
        handle, loop = self._backoff_handle, self._loop
        assert handle is not None
        assert loop is not None
        ceiling = self._max_delay()
        if handle.when() - loop.time() > ceiling * (1 + _BACKOFF_JITTER):
            handle.cancel()
            self._backoff = ceiling
            self._backoff_handle = loop.call_later(ceiling, self._leave_backoff)

    def _leave_backoff(self) -> None:
        self._backoff_handle = None
        self._grow()

    # ================================================================= shrinking

    def retire(self, pooled: PooledConnection) -> None:
        """Close ``pooled`` when it comes back instead of lending it again (a leased
        connection is not interrupted). Uses the lifetime check every path makes."""
        pooled.expires = -math.inf

    def _server_read_only(self, server: str) -> None:
        """A connection found ``server`` read-only (a standby now, or fenced) in a pool
        that writes: retire every connection to it, idle ones now, leased ones when
        they come back, so that the pool re-targets (new connects skip read-only
        hosts: target_session_attrs)."""
        stale = [p for p in self._conns if p.conn.server == server]
        if not stale:
            return
        self._log.warning("server_read_only", server=server, retired=len(stale), consumer=None)
        for pooled in stale:
            self.retire(pooled)
        idle = [p for p in self._idle if p.conn.server == server]
        if idle:
            self._idle[:] = [p for p in self._idle if p.conn.server != server]
            for pooled in idle:
                self._drop(pooled, lost=False)
        self._grow()

    def expire_connections(self) -> None:
        """Replace every connection (asyncpg's name): idle ones are closed now, leased
        ones when released, connects in flight when they land; new ones are opened as
        needed. For rotated credentials, a server's new settings, maintenance."""
        self._generation += 1
        for pooled in self._conns:
            self.retire(pooled)
        idle, self._idle = self._idle, []
        for pooled in idle:
            self._drop(pooled, lost=False)
        self._log.info("connections_expired", consumer=None)
        self._grow()

    def _drop(self, pooled: PooledConnection, *, lost: bool, terminate: bool = False) -> None:
        """Take a connection out of the pool for good (it is neither idle nor in use
        any more). Idempotent: a connection terminated by ``aclose`` and released
        later is counted once."""
        if pooled not in self._conns:
            return
        self._conns.discard(pooled)
        self._counters[S.CONNECTIONS_CLOSED] += 1
        if lost:
            self._counters[S.CONNECTIONS_LOST] += 1
            self._log.info("connection_lost")
        if self._observer is not None:
            self._observer.connection_closed(self.name, lost)
        if terminate or lost or pooled.conn.is_closed():
            pooled.conn.terminate()
        else:
            # Counted against max_size until the server has seen it go, so the
            # server never holds more than max_size of our connections.
            self._closing_conns += 1
            self._spawn(self._close_politely(pooled), "CloseConnection")
        self._grow()

    async def _close_politely(self, pooled: PooledConnection) -> None:
        try:
            with anyio.fail_after(self.config.close_timeout):
                await pooled.conn.close()
        except BaseException:
            pooled.conn.terminate()
            raise
        finally:
            self._closing_conns -= 1
            self._log.debug("connection_closed", consumer=None)
            self._grow()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in a background task named after its job (psycopg_pool's
        names: AddConnection, ReturnConnection, CloseConnection), which aclose()
        waits for."""
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.debug(
                "background_task_failed", task=task.get_name(), error=_describe(task.exception())
            )

    async def _maintain(self) -> None:
        """Retire idle connections past max_idle (above min_size), past max_lifetime,
        or found dead, and top the pool up to min_size."""
        cfg = self.config
        # At most a second: a quiet pool must notice connections a server restart
        # closed (and refill) without waiting for traffic.
        interval = min(max(min(cfg.max_idle, cfg.max_lifetime) / 10, 0.05), 1.0)
        while not self._closing:
            await asyncio.sleep(interval)
            now = _monotonic()
            size = len(self._idle) + self._in_use
            retire: list[tuple[PooledConnection, bool]] = []
            # The idle list is least recently returned first: expire from that end.
            for pooled in self._idle:
                if pooled.conn.is_closed():
                    retire.append((pooled, True))
                elif now >= pooled.expires or (
                    now - pooled.last_used >= cfg.max_idle and size - len(retire) > self._min_size
                ):
                    retire.append((pooled, False))
            if retire:
                gone = {id(p) for p, _ in retire}
                self._idle[:] = [p for p in self._idle if id(p) not in gone]
                for pooled, lost in retire:
                    self._drop(pooled, lost=lost)
            self._grow()

    # ================================================================= stats

    def stats(self) -> S.PoolStats:
        """A snapshot; ``url`` and ``last_error`` are redacted."""
        waiting_by = self._queue.by_consumer()
        return S.PoolStats(
            name=self.name,
            url=self.url.redacted(),
            dialect=self.dialect,
            size=len(self._idle) + self._in_use,
            idle=len(self._idle),
            in_use=self._in_use,
            waiting=sum(waiting_by.values()),
            min_size=self._min_size,
            max_size=self._max_size,
            connecting=self._connecting,
            degraded=self.degraded_from is not None,
            requested_url=self.degraded_from,
            tier=self.tier,
            consumers=dict(self._consumers),
            waiting_by_consumer=waiting_by,
            consumer_limits=dict(self._limits),
            counters={**self._counters, S.ACQUIRED: self._acquired, S.WAITED: self._waited},
            last_error=self._outage.last_error if self._outage.diagnosis is not None else None,
            closed=self._closing,
            hosts=self._driver.hosts,
        )

    def set_observer(self, observer: PoolObserver | None) -> None:
        """Send per-lease timings to ``observer`` from now on."""
        self._observer = observer

    def note_leak(self, consumer: str) -> None:
        """Count a lease held past ``leak_threshold`` (the lease logs it)."""
        self._counters[S.LEAKS] += 1
        if self._observer is not None:
            self._observer.leak_detected(self.name, consumer)

    def leak_stack(self) -> str:
        """The caller's stack, for leak reports (only taken when leak detection is on)."""
        return "".join(traceback.format_stack(limit=12)[:-2])


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc) or type(exc).__name__
    return redact_text(f"{type(exc).__name__}: {text}")
