"""Drivers: asyncpg and aiosqlite behind one small protocol.

The pool never imports a driver library; it talks to a :class:`Driver` that opens
:class:`DriverConnection` objects. Each of those wraps one physical connection and
answers the three questions the pool asks on the hot path without a round trip: is it
closed, is it clean, and (when it is not) how to make it clean.
"""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from connman.config import PoolConfig
    from connman.urls import DatabaseURL, Dialect

__all__ = [
    "BROKEN",
    "CLEAN",
    "DIRTY",
    "NEEDS_FULL_RESET",
    "Driver",
    "DriverConnection",
    "Verdict",
    "driver_for",
]


class Verdict(IntEnum):
    """A driver's verdict on a returned connection. Drivers return the members
    themselves: the pool compares them by identity on every release (cheaper than
    ``==``)."""

    CLEAN = 0
    """Back to the idle list as it is: no round trip."""
    DIRTY = 1
    """Needs :meth:`DriverConnection.reset` before anyone else may use it."""
    BROKEN = 2
    """Lost or unusable: close it."""
    NEEDS_FULL_RESET = 3
    """Needs a full reset (e.g. LISTEN was used: the server keeps it)."""


# The members under their old module-level names (drivers and tests import these).
CLEAN: Final = Verdict.CLEAN
DIRTY: Final = Verdict.DIRTY
BROKEN: Final = Verdict.BROKEN
NEEDS_FULL_RESET: Final = Verdict.NEEDS_FULL_RESET


class DriverConnection(Protocol):
    """One physical connection, as the pool sees it."""

    @property
    def raw(self) -> Any:
        """The driver's own connection object, handed to the lease holder."""

    def is_closed(self) -> bool:
        """True once the connection is known to be gone (no I/O)."""

    def checkout(self) -> bool:
        """Called (no I/O) when the connection leaves the idle list: False if it is
        closed or something arrived unasked since its last operation (then the pool
        pings it first)."""

    def checkin(self) -> None:
        """Called (no I/O) each time the connection goes back clean to the idle list
        (or straight to the next waiter): once per kept lease, and for a handover
        that nobody used. The driver parks it, so that whatever arrives from now
        until :meth:`checkout` counts as unasked."""

    def checked(self) -> None:
        """The pool has just pinged it successfully: whatever arrived was harmless."""

    def verdict(self, failed: bool) -> Verdict:
        """CLEAN, DIRTY, NEEDS_FULL_RESET or BROKEN, decided without I/O and without
        side effects (a pure query: it may be asked more than once).

        Never CLEAN for a connection whose protocol may not be idle: closed, an
        operation or a cancellation in flight, or something received unasked (a
        FATAL that the driver read between operations). ``failed`` is True when the
        lease ended with an exception (a cancellation included), so a driver can
        assume an operation may still be in flight.
        """

    server: str
    """Where it is connected (``host:port``, or the SQLite file)."""
    demoted: bool
    """True once a reset found the server read-only where the pool wants writes: the
    pool then retires every connection to :attr:`server` (failover)."""

    def saw_error(self, exc: BaseException) -> None:
        """``exc`` was raised to the lease holder (and is not a lost connection):
        remember what it says about the server for the release (no I/O)."""

    def is_lost_error(self, exc: BaseException) -> bool:
        """True when ``exc``, raised to the lease holder, is the driver's own way of
        saying the connection is gone or unusable (asyncpg's InternalClientError, an
        InterfaceError on a closed connection): the lease raises
        :class:`~connman.errors.ConnectionLost` instead and the pool drops it."""

    async def reset(self, full: bool) -> bool:
        """Make the connection clean: roll back, restore changed session state and,
        with ``full``, everything the server does not report (LISTEN, advisory locks,
        temp tables...); make sure the protocol is usable if ``verdict`` had doubts.
        Returns False if it could not be made clean."""

    async def ping(self) -> None:
        """One cheap round trip; raises if the connection is dead."""

    async def close(self) -> None:
        """Close politely (the caller bounds the time)."""

    def terminate(self) -> None:
        """Close at once, without I/O."""


class Driver(Protocol):
    """Opens connections to one database."""

    dialect: Dialect

    @property
    def hosts(self) -> dict[str, str]:
        """For a URL with several hosts: each host's outcome at the last connect
        (``ok``, ``refused``, ``read-only``...). Empty otherwise."""

    async def start(self) -> None:
        """Prepare (e.g. keep an in-memory SQLite database alive). Called once."""

    async def connect(self) -> DriverConnection:
        """Open one connection within the configured connect timeout."""

    async def stop(self) -> None:
        """Release what :meth:`start` took. Called once, after every connection closed."""


def driver_for(url: DatabaseURL, config: PoolConfig) -> Driver:
    """The driver for ``url``'s dialect."""
    if url.dialect == "postgresql":
        from connman.drivers.asyncpg import AsyncpgDriver

        return AsyncpgDriver(url, config)
    from connman.drivers.aiosqlite import AiosqliteDriver

    return AiosqliteDriver(url, config)
