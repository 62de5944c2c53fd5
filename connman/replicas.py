"""Read replicas: which replica pools serve read-only leases.

A :class:`Rotation` holds the replica pools of one manager and the set of those
usable now. Leases only read that set (:meth:`Rotation.pick`, no I/O); a periodic
check, run by the manager, changes it:

- a replica that is no longer in recovery (it was promoted, or the URL points at a
  primary) leaves the rotation: it is no longer fed by the primary, so its data
  diverges from the writes;
- a replica whose replay lags more than :attr:`ReplicaPolicy.max_lag` seconds leaves
  it, and comes back once it has caught up;
- a replica that does not answer within :attr:`ReplicaPolicy.check_timeout` leaves it;
- a replica URL with several hosts (``prefer-standby``, :func:`replica_url`) whose pool
  landed on the primary (no standby answered) leaves it too; its connections there are
  closed, so that it comes back on a standby once one answers.

How lag is measured (:class:`WalClock`). ``now() - pg_last_xact_replay_timestamp()``
is wrong on an idle primary (nothing to replay, so the timestamp ages although the
replica is current), and a byte distance (LSN diff) is not a time. Instead, each check
first records the primary's ``pg_current_wal_lsn()`` with the time it was read, then
reads each replica's ``pg_last_wal_replay_lsn()``. A replica's lag is the age of the
oldest recorded primary position it has not replayed yet (0 when it has replayed the
newest): how long the primary has had WAL that readers of this replica cannot see.
An idle primary writes no WAL, so its replicas stay at 0. The figure is a lower bound,
precise to one ``check_interval``; it costs one query on the primary and one per
replica per interval. While the primary cannot be read, lag is not updated (a primary
that is down writes nothing either), but promotion still is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connman.errors import ConfigError
from connman.logging import get_logger
from connman.stats import ReplicaStatus
from connman.urls import DatabaseURL

if TYPE_CHECKING:
    from connman.pool import Pool

__all__ = [
    "REPLICA_ENV",
    "REPLICA_TARGET",
    "ReplicaPolicy",
    "Rotation",
    "WalClock",
    "parse_replica_urls",
    "replica_url",
]

REPLICA_ENV = "KGENTS_DATABASE_REPLICA_URLS"
"""URLs of read replicas of the default database, separated by spaces or commas (see
:func:`parse_replica_urls`)."""

REPLICA_TARGET = "prefer-standby"
"""The ``target_session_attrs`` of a multi-host replica URL that names none."""

# A comma that starts the next URL: one followed by a scheme. The other commas are a
# multi-host URL's own (postgresql://u@h1:5432,h2:5432/db).
_NEXT_URL = re.compile(r",(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)

_CONSUMER = "connman.replicas"  # the consumer name of the checks' own leases

_PRIMARY_SQL = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL "
    "ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint END"
)
_REPLICA_SQL = (
    "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint"
)


def parse_replica_urls(raw: str) -> list[str]:
    """The URLs in a ``KGENTS_DATABASE_REPLICA_URLS`` value: separated by spaces, or by
    a comma followed by the next URL's scheme (a multi-host URL keeps its commas)."""
    parts = (part.strip(",") for word in raw.split() for part in _NEXT_URL.split(word))
    return [part for part in parts if part]


