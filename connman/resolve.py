"""The storage protocol: which database kgents uses, decided once.

Resolution priority (first match wins; an empty or blank variable counts as unset):

1. ``KGENTS_DATABASE_URL`` (canonical)
2. ``KGENTS_POSTGRES_URL`` (legacy: deprecated, converted to ``postgresql+asyncpg://``)
3. ``$XDG_DATA_HOME/kgents/membrane.db`` (only when XDG_DATA_HOME is absolute)
4. ``~/.local/share/kgents/membrane.db``

Read replicas of a PostgreSQL primary: ``KGENTS_DATABASE_REPLICA_URLS`` (separated by
spaces, or by commas before the next URL's scheme), in :attr:`Storage.replica_urls`.

Tiers: SQLite is portable; Postgres on loopback or a unix socket is unified; any other
Postgres is production; ``KGENTS_STORAGE_TIER`` overrides. When nothing answers for the
chosen Postgres at start-up (refused, not resolved, timeout; a server that refuses us is
an error instead) the manager degrades Production -> Unified -> Portable along
:attr:`Storage.fallbacks`, unless ``KGENTS_STORAGE_STRICT`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote

from connman.errors import ConfigError
from connman.replicas import REPLICA_ENV, parse_replica_urls, replica_url
from connman.tls import check_tls
from connman.urls import DatabaseURL, parse_url

__all__ = [
    "DEFAULT_UNIFIED_URL",
    "DgentBackend",
    "Storage",
    "Tier",
    "portable_url",
    "resolve_storage",
    "tier_of",
]

DEFAULT_UNIFIED_URL = "postgresql+asyncpg://kgents:kgents@localhost:5432/kgents"
"""The docker-compose Postgres of the protocol (``docker compose up -d``)."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Tier(StrEnum):
    """Storage tiers of the protocol, from the laptop to the cloud."""

    PORTABLE = "portable"
    UNIFIED = "unified"
    PRODUCTION = "production"


class DgentBackend(StrEnum):
    """Values of the legacy ``KGENTS_DGENT_BACKEND`` that connman honours.

    - ``POSTGRES``: D-gent must use Postgres; resolving fails if storage is not Postgres.
    - ``SQLITE``: D-gent uses the portable SQLite file even when Postgres is configured.
    - ``MEMORY``: D-gent uses an in-process SQLite ``:memory:`` database (nothing kept).

    ``JSONL`` (a file backend of old kgents) is not a database; connman refuses it with
    a message rather than silently storing D-gent data somewhere else.
    """

    POSTGRES = "POSTGRES"
    SQLITE = "SQLITE"
    MEMORY = "MEMORY"


@dataclass(frozen=True, slots=True)
class Storage:
    """The outcome of :func:`resolve_storage`. Its ``str``/``repr`` never show a password."""

    url: str = field(repr=False)
    """Normalized, driver-qualified URL, password included: pass it on, never print it."""
    tier: Tier
    source: str
    """``KGENTS_DATABASE_URL``, ``KGENTS_POSTGRES_URL``, ``XDG_DATA_HOME`` or ``default``
    (fallbacks: ``KGENTS_UNIFIED_URL`` or ``unified default``)."""
    warnings: list[str] = field(default_factory=list)
    strict: bool = False
    """True when ``KGENTS_STORAGE_STRICT`` forbids degradation."""
    fallbacks: tuple[Storage, ...] = field(default=(), repr=False)
    """Where to degrade to, in order, if this storage cannot be reached at start-up."""
    dgent_url: str = field(default="", repr=False)
    """The URL the D-gent track uses (differs from ``url`` only per KGENTS_DGENT_BACKEND)."""
    replica_urls: tuple[str, ...] = field(default=(), repr=False)
    """Normalized URLs of read replicas of ``url`` (``KGENTS_DATABASE_REPLICA_URLS``),
    passwords included, as the replica pools connect (:func:`connman.replicas.replica_url`:
    a multi-host URL gets ``target_session_attrs=prefer-standby`` unless it names one);
    read-only leases go there (see :mod:`connman.replicas`)."""

    @property
    def database_url(self) -> DatabaseURL:
        """``url`` parsed."""
        return parse_url(self.url, source=self.source)

    @property
    def dialect(self) -> str:
        """``postgresql`` or ``sqlite``."""
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"

    @property
    def redacted_url(self) -> str:
        """``url`` with its password replaced by ``***``."""
        return self.database_url.redacted()

    def __str__(self) -> str:
        return f"{self.tier.value} storage {self.redacted_url} (from {self.source})"

    def __repr__(self) -> str:
        return (
            f"Storage(url={self.redacted_url!r}, tier={self.tier.value!r}, "
            f"source={self.source!r}, warnings={self.warnings!r}, strict={self.strict!r})"
        )


