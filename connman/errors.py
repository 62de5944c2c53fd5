"""The one exception tree of connman.

Every error connman raises on purpose derives from :class:`ConnmanError`, so an
application can catch the whole family in one ``except``. Messages name the problem
and the fix; they never contain a password (URLs are redacted before they get here).
"""

from __future__ import annotations

__all__ = [
    "AcquireTimeout",
    "ConfigError",
    "ConnmanError",
    "LeaseError",
    "PoolClosed",
    "PoolUnavailable",
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
    """The database cannot be reached: connecting failed and no connection is usable."""


class LeaseError(ConnmanError):
    """A lease was misused, e.g. its connection touched after the lease ended."""
