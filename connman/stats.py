"""What a pool reports: a snapshot (:class:`PoolStats`), named counters, and the
observer interface through which metrics see the hot path.

Stats are read, never pushed: ``manager.stats()`` builds snapshots on demand, so the
lease path only bumps integers. Timings that need every sample (wait and use time
histograms) go through a :class:`PoolObserver`; the pool calls it only when one is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = [
    "ACQUIRED",
    "CANCELLED",
    "CONNECTIONS_CLOSED",
    "CONNECTIONS_LOST",
    "CONNECTIONS_OPENED",
    "CONNECT_ERRORS",
    "COUNTERS",
    "FULL_RESETS",
    "HEALTH_CHECKS",
    "HEALTH_CHECKS_FAILED",
    "LEAKS",
    "RESETS",
    "RETURNS_BAD",
    "TIMEOUTS",
    "UNAVAILABLE",
    "WAITED",
    "PoolObserver",
    "PoolStats",
    "ReplicaStatus",
    "pool_problem",
]

ACQUIRED: Final = "acquired"
"""Leases granted."""
WAITED: Final = "waited"
"""Leases that had to queue (no idle connection at once)."""
TIMEOUTS: Final = "timeouts"
"""Acquires that failed with AcquireTimeout."""
UNAVAILABLE: Final = "unavailable"
"""Acquires that failed with PoolUnavailable (database unreachable)."""
CANCELLED: Final = "cancelled"
"""Acquires abandoned by their caller (task cancelled while waiting)."""
CONNECTIONS_OPENED: Final = "connections_opened"
"""Physical connections opened."""
CONNECTIONS_CLOSED: Final = "connections_closed"
"""Physical connections that left the pool, for any reason (opened - closed = size)."""
CONNECTIONS_LOST: Final = "connections_lost"
"""Of those closed, the ones found dead (server restart, terminated backend, ping)."""
CONNECT_ERRORS: Final = "connect_errors"
"""Failed connection attempts."""
RESETS: Final = "resets"
"""Releases that needed a round trip to clean the connection (rollback, RESET ALL)."""
FULL_RESETS: Final = "full_resets"
"""Of those, full resets (asked for by the lease, or LISTEN used)."""
RETURNS_BAD: Final = "returns_bad"
"""Returned connections that could not be made clean and were closed."""
HEALTH_CHECKS: Final = "health_checks"
"""Pings of connections idle longer than ``health_check_after``."""
HEALTH_CHECKS_FAILED: Final = "health_checks_failed"
"""Pings that failed (the connection was replaced within the same deadline)."""
LEAKS: Final = "leaks"
"""Leases held longer than ``leak_threshold``."""

COUNTERS: Final = (
    ACQUIRED,
    WAITED,
    TIMEOUTS,
    UNAVAILABLE,
    CANCELLED,
    CONNECTIONS_OPENED,
    CONNECTIONS_CLOSED,
    CONNECTIONS_LOST,
    CONNECT_ERRORS,
    RESETS,
    FULL_RESETS,
    RETURNS_BAD,
    HEALTH_CHECKS,
    HEALTH_CHECKS_FAILED,
    LEAKS,
)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """What the manager's last check found for a read replica."""

    in_rotation: bool
    """True when the replica serves read-only leases now."""
    reason: str | None
    """Why it does not (lagging, promoted, unreachable, not checked yet); None when it does."""
    lag: float | None
    """Seconds its replay is behind the primary, as last measured (None: unknown)."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one pool. ``url`` is redacted; nothing here holds a secret."""

    name: str
    """The pool's label (its redacted URL unless configured)."""
    url: str
    dialect: str
    size: int
    """Open connections: idle + in use."""
    idle: int
    in_use: int
    waiting: int
    min_size: int
    max_size: int
    connecting: int = 0
    degraded: bool = False
    requested_url: str | None = None
    """When degraded: the (redacted) URL that was wanted."""
    tier: str | None = None
    consumers: Mapping[str, int] = field(default_factory=dict)
    """Leases in use per consumer."""
    waiting_by_consumer: Mapping[str, int] = field(default_factory=dict)
    consumer_limits: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    last_error: str | None = None
    """The last connection error (redacted), if the last attempt failed."""
    closed: bool = False
    role: str = "primary"
    """``primary`` (the database writes go to) or ``replica`` (serves read leases)."""
    reads: int = 0
    """Read-only leases (``lease(readonly=True)``) this pool was chosen for."""
    replica: ReplicaStatus | None = None
    """For a replica: whether it serves reads now, and its lag."""
    hosts: Mapping[str, str] = field(default_factory=dict)
    """Multi-host URLs: each host's outcome at the last connect (``ok``, ``refused``,
    ``read-only``...), e.g. ``{"127.0.0.1:5601": "refused", "127.0.0.1:5602": "ok"}``."""

    def as_dict(self, *keys: str) -> dict[str, Any]:
        """The snapshot as plain data (mappings copied to dicts), for JSON reports:
        the fields named in ``keys``, or all of them. ``name`` is keyed ``pool``, the
        word every report and metric label uses for it."""
        out: dict[str, Any] = {}
        for key in keys or _DICT_KEYS:
            value = getattr(self, "name" if key == "pool" else key)
            out[key] = dict(value) if isinstance(value, Mapping) else value
        return out


_DICT_KEYS: Final = tuple("pool" if n == "name" else n for n in PoolStats.__dataclass_fields__)


def pool_problem(stats: PoolStats) -> str | None:
    """Why a pool cannot serve leases, or None when it can (what ``/healthz`` and
    ``connman_pool_up`` report)."""
    if stats.closed:
        return "closed"
    if stats.size == 0 and stats.last_error is not None:
        return f"unreachable: {stats.last_error}"
    return None


class PoolObserver(Protocol):
    """Receives the per-lease timings that counters cannot carry.

    Called on the lease hot path: implementations must not block or await.
    """

    def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
        """A lease was granted after ``wait`` seconds."""

    def lease_released(self, pool: str, consumer: str, used: float) -> None:
        """A lease ended after being held ``used`` seconds."""

    def acquire_failed(self, pool: str, consumer: str, reason: str) -> None:
        """An acquire failed: ``reason`` is ``timeout`` or ``unavailable``."""

    def connection_opened(self, pool: str, seconds: float) -> None:
        """A connection was opened in ``seconds``."""

    def connection_closed(self, pool: str, lost: bool) -> None:
        """A connection left the pool; ``lost`` when it was found dead."""

    def connect_failed(self, pool: str) -> None:
        """A connection attempt failed."""

    def leak_detected(self, pool: str, consumer: str) -> None:
        """A lease outlived ``leak_threshold``."""
