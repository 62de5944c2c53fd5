"""The one exception tree of connman.

Every error connman raises on purpose derives from :class:`ConnmanError`, so an
application can catch the whole family in one ``except``. Messages name the problem
and the fix; they never contain a password (URLs are redacted before they get here).
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "AdapterError",
    "CausalParentMissing",
    "ConfigError",
    "ConnmanError",
    "DatumConflict",
    "InvalidInput",
    "LeaseError",
    "PoolClosed",
    "PoolUnavailable",
    "QueryParameterError",
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


class PoolUnavailable(ConnmanError):
    """The database cannot be reached: connecting failed and no connection is usable.

    Besides the message, the parts as fields (None when unknown), for code that words
    its own message: never parse the text.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        hint: str | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        """What failed: the driver's error, redacted (no password)."""
        self.hint = hint
        """What to do about it."""
        self.host = host
        """Which database: its redacted URL."""


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


class DatumConflict(AdapterError):
    """``put`` of a datum whose id exists with other content: D-gent data is
    append-only. The same content again is a no-op, never this error."""


class CausalParentMissing(AdapterError, LookupError):
    """``put`` of a datum whose ``causal_parent`` does not exist. Also a ``LookupError``."""
