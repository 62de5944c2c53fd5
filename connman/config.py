"""Pool configuration: one frozen dataclass, validated once, overridable from the env.

Every field can be set by an environment variable ``KGENTS_POOL_<FIELD>`` (upper case),
read in one place, :meth:`PoolConfig.from_env`. Bad values raise :class:`ConfigError`
naming the field, the value and what is accepted; connman never silently clamps.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from connman.errors import ConfigError

__all__ = ["ENV_PREFIX", "CredentialProvider", "PoolConfig", "parse_flag"]

ENV_PREFIX = "KGENTS_POOL_"

CredentialProvider: TypeAlias = Callable[[], str | Awaitable[str]]
"""A function (sync or async) returning the password or token of a new connection."""

_PGBOUNCER_MODES = ("auto", "transaction", "off")
# Fields that hold code, not values: they cannot come from the environment.
_CODE_FIELDS = frozenset({"credential_provider"})


@dataclass(frozen=True, kw_only=True, slots=True)
class PoolConfig:
    """How every pool of a :class:`~connman.ConnectionManager` behaves.

    Times are in seconds. ``None`` is accepted only where the field says so.
    """

    min_size: int = 1
    """Connections kept open even when idle (idle expiry never goes below this)."""
    max_size: int = 10
    """Hard ceiling of physical connections per database, connecting ones included."""
    acquire_timeout: float = 30.0
    """Default deadline of a lease; a waiter never waits longer (never unbounded)."""
    connect_timeout: float = 10.0
    """Deadline of one connection attempt (and of the start-up probe)."""
    max_lifetime: float = 3600.0
    """A connection is retired after this long, minus up to 5 % random jitter so a
    pool opened at once does not reconnect at once."""
    max_idle: float = 600.0
    """An idle connection above ``min_size`` is closed after this long unused."""
    leak_threshold: float | None = None
    """Log a lease held longer than this (with the stack that took it); None: off."""
    consumer_limits: Mapping[str, int] = field(default_factory=dict)
    """Most leases one consumer may hold at once, e.g. ``{"sqlalchemy": 6}``.
    Consumers not named are bounded by ``max_size`` only."""
    health_check_after: float = 0.5
    """A connection idle longer than this is pinged before it is leased (HikariCP's
    500 ms bypass window): fresh connections skip the round trip."""
    reset_timeout: float = 5.0
    """Deadline for cleaning a dirty connection on release; past it, it is closed."""
    close_timeout: float = 5.0
    """Deadline for closing one connection politely before it is terminated."""
    reconnect_initial_delay: float = 0.1
    """First wait after a failed connection attempt; doubles on each failure."""
    reconnect_max_delay: float = 5.0
    """Ceiling of the reconnect backoff."""
    application_name: str = "connman"
    """Postgres ``application_name`` of every connection (visible in pg_stat_activity)."""
    statement_cache_size: int = 100
    """asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in
    transaction mode."""
    command_timeout: float | None = None
    """asyncpg's default per-query timeout; None: no timeout."""
    sqlite_busy_timeout: float = 30.0
    """How long SQLite waits for a lock held by another connection before it fails."""
    max_connecting: int = 3
    """Connection attempts in flight at once per pool (psycopg_pool runs 3 workers): a
    burst of waiters against a full server does not become a burst of connects."""
    require_tls: bool = False
    """Refuse a PostgreSQL URL off this machine whose certificate is not verified
    (sslmode other than verify-ca/verify-full); ``KGENTS_REQUIRE_TLS=1`` does the same."""
    pgbouncer: Literal["auto", "transaction", "off"] = "auto"
    """A transaction-mode pooler in front of PostgreSQL? ``auto``: every new connection
    checks (one round trip) and keeps the statement cache off when one is there;
    ``transaction``: yes (statement_cache_size becomes 0, no check); ``off``: no, or a
    pooler that keeps prepared statements (session mode, PgBouncer >= 1.21 with
    max_prepared_statements)."""
    credential_provider: CredentialProvider | None = None
    """Called (sync or async) for the password of every new PostgreSQL connection,
    instead of the URL's; for passwords and tokens that rotate."""

    def __post_init__(self) -> None:
        # Freeze the mapping so a config shared by several pools cannot drift.
        limits = dict(self.consumer_limits)
        object.__setattr__(self, "consumer_limits", types.MappingProxyType(limits))
        self._validate()
        if self.pgbouncer == "transaction":
            # Named prepared statements die with the transaction behind such a pooler.
            object.__setattr__(self, "statement_cache_size", 0)

    # -- construction --------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> PoolConfig:
        """Defaults, then ``KGENTS_POOL_*`` variables, then ``overrides``.

        ``KGENTS_POOL_CONSUMER_LIMITS`` takes ``name=n,name=n``; ``KGENTS_POOL_LEAK_THRESHOLD``
        and ``KGENTS_POOL_COMMAND_TIMEOUT`` take ``none`` (or empty) to turn them off.
        An unknown ``KGENTS_POOL_*`` variable is an error: a typo must not pass silently.
        """
        env = os.environ if env is None else env
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in fields or name in _CODE_FIELDS:
                known = ", ".join(ENV_PREFIX + n.upper() for n in fields if n not in _CODE_FIELDS)
                raise ConfigError(f"{key} is not a pool setting. Known: {known}")
            # Blank counts as unset (compose files pass ${X:-}); an override wins
            # without its env value being parsed at all.
            if raw.strip() and name not in overrides:
                values[name] = _parse_env_value(key, name, raw.strip())
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:  # an unknown override keyword
            raise ConfigError(str(exc)) from None

    # -- validation ----------------------------------------------------------------

    def _validate(self) -> None:
        _int(self.min_size, "min_size", lowest=0)
        _int(self.max_size, "max_size", lowest=1)
        if self.min_size > self.max_size:
            raise ConfigError(
                f"min_size={self.min_size} is larger than max_size={self.max_size}: "
                "lower KGENTS_POOL_MIN_SIZE or raise KGENTS_POOL_MAX_SIZE"
            )
        for name in (
            "acquire_timeout",
            "connect_timeout",
            "max_lifetime",
            "max_idle",
            "reset_timeout",
            "close_timeout",
            "reconnect_initial_delay",
            "reconnect_max_delay",
            "sqlite_busy_timeout",
        ):
            _seconds(getattr(self, name), name)
        _seconds(self.health_check_after, "health_check_after", allow_zero=True)
        for name in ("leak_threshold", "command_timeout"):
            if getattr(self, name) is not None:
                _seconds(getattr(self, name), name)
        _int(self.statement_cache_size, "statement_cache_size", lowest=0)
        _int(self.max_connecting, "max_connecting", lowest=1)
        if not isinstance(self.require_tls, bool):
            raise ConfigError(f"require_tls={self.require_tls!r} must be True or False")
        if self.pgbouncer not in _PGBOUNCER_MODES:
            raise ConfigError(
                f"pgbouncer={self.pgbouncer!r} is not a mode. "
                f"Accepted: {', '.join(_PGBOUNCER_MODES)}"
            )
        if self.credential_provider is not None and not callable(self.credential_provider):
            raise ConfigError("credential_provider must be a function returning the password")
        if self.reconnect_max_delay < self.reconnect_initial_delay:
            raise ConfigError("reconnect_max_delay must be >= reconnect_initial_delay")
        if not isinstance(self.application_name, str):
            raise ConfigError("application_name must be a string")
        for consumer, limit in self.consumer_limits.items():
            if not isinstance(consumer, str) or not consumer:
                raise ConfigError(f"consumer_limits has a bad consumer name {consumer!r}")
            _int(limit, f"consumer_limits[{consumer!r}]", lowest=1)


