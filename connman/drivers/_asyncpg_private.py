"""Every use of asyncpg's private internals, in one module.

asyncpg answers the questions the pool asks on every release (is a transaction open,
a cancellation pending, a LISTEN callback registered, a session setting changed?) only
through attributes it does not publish. Reading them is what makes a clean release free
of round trips. Nothing else in connman touches them.

:data:`AVAILABLE` is probed once at import: every attribute used here exists on this
asyncpg. When it is False (an asyncpg that changed shape), the driver uses the public
API only (``AsyncpgConnection`` reads the flag when a connection is made): every
release resets the connection fully with one round trip, the idle
watch is off, and the statement cache stays off behind the pooler probe. Slower,
never wrong.
"""

from __future__ import annotations

import gc
from typing import Any

import asyncpg
import asyncpg.protocol

from connman.drivers import BROKEN, CLEAN, DIRTY, NEEDS_FULL_RESET, Verdict

__all__ = [
    "AVAILABLE",
    "clear_lease_state",
    "enable_statement_cache",
    "lease_verdict",
    "parameter_dict",
    "settle_cancellation",
    "transport",
]

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
"""True when this asyncpg has every internal used here (read when a connection is
made; tests set it False to run the public path)."""


def transport(raw: asyncpg.Connection) -> Any:
    """The connection's transport (for the idle watch), or None."""
    return raw._transport


def parameter_dict(raw: asyncpg.Connection) -> dict[str, str] | None:
    """The dict in which asyncpg keeps the server's ParameterStatus values, updated in
    place on every ParameterStatus message: inside its Cython ConnectionSettings,
    reached with gc.get_referents(). None if it is not found there (the caller then
    compares the public ``repr(get_settings())``: slower, same answer)."""
    for ref in gc.get_referents(raw.get_settings()):
        if isinstance(ref, dict) and "server_version" in ref:
            return ref
    return None


def lease_verdict(raw: asyncpg.Connection) -> Verdict:
    """What the lease left behind, from asyncpg's client-side state alone: BROKEN,
    NEEDS_FULL_RESET (a LISTEN callback: the server keeps the LISTEN), DIRTY (a
    transaction, a cancellation in flight, client-side callbacks) or CLEAN.
    Connection.is_closed() and is_in_transaction() spelled out on the protocol: this
    runs on every release, and each saved call is ~50 ns."""
    protocol = raw._protocol
    if raw._aborted or not protocol.is_connected():
        return BROKEN
    if raw._listeners:
        return NEEDS_FULL_RESET
    if (
        protocol.is_in_transaction()
        or protocol._is_cancelling()
        or raw._top_xact is not None
        or raw._log_listeners
        or raw._termination_listeners
        or raw._query_loggers
    ):
        return DIRTY
    return CLEAN


async def settle_cancellation(raw: asyncpg.Connection) -> None:
    """A query was cancelled (its task was): asyncpg has sent a cancel request and
    must see the server acknowledge it before the connection is usable; otherwise the
    next lease gets "another operation is in progress"."""
    protocol = raw._protocol
    if protocol is not None and protocol._is_cancelling():
        await protocol._wait_for_cancellation()


def clear_lease_state(raw: asyncpg.Connection) -> bool:
    """Drop what the lease registered client-side (callbacks belong to the lease that
    registered them) and asyncpg's record of a transaction. True if the session has a
    transaction to roll back."""
    raw._listeners.clear()
    raw._log_listeners.clear()
    raw._termination_listeners.clear()
    raw._query_loggers.clear()
    open_transaction = raw.is_in_transaction() or raw._top_xact is not None
    raw._top_xact = None
    return open_transaction


def enable_statement_cache(raw: asyncpg.Connection, size: int) -> None:
    """Turn asyncpg's statement cache on after connect (it has no public setter).
    Without the internals the cache stays off: slower, never wrong."""
    if not AVAILABLE:
        return
    cache = raw._stmt_cache
    if hasattr(cache, "set_max_size"):
        cache.set_max_size(size)
        raw._stmt_cache_enabled = True