def resolve_storage(env: Mapping[str, str] | None = None) -> Storage:
    """Resolve kgents storage from the environment by the documented protocol.

    Pure apart from reading ``env`` (default ``os.environ``): it neither connects nor
    creates files; the SQLite driver creates the file's directory (mode 0700) when the
    pool opens.

    Raises:
        ConfigError: a malformed or unsupported URL (naming the variable, its redacted
            value and what is accepted), a bad ``KGENTS_STORAGE_TIER`` /
            ``KGENTS_STORAGE_STRICT`` / ``KGENTS_DGENT_BACKEND``.
    """
    env = os.environ if env is None else env
    warnings: list[str] = []
    canonical = _get(env, "KGENTS_DATABASE_URL")
    legacy = _get(env, "KGENTS_POSTGRES_URL")
    if canonical is not None:
        url = parse_url(canonical, source="KGENTS_DATABASE_URL", home=_get(env, "HOME"))
        source = "KGENTS_DATABASE_URL"
        if legacy is not None:
            warnings.append(
                "KGENTS_POSTGRES_URL is set but ignored: KGENTS_DATABASE_URL takes priority. "
                "Unset KGENTS_POSTGRES_URL (it is deprecated)."
            )
    elif legacy is not None:
        url = parse_url(legacy, source="KGENTS_POSTGRES_URL")
        source = "KGENTS_POSTGRES_URL"
        if url.dialect != "postgresql":
            raise ConfigError(
                f"KGENTS_POSTGRES_URL={url.redacted()!r} is not a PostgreSQL URL. "
                "Put SQLite URLs in KGENTS_DATABASE_URL."
            )
        warnings.append(
            "KGENTS_POSTGRES_URL is deprecated: set "
            f"KGENTS_DATABASE_URL={url.with_placeholder()} instead (same database, canonical "
            "form; put the password where <password> stands)."
        )
    else:
        url, source, xdg_warning = _portable(env)
        if xdg_warning:
            warnings.append(xdg_warning)

    tls_warning = check_tls(url, env)  # raises when KGENTS_REQUIRE_TLS forbids the URL
    if tls_warning is not None:
        warnings.append(tls_warning)
    tier = _tier_override(env) or tier_of(url)
    strict = _flag(env, "KGENTS_STORAGE_STRICT")
    dgent_url = _dgent_url(env, url, source)
    replicas = _replicas(env, url, warnings)
    return Storage(
        url=url.key,
        tier=tier,
        source=source,
        warnings=warnings,
        strict=strict,
        fallbacks=_fallbacks(env, url, tier),
        dgent_url=dgent_url,
        replica_urls=replicas,
    )


def tier_of(url: DatabaseURL) -> Tier:
    """The tier a URL belongs to by where it points (no override applied)."""
    if url.dialect == "sqlite":
        return Tier.PORTABLE
    return Tier.UNIFIED if url.is_local else Tier.PRODUCTION


def portable_url(env: Mapping[str, str] | None = None) -> DatabaseURL:
    """The portable SQLite file: XDG_DATA_HOME (if absolute) or ~/.local/share."""
    return _portable(os.environ if env is None else env)[0]