def _int(value: object, name: str, *, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        raise ConfigError(f"{name}={value!r} must be an integer >= {lowest}")


def _seconds(value: object, name: str, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name}={value!r} must be a finite number of seconds {bound}")


def parse_flag(key: str, raw: str) -> bool:
    """An environment variable's boolean (``1/0, true/false, yes/no, on/off``; blank is
    False). Raises :class:`ConfigError` naming ``key`` for anything else."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key}={raw!r} is not a boolean. Accepted: 1/0, true/false, yes/no, on/off")


def _parse_env_value(key: str, name: str, raw: str) -> Any:
    if name == "consumer_limits":
        limits: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            consumer, eq, n = part.partition("=")
            try:
                limit = int(n) if eq else None
            except ValueError:
                limit = None
            if limit is None:
                raise ConfigError(f"{key}={raw!r}: expected name=n[,name=n...], e.g. sqlalchemy=6")
            limits[consumer.strip()] = limit
        return limits
    if name in ("application_name", "pgbouncer"):
        return raw.lower() if name == "pgbouncer" else raw
    if name == "require_tls":
        return parse_flag(key, raw)
    if name in ("leak_threshold", "command_timeout") and raw.lower() in ("", "none", "off"):
        return None
    if name in ("min_size", "max_size", "statement_cache_size", "max_connecting"):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} must be an integer") from None
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} must be a number of seconds") from None
