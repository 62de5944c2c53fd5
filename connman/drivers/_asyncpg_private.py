"""Every use of asyncpg's private internals, in one module.

asyncpg answers the questions the pool asks on every release (is a transaction open,
a cancellation pending, a LISTEN callback registered, a session setting changed?) only
through attributes it does not publish. Reading them is what makes a clean release free
of round trips: :class:`InternalsConnection`. Nothing else in connman touches them.

:data:`AVAILABLE` is probed once at import: every attribute used here exists on this
asyncpg. When it is False (an asyncpg that changed shape), the driver makes plain
:class:`~connman.drivers.asyncpg.AsyncpgConnection` objects instead (public API only,
the flag is read at each connect): every release resets the connection fully with one
round trip, the idle watch is off, and the statement cache stays off behind the pooler
probe. Slower, never wrong.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

import asyncpg
import asyncpg.protocol

from connman.drivers import BROKEN, CLEAN, DIRTY, NEEDS_FULL_RESET, Verdict
from connman.drivers.asyncpg import FULL_RESET, AsyncpgConnection

__all__ = ["AVAILABLE", "InternalsConnection", "enable_statement_cache"]

# Instance attributes of asyncpg.Connection (slots, visible on the class) and methods
# of its protocol that this module uses.
_CONNECTION_ATTRIBUTES = (
    "_protocol",
    "_transport",
    "_aborted",
    "_top_xact",
    "_listeners",
    "_log_listeners",
    "_termination_listeners",
    "_query_loggers",
    "_stmt_cache",
    "_stmt_cache_enabled",
)
_PROTOCOL_METHODS = (
    "is_connected",
    "is_in_transaction",
    "_is_cancelling",
    "_wait_for_cancellation",
)


def _probe() -> bool:
    return all(hasattr(asyncpg.Connection, name) for name in _CONNECTION_ATTRIBUTES) and all(
        hasattr(asyncpg.protocol.Protocol, name) for name in _PROTOCOL_METHODS
    )


AVAILABLE: bool = _probe()
"""True when this asyncpg has every internal used here (read at each connect; tests
set it False to run the public path)."""


# The last bytes of a ReadyForQuery message but its status byte ('Z', length 5): the
# server sends one at the end of every operation, and nothing after it until asked.
_READY_FOR_QUERY = b"Z\x00\x00\x00\x05"


class _ReadWatch(asyncio.Protocol):
    """Stands in front of asyncpg's protocol on the transport for the connection's
    whole life, and tells whether the server sent anything after its last
    ReadyForQuery (``suspect``).

    Why: when a backend is terminated, PostgreSQL sends FATAL and then closes the
    socket. If asyncpg reads the FATAL while no operation is in progress (the
    connection idle in the pool, or leased between two queries, or the FATAL in the
    same read as the end of the last result), its protocol moves to an error state it
    does not expose, and sees the end of stream only in a later loop iteration; any
    operation in between fails with ``InternalClientError: cannot switch to state 12;
    another operation (2) is in progress``. Whatever arrives after a ReadyForQuery
    without being asked for (that FATAL, a NOTIFY) makes the connection suspect, and
    the pool pings a suspect connection before anyone else gets it (issue 10.6).
    While the connection is ``parked`` (idle in the pool: from ``checkin`` to
    ``checkout``) nothing is asked, so whatever arrives is suspect.

    One bytes comparison per read; the connection's queries never pass through here
    otherwise.
    """

    __slots__ = ("inner", "parked", "suspect")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.suspect = False
        self.parked = False

    def data_received(self, data: bytes) -> None:
        # Mid-operation reads end anywhere (suspect, for a moment); the read that
        # ends an operation ends with its ReadyForQuery (the status byte follows).
        self.suspect = self.parked or not data.endswith(_READY_FOR_QUERY, -6, -1)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        self.suspect = True
        return cast("bool | None", self.inner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.suspect = True
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class InternalsConnection(AsyncpgConnection):
    """An :class:`AsyncpgConnection` that reads asyncpg's internals: a clean release
    costs no round trip, a reset only what the lease changed, and the idle watch
    tells a connection that received something unasked."""

    __slots__ = ("_watch",)

    def __init__(self, raw: asyncpg.Connection, **kwargs: Any) -> None:
        super().__init__(raw, **kwargs)
        transport = raw._transport
        self._watch: _ReadWatch | None = None
        if transport is not None and hasattr(transport, "set_protocol"):
            self._watch = _ReadWatch(transport.get_protocol())
            transport.set_protocol(self._watch)
        # asyncpg keeps the server's ParameterStatus values in a dict inside its Cython
        # ConnectionSettings, updated in place on every ParameterStatus message, but does
        # not expose it. gc.get_referents() reaches it, so the release check is one dict
        # comparison (~0.1 us) instead of a round trip. If it is not found, the public
        # repr (slower, same answer).
        self._live = _parameter_dict(raw)
        if self._live is not None:
            self._snapshot = dict(self._live)

    def checkout(self) -> bool:
        watch = self._watch
        if watch is not None:
            if watch.suspect:
                return False  # stays parked: the pool pings it (ping() unparks)
            watch.parked = False
        return not self.raw.is_closed()

    def checkin(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.parked = True

    def verdict(self, failed: bool) -> Verdict:
        raw = self.raw
        # Connection.is_closed() and is_in_transaction() spelled out on the protocol:
        # this runs on every release, and each saved call is ~50 ns.
        protocol = raw._protocol
        if raw._aborted or not protocol.is_connected():
            return BROKEN
        if raw._listeners:  # the server keeps the LISTEN: UNLISTEN * needed
            return NEEDS_FULL_RESET
        if (
            protocol.is_in_transaction()
            or protocol._is_cancelling()
            or raw._top_xact is not None
            or raw._log_listeners
            or raw._termination_listeners
            or raw._query_loggers
            or (self._live is not None and self._live != self._snapshot)
            or (self._live is None and not self._parameters_unchanged())
            # Something arrived after the last ReadyForQuery (a FATAL?): reset pings.
            or (self._watch is not None and self._watch.suspect)
            or self._recheck
        ):
            return DIRTY
        return CLEAN

    async def reset(self, full: bool) -> bool:
        raw = self.raw
        protocol = raw._protocol
        if protocol is not None and protocol._is_cancelling():
            # A query was cancelled (its task was): asyncpg has sent a cancel request
            # and must see the server acknowledge it before the connection is usable;
            # otherwise the next lease gets "another operation is in progress".
            await protocol._wait_for_cancellation()
        if raw.is_closed():
            return False
        watch = self._watch
        if watch is not None and watch.suspect:
            # Something arrived unasked: make sure the protocol is still usable. A
            # protocol in asyncpg's hidden error state fails this: terminate, so the
            # pool counts the connection lost and nobody else gets it.
            try:
                await self.ping()
            except Exception:
                raw.terminate()
                return False
        # Client-side callbacks belong to the lease that registered them.
        raw._listeners.clear()
        raw._log_listeners.clear()
        raw._termination_listeners.clear()
        raw._query_loggers.clear()
        if raw.is_in_transaction() or raw._top_xact is not None:
            raw._top_xact = None
            await raw.execute("ROLLBACK")
        if full:
            await raw.execute(FULL_RESET)
        elif not self._parameters_unchanged():
            await raw.execute("RESET ALL")
        return await self._after_reset()

    async def ping(self) -> None:
        watch = self._watch
        if watch is not None:
            watch.parked = False  # the answer is asked for
        await super().ping()


def _parameter_dict(raw: asyncpg.Connection) -> dict[str, str] | None:
    for ref in gc.get_referents(raw.get_settings()):
        if isinstance(ref, dict) and "server_version" in ref:
            return ref
    return None


def enable_statement_cache(raw: asyncpg.Connection, size: int) -> None:
    """Turn asyncpg's statement cache on after connect (it has no public setter).
    Without the internals the cache stays off: slower, never wrong."""
    if not AVAILABLE:
        return
    cache = raw._stmt_cache
    if hasattr(cache, "set_max_size"):
        cache.set_max_size(size)
        raw._stmt_cache_enabled = True