# -- private -----------------------------------------------------------------------


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _portable(env: Mapping[str, str]) -> tuple[DatabaseURL, str, str | None]:
    xdg = _get(env, "XDG_DATA_HOME")
    warning = None
    if xdg is not None:
        if os.path.isabs(xdg):
            path = os.path.join(xdg, "kgents", "membrane.db")
            url = parse_url("sqlite:///" + quote(path), source="XDG_DATA_HOME")
            return url, "XDG_DATA_HOME", None
        # The XDG spec: "If an implementation encounters a relative path in any of
        # these variables it should consider the path invalid and ignore it."
        warning = f"XDG_DATA_HOME={xdg!r} is relative and ignored (the XDG spec wants absolute)"
    home = _get(env, "HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".local", "share", "kgents", "membrane.db")
    return parse_url("sqlite:///" + quote(path), source="default"), "default", warning


def _tier_override(env: Mapping[str, str]) -> Tier | None:
    raw = _get(env, "KGENTS_STORAGE_TIER")
    if raw is None:
        return None
    try:
        return Tier(raw.lower())
    except ValueError:
        accepted = ", ".join(t.value for t in Tier)
        raise ConfigError(
            f"KGENTS_STORAGE_TIER={raw!r} is not a tier. Accepted: {accepted}"
        ) from None


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _get(env, name)
    if raw is None:
        return False
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean. Accepted: 1/0, true/false, yes/no, on/off")


def _dgent_url(env: Mapping[str, str], url: DatabaseURL, source: str) -> str:
    raw = _get(env, "KGENTS_DGENT_BACKEND")
    if raw is None:
        return url.key
    if raw.upper() == "JSONL":
        raise ConfigError(
            "KGENTS_DGENT_BACKEND=JSONL is a file backend connman does not serve. "
            "Unset it to keep D-gent data with the rest of storage, or choose "
            "SQLITE, POSTGRES or MEMORY."
        )
    try:
        backend = DgentBackend(raw.upper())
    except ValueError:
        raise ConfigError(
            f"KGENTS_DGENT_BACKEND={raw!r} is not a backend. Accepted: SQLITE, POSTGRES, MEMORY"
        ) from None
    if backend is DgentBackend.POSTGRES:
        if url.dialect != "postgresql":
            raise ConfigError(
                "KGENTS_DGENT_BACKEND=POSTGRES but storage resolved to SQLite "
                f"({url.redacted()}, from {source}). Set KGENTS_DATABASE_URL to a "
                "postgresql+asyncpg:// URL, or unset KGENTS_DGENT_BACKEND."
            )
        return url.key
    if backend is DgentBackend.SQLITE:
        return url.key if url.dialect == "sqlite" else _portable(env)[0].key
    return parse_url("sqlite:///:memory:").key


def _replicas(env: Mapping[str, str], url: DatabaseURL, warnings: list[str]) -> tuple[str, ...]:
    """``KGENTS_DATABASE_REPLICA_URLS``, parsed and checked like the primary's URL."""
    raw = _get(env, REPLICA_ENV)
    if raw is None:
        return ()
    if url.dialect != "postgresql":
        raise ConfigError(
            f"{REPLICA_ENV} is set but storage resolved to SQLite ({url.redacted()}): read "
            "replicas need a PostgreSQL primary. Unset it, or set KGENTS_DATABASE_URL."
        )
    keys: list[str] = []
    for text in parse_replica_urls(raw):
        replica = replica_url(parse_url(text, source=REPLICA_ENV, home=_get(env, "HOME")))
        if replica.dialect != "postgresql":
            raise ConfigError(
                f"{REPLICA_ENV} holds {replica.redacted()!r}, which is not a PostgreSQL URL"
            )
        if replica.key == url.key:
            raise ConfigError(
                f"{REPLICA_ENV} names the primary itself ({replica.redacted()}): list standbys"
            )
        tls_warning = check_tls(replica, env)
        if tls_warning is not None:
            warnings.append(tls_warning)
        if replica.key not in keys:
            keys.append(replica.key)
    return tuple(keys)


def _fallbacks(env: Mapping[str, str], url: DatabaseURL, tier: Tier) -> tuple[Storage, ...]:
    """Where to degrade to. Only PostgreSQL storage degrades (a SQLite file does not
    become unreachable); production goes to unified first, then to the portable file.
    A fallback that would break KGENTS_DGENT_BACKEND (POSTGRES) is left out."""
    if url.dialect != "postgresql":
        return ()
    candidates: list[tuple[DatabaseURL, Tier, str]] = []
    if tier is Tier.PRODUCTION:
        raw = _get(env, "KGENTS_UNIFIED_URL")
        unified = parse_url(
            raw or DEFAULT_UNIFIED_URL, source="KGENTS_UNIFIED_URL", home=_get(env, "HOME")
        )
        if unified.dialect != "postgresql":
            raise ConfigError(
                f"KGENTS_UNIFIED_URL={unified.redacted()!r} is not a PostgreSQL URL: the "
                "unified tier is the team's (docker compose) PostgreSQL."
            )
        candidates.append(
            (unified, Tier.UNIFIED, "KGENTS_UNIFIED_URL" if raw else "unified default")
        )
    portable, source, _ = _portable(env)
    candidates.append((portable, Tier.PORTABLE, source))

    chain: list[Storage] = []
    seen = {url.key}
    for candidate, candidate_tier, candidate_source in candidates:
        if candidate.key in seen:
            continue
        seen.add(candidate.key)
        try:
            dgent_url = _dgent_url(env, candidate, candidate_source)
        except ConfigError:
            continue
        chain.append(
            Storage(
                url=candidate.key, tier=candidate_tier, source=candidate_source, dgent_url=dgent_url
            )
        )
    return tuple(chain)
