"""The one exception tree of connman.

Every error connman raises on purpose derives from :class:`ConnmanError`, so an
application can catch the whole family in one ``except``. Messages name the problem
and the fix; they never contain a password (URLs are redacted before they get here).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

__all__ = [
    "AcquireTimeout",
    "AdapterError",
    "ConfigError",
    "ConnectionLost",
    "ConnmanError",
    "InvalidInput",
    "LeaseError",
    "PoolClosed",
    "PoolUnavailable",
    "QueryParameterError",
    "UnavailableReason",
]


class ConnmanError(Exception):
    """Root of every error connman raises on purpose."""


class ConfigError(ConnmanError, ValueError):
    """A URL, an environment variable or a config value is not usable.

    Also a ``ValueError``: code that validated input with ``except ValueError`` keeps
    working.
    """


class AcquireTimeout(ConnmanError, TimeoutError):
    """No connection could be leased within the deadline.

    The message carries the pool's state (size, in use per consumer, idle, waiting) and
    the last connection error, so the cause is visible without a debugger.
    """


class PoolClosed(ConnmanError):
    """The pool or manager is closed (or closing) and leases no more connections."""


class UnavailableReason(StrEnum):
    """Why a database cannot serve, as :attr:`PoolUnavailable.reason`.

    Only :attr:`UNREACHABLE` lets a manager degrade to a fallback store: every other
    reason means a server (or file) answered and refused, which a fallback would hide
    while the data went elsewhere.
    """

    UNREACHABLE = "unreachable"
    """Nothing answered: connection refused, name not resolved, connect timeout."""
    AUTHENTICATION = "authentication"
    """The server rejected the user or password (SQLSTATE class 28)."""
    AUTHORIZATION = "authorization"
    """The user may not connect to this database (SQLSTATE 42501)."""
    DATABASE_MISSING = "database_missing"
    """The server has no database of that name (SQLSTATE 3D000)."""
    TLS = "tls"
    """The TLS handshake failed: certificate not verified, TLS refused."""
    TOO_MANY_CLIENTS = "too_many_clients"
    """The server is at max_connections (SQLSTATE 53300)."""
    SERVER_NOT_READY = "server_not_ready"
    """The server is starting up, shutting down or in recovery (SQLSTATE 57P03)."""
    READ_ONLY = "read_only"
    """Every host that answered is read-only (a standby), and the pool wants a
    writable one (``target_session_attrs=read-write``, the default with several hosts)."""
    CONFIGURATION = "configuration"
    """The connection settings are not usable as written (a bad parameter, a
    certificate file that does not exist)."""
    SQLITE_FILE = "sqlite_file"
    """The SQLite file cannot be opened (missing, not a directory, not writable,
    not a database)."""
    REFUSED = "refused"
    """The server answered with another error."""


class PoolUnavailable(ConnmanError):
    """The database cannot serve: connecting failed and no connection is usable.

    Attributes (structured, so nothing needs to parse the message):
        reason: an :class:`UnavailableReason` (``None`` when the cause is not a
            connect failure, e.g. waiters failed by the pool).
        hint: what to do about it, specific to the reason.
        host: ``host:port`` of the server (or the SQLite file), never a password.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: UnavailableReason | None = None,
        hint: str | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.hint = hint
        self.host = host

    @property
    def unreachable(self) -> bool:
        """True when nothing answered: the one case in which a manager degrades."""
        return self.reason is UnavailableReason.UNREACHABLE


class ConnectionLost(ConnmanError, ConnectionError):
    """The leased connection broke under its holder, in a way the driver reports as
    its own internal state (asyncpg's ``InternalClientError: cannot switch to state
    ...``, an ``InterfaceError`` on a closed connection): its backend was terminated,
    the server restarted, the network dropped it. The pool has dropped it; whether the
    last statement took effect is unknown. Retry on a new lease. The driver's error is
    the ``__cause__``. Also a ``ConnectionError``."""


class LeaseError(ConnmanError):
    """A lease was misused, e.g. its connection touched after the lease ended."""


# -- adapters ----------------------------------------------------------------------


class AdapterError(ConnmanError):
    """A storage adapter (D-gent, Brain) refused an operation; the message says why."""


class InvalidInput(AdapterError, ValueError):
    """An argument an adapter cannot store as given (a tag longer than its column,
    an id of the wrong type...). Also a ``ValueError``. Raised before any SQL runs, so
    both dialects refuse the same values (SQLite would store what Postgres rejects)."""


class QueryParameterError(InvalidInput):
    """A ``:name`` in a query has no value in ``params``; the message names every
    missing name. (A ``:word`` meant literally is written ``\\:word``.)"""


# -- kgents' domain errors -----------------------------------------------------------

DOMAIN_ERRORS = frozenset({"CausalParentMissing", "DatumConflict"})
"""D-gent's errors, defined in :mod:`connman.kgents.errors` and reachable here for code
written before the split; loaded on first use, so importing the core does not import
the domain."""


def __getattr__(name: str) -> Any:
    if name in DOMAIN_ERRORS:
        from connman.kgents import errors

        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
