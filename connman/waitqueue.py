"""The pool's wait queue: who waits for a connection, in what order, until when.

The one rule of this module, and the only place it is written:

    **A waiter is waiting exactly while its future is pending.**

There is no waiter count to keep in step with the queue: the queue is the truth. A
waiter that gives up (its task cancelled, its deadline passed, the pool failing it)
has a done future, and whoever meets it next skips it and drops it. This matters
under cancellation: ``Task.cancel()`` cancels the awaited future at once, but the
cancelled task runs again only later, so any count decremented by that task would
count, in between, a waiter that is no longer there (issue 10.3: a newcomer queued
behind a ghost, then a pop from an empty deque after a connection was handed over,
and a connection no lease owned for the life of the pool).

The handoff (psycopg_pool's ``WaitingClient.set()/fail() -> bool``): :meth:`Waiter.set`
and :meth:`Waiter.fail` say whether the waiter took what it was given, so the giver
knows who owns a connection at every point. Everything runs on one event loop,
between awaits, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

__all__ = ["WaitQueue", "Waiter"]

T = TypeVar("T")


class Waiter(Generic[T]):
    """One task waiting for a connection, on behalf of ``consumer``."""

    __slots__ = ("consumer", "deadline", "future", "started")

    def __init__(
        self, consumer: str, future: asyncio.Future[T], deadline: float, started: float
    ) -> None:
        self.consumer = consumer
        self.future = future
        self.deadline = deadline  # on the loop's clock, like the queue's timer
        self.started = started

    def set(self, conn: T) -> bool:
        """Hand ``conn`` over. True: the waiter owns it now. False: it had already
        given up, and ``conn`` is still the giver's."""
        future = self.future
        if future.done():
            return False
        future.set_result(conn)
        return True

    def fail(self, error: BaseException) -> bool:
        """Fail the wait with ``error``. False if the waiter had already given up."""
        future = self.future
        if future.done():
            return False
        future.set_exception(error)
        return True


class WaitQueue(Generic[T]):
    """Waiters in arrival order, served first come first served among those whose
    consumer is under its limit, each failed by one shared timer at its deadline.

    ``limits`` maps a consumer to the most connections it may hold at once;
    ``on_expired(consumer, waited, waiting)`` builds the error for a waiter whose
    deadline passed (``waiting``: how many are left waiting).
    """

    __slots__ = ("_limits", "_loop", "_on_expired", "_timer", "timer_at", "waiters")

    def __init__(
        self,
        limits: Mapping[str, int],
        on_expired: Callable[[str, float, int], BaseException],
    ) -> None:
        self.waiters: deque[Waiter[T]] = deque()
        """Oldest first. A waiter joins by being appended (``appendleft``: it keeps its
        place at the head); only this class takes waiters out. Empty means nobody
        waits; the converse needs ``bool(queue)``, as it may hold waiters that gave
        up and were not met yet."""
        self._limits = limits
        self._on_expired = on_expired
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        """When the deadline timer fires next (inf: not armed)."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Use ``loop``'s clock and timers (the pool's loop, known once it opens)."""
        self._loop = loop

    # -- leaving ----------------------------------------------------------------------

    def __bool__(self) -> bool:
        """True while someone waits (drops the waiters at the head that gave up)."""
        waiters = self.waiters
        while waiters and waiters[0].future.done():
            waiters.popleft()
        return bool(waiters)

    def pop(self, holding: Mapping[str, int]) -> Waiter[T] | None:
        """Take the oldest waiter that may be served now, given how many connections
        each consumer holds (``holding``); None if nobody waits or every waiter's
        consumer is at its limit."""
        waiters = self.waiters
        while waiters and waiters[0].future.done():
            waiters.popleft()
        if not waiters:
            return None
        if not self._limits:
            return waiters.popleft()
        limits = self._limits
        for i, waiter in enumerate(waiters):
            if waiter.future.done():
                continue
            limit = limits.get(waiter.consumer)
            if limit is None or holding.get(waiter.consumer, 0) < limit:
                del waiters[i]
                return waiter
        return None

    def hand(self, conn: T, holding: Mapping[str, int]) -> str | None:
        """Give ``conn`` to the oldest waiter that may be served now (see :meth:`pop`).
        Returns that waiter's consumer (``conn`` is the waiter's now), or None: nobody
        took it and it is still the caller's."""
        waiters = self.waiters
        if self._limits:
            while (waiter := self.pop(holding)) is not None:
                if waiter.set(conn):
                    return waiter.consumer
            return None
        # No limits: pop() and set() inline, this runs on every release under load.
        while waiters:
            waiter = waiters.popleft()
            future = waiter.future
            if not future.done():
                future.set_result(conn)
                return waiter.consumer
        return None

    def fail_all(self, error: Callable[[str], BaseException]) -> None:
        """Fail every waiter with ``error(consumer)`` (one exception each) and empty
        the queue."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.future.done():
                waiter.fail(error(waiter.consumer))

    # -- what it reports -------------------------------------------------------------

    def live(self) -> Iterator[Waiter[T]]:
        """The waiters still waiting, oldest first."""
        return (w for w in self.waiters if not w.future.done())

    def count(self, at_most: float = math.inf) -> int:
        """How many wait, counting no further than ``at_most`` (a caller that only
        needs to know whether there are more than N stops the scan there)."""
        n = 0
        for waiter in self.waiters:
            if not waiter.future.done():
                n += 1
                if n >= at_most:
                    break
        return n

    def by_consumer(self) -> dict[str, int]:
        """How many wait, per consumer."""
        counts: dict[str, int] = {}
        for waiter in self.live():
            counts[waiter.consumer] = counts.get(waiter.consumer, 0) + 1
        return counts

    # -- deadlines -------------------------------------------------------------------

    def arm(self, deadline: float) -> None:
        """Make the timer fire at ``deadline`` (call when it is before
        :attr:`timer_at`). One timer per queue, at the earliest deadline, not one per
        waiter: with one acquire_timeout deadlines come in arrival order, so queueing
        costs a float comparison."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self.timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Fail the waiters whose deadline has passed; re-arm for the next one."""
        assert self._loop is not None
        self._timer = None
        self.timer_at = math.inf
        now = self._loop.time()
        expired: list[Waiter[T]] = []
        following = math.inf
        for waiter in self.live():
            if waiter.deadline <= now:
                expired.append(waiter)
            elif waiter.deadline < following:
                following = waiter.deadline
        waiting = self.count() - len(expired)  # those left waiting
        for waiter in expired:
            waiter.fail(self._on_expired(waiter.consumer, now - waiter.started, waiting))
        if following < math.inf:
            self.arm(following)

    def close(self) -> None:
        """Stop the timer (the pool is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.timer_at = math.inf