def replica_url(url: DatabaseURL) -> DatabaseURL:
    """The URL a replica pool connects with. A multi-host URL that names no
    ``target_session_attrs`` gets :data:`REPLICA_TARGET` (``prefer-standby``): the
    driver's default for several hosts, ``read-write``, finds the primary, which is
    what the default pool wants and a replica pool does not."""
    if not url.hosts or any(k.lower() == "target_session_attrs" for k, _ in url.query):
        return url
    query = tuple(sorted((*url.query, ("target_session_attrs", REPLICA_TARGET))))
    return dataclasses.replace(url, query=query)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplicaPolicy:
    """When a replica serves reads. Times are in seconds."""

    max_lag: float = 10.0
    """A replica further behind the primary than this leaves the rotation
    (``KGENTS_REPLICA_MAX_LAG``)."""
    check_interval: float = 1.0
    """How often the manager checks every replica (``KGENTS_REPLICA_CHECK_INTERVAL``);
    a replica that lags or was promoted stops serving within about this long."""
    check_timeout: float = 2.0
    """A replica that does not answer its check within this long leaves the rotation
    (``KGENTS_REPLICA_CHECK_TIMEOUT``)."""

    def __post_init__(self) -> None:
        for name in ("max_lag", "check_interval", "check_timeout"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={value!r} must be a finite number of seconds > 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ReplicaPolicy:
        """Defaults, then ``KGENTS_REPLICA_*`` variables, then ``overrides``. An
        unknown ``KGENTS_REPLICA_*`` variable is an error (a typo must not pass)."""
        env = os.environ if env is None else env
        known = {"KGENTS_REPLICA_" + f.name.upper() for f in dataclasses.fields(cls)}
        for key in env:
            if key.startswith("KGENTS_REPLICA_") and key not in known:
                names = ", ".join(sorted(known))
                raise ConfigError(f"{key} is not a replica setting. Known: {names}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            key = "KGENTS_REPLICA_" + field.name.upper()
            raw = env.get(key, "").strip()
            if raw and field.name not in overrides:
                try:
                    values[field.name] = float(raw)
                except ValueError:
                    raise ConfigError(f"{key}={raw!r} must be a number of seconds") from None
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:  # an unknown override keyword
            raise ConfigError(str(exc)) from None


class WalClock:
    """When the primary had which WAL position, to turn a replica's replay position
    into a lag in seconds (see the module's docstring)."""

    __slots__ = ("_samples", "_window")

    def __init__(self, window: float) -> None:
        # (time, lsn) ascending. Only the first time a position was seen is kept: that
        # is when the primary (at the latest) had it.
        self._samples: deque[tuple[float, int]] = deque()
        self._window = window

    def record(self, now: float, lsn: int) -> None:
        """The primary's ``pg_current_wal_lsn()`` as read at ``now``."""
        samples = self._samples
        if not samples or lsn > samples[-1][1]:
            samples.append((now, lsn))
        # Positions older than the window are not needed: a replica behind all of the
        # rest is already at least a window (> max_lag) late.
        while len(samples) > 1 and samples[1][0] < now - self._window:
            samples.popleft()

    def lag(self, now: float, replayed: int) -> float | None:
        """Seconds the primary has had WAL past ``replayed``; None before any record."""
        for at, lsn in self._samples:
            if lsn > replayed:
                return max(0.0, now - at)
        return None if not self._samples else 0.0


class _Replica:
    __slots__ = ("lag", "on_primary", "pool", "reason", "usable")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.usable = False
        self.on_primary = False  # several hosts, last found on a primary
        self.reason: str | None = "not checked yet"
        self.lag: float | None = None


class Rotation:
    """The replica pools of one manager and which of them serve reads now."""

    def __init__(self, primary: Pool, replicas: Sequence[Pool], policy: ReplicaPolicy) -> None:
        self.primary = primary
        self.policy = policy
        self._replicas = [_Replica(pool) for pool in replicas]
        self._usable: tuple[Pool, ...] = ()
        self._next = 0
        self._on_primary_logged = False
        self._clock = WalClock(window=2 * policy.max_lag + 2 * policy.check_interval)
        self._log = get_logger("connman.replicas")

    @property
    def pools(self) -> list[Pool]:
        """Every replica pool, in rotation or not."""
        return [r.pool for r in self._replicas]

    def pick(self) -> Pool:
        """The pool for the next read lease: the usable replicas in turn (round robin),
        the primary when none is usable. No I/O."""
        usable = self._usable
        if usable:
            self._next += 1
            return usable[self._next % len(usable)]
        if not self._on_primary_logged:
            # Once per outage, not per lease: the check logs when a replica is back.
            self._on_primary_logged = True
            self._log.warning(
                "replica_reads_on_primary",
                primary=self.primary.name,
                reasons={r.pool.name: r.reason for r in self._replicas},
            )
        return self.primary

    def status(self, pool: Pool) -> ReplicaStatus | None:
        """What the last check found for ``pool`` (None when it is no replica here)."""
        for replica in self._replicas:
            if replica.pool is pool:
                return ReplicaStatus(
                    in_rotation=replica.usable, reason=replica.reason, lag=replica.lag
                )
        return None

    async def run(self) -> None:
        """Check every ``check_interval`` until cancelled (the manager's task)."""
        while True:
            await asyncio.sleep(self.policy.check_interval)
            try:
                await self.check()
            except Exception as exc:  # a check that breaks must not end the checking
                self._log.warning("replica_check_failed", error=f"{type(exc).__name__}: {exc}")

    async def check(self) -> None:
        """One round: the primary's WAL position first, then every replica at once."""
        lsn = await self._query(self.primary, _PRIMARY_SQL)
        if isinstance(lsn, int):
            self._clock.record(_now(), lsn)
        await asyncio.gather(*(self._check(replica) for replica in self._replicas))

    async def _check(self, replica: _Replica) -> None:
        # Several hosts (prefer-standby, see replica_url): while no standby answers, a
        # connect lands on the primary. The check closes each connection it finds
        # there, so that the next connect looks for a standby again; once one is found,
        # every connection opened meanwhile is replaced. Otherwise the pool would stay
        # on the primary, out of rotation, up to max_lifetime. One host has nowhere else
        # to go: its promoted server keeps the connections.
        several = bool(replica.pool.url.hosts)
        row = await self._query(replica.pool, _REPLICA_SQL, row=True, retire_on_primary=several)
        reason: str | None
        if isinstance(row, BaseException):
            reason, lag = f"unreachable ({type(row).__name__})", None
        elif not row[0]:
            reason, lag = "promoted (not in recovery)", None
            if several:
                reason = "on a primary (not in recovery: no standby among its hosts answered)"
                replica.on_primary = True
        else:
            if replica.on_primary:
                replica.on_primary = False
                replica.pool.expire_connections()
            lag = self._clock.lag(_now(), int(row[1] or 0))
            over = lag is not None and lag > self.policy.max_lag
            reason = f"lagging {lag:.1f}s > max_lag {self.policy.max_lag}s" if over else None
        usable = reason is None
        if usable != replica.usable:
            emit = self._log.info if usable else self._log.warning
            emit(
                "replica_in_rotation" if usable else "replica_out_of_rotation",
                pool=replica.pool.name,
                reason=reason,
                lag_seconds=None if lag is None else round(lag, 3),
            )
        replica.usable, replica.reason, replica.lag = usable, reason, lag
        # In the same step as the replica's own status: what stats() reports and what
        # pick() does never disagree, not even for one loop iteration.
        rotation = tuple(r.pool for r in self._replicas if r.usable)
        if rotation and not self._usable:
            self._on_primary_logged = False  # the next outage is logged again
        self._usable = rotation

    async def _query(
        self,
        pool: Pool,
        sql: str,
        *,
        row: bool = False,
        retire_on_primary: bool = False,
    ) -> Any:
        """``sql``'s first value (``row``: first row) on ``pool``, or the exception.
        ``retire_on_primary``: when that value says the server is not in recovery, the
        connection is closed on its release instead of going back to the pool."""
        timeout = self.policy.check_timeout
        try:
            pooled = await pool.acquire(_CONSUMER, timeout)
        except Exception as exc:
            return exc
        failed = True
        try:
            conn = pooled.conn.raw
            async with asyncio.timeout(timeout):
                result = await (conn.fetchrow(sql) if row else conn.fetchval(sql))
            failed = False
            if retire_on_primary and not result[0]:
                pool.retire(pooled)
            return result
        except Exception as exc:
            return exc
        finally:
            # A query cut by the timeout leaves the connection mid-protocol: the pool
            # cleans or closes it (failed=True), never lends it as is.
            await pool.release(pooled, failed=failed)


def _now() -> float:
    return asyncio.get_running_loop().time()
