"""Why a connect failed: the one place that turns a driver's exception into an
:class:`~connman.errors.UnavailableReason` and a hint.

The verdict comes from the exception's type and, for a server's refusal, its SQLSTATE
(``exc.sqlstate``): never from its text, which differs between drivers, versions and
server locales. Only :attr:`~connman.errors.UnavailableReason.UNREACHABLE` (nothing
answered) lets a manager degrade; a server that answered and refused us is an error
however it refused. :attr:`Diagnosis.permanent` says whether retrying can help: the
pool fails its waiters at once when it cannot.

No driver library is imported here: asyncpg's exception classes are looked up only if
asyncpg is already loaded (an exception of asyncpg's cannot exist otherwise).
"""

from __future__ import annotations

import errno
import socket
import ssl
import sys
from dataclasses import dataclass

from connman import tls
from connman.errors import UnavailableReason
from connman.urls import DatabaseURL

__all__ = ["Diagnosis", "HostsFailed", "diagnose", "host_outcome"]

R = UnavailableReason

# Socket-level errnos that mean "no route to anything that could answer".
_UNREACHABLE_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EADDRNOTAVAIL,
        errno.ETIMEDOUT,
    }
)
# Primary result codes of a SQLite database that is busy (SQLITE_BUSY, SQLITE_LOCKED):
# the only transient SQLite connect errors.
_SQLITE_TRANSIENT = frozenset({5, 6})
# SQLSTATEs of a server that answered and refused (class 28: invalid authorization).
_SQLSTATE_REASONS = {
    "28P01": R.AUTHENTICATION,  # invalid_password
    "28000": R.AUTHENTICATION,  # invalid_authorization_specification (pg_hba, no role)
    "3D000": R.DATABASE_MISSING,  # invalid_catalog_name
    "42501": R.AUTHORIZATION,  # insufficient_privilege (no CONNECT on the database)
    "53300": R.TOO_MANY_CLIENTS,  # too_many_connections
    "57P03": R.SERVER_NOT_READY,  # cannot_connect_now
}
_TLS_MODES = frozenset({"require", "verify-ca", "verify-full"})


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """The verdict on one failed connect."""

    reason: UnavailableReason
    hint: str
    host: str | None
    """``host:port`` (or the SQLite file); never a password."""
    permanent: bool = False
    """Retrying will not help (wrong password, no such database, a certificate that
    does not verify, a SQLite file that cannot be opened): the pool fails its waiters
    at once instead of at their deadlines (and still retries in the background, in
    case someone fixes it)."""


class HostsFailed(Exception):
    """No host of a multi-host URL gave a usable connection. ``outcomes`` holds, in
    the URL's order, each host (``host:port``) and what it did (``refused``,
    ``read-only``, ``timed out``, or an :class:`UnavailableReason` value); the message
    is those, e.g. ``127.0.0.1:5601 refused; 127.0.0.1:5602 read-only``."""

    def __init__(self, outcomes: list[tuple[str, str]], reasons: list[UnavailableReason]) -> None:
        self.outcomes = tuple(outcomes)
        self.reasons = tuple(reasons)
        super().__init__("; ".join(f"{host} {what}" for host, what in outcomes))


def host_outcome(exc: BaseException, url: DatabaseURL) -> tuple[str, UnavailableReason]:
    """What one host of a multi-host URL did (``url`` names that host alone): a short
    word for :class:`HostsFailed`'s message, and the reason behind it."""
    reason = _postgres_reason(exc, url)
    if reason is R.READ_ONLY:
        return "read-only", reason
    if isinstance(exc, ConnectionRefusedError):
        return "refused", reason
    if isinstance(exc, TimeoutError):
        return "timed out", reason
    return reason.value.replace("_", " "), reason


def diagnose(exc: BaseException, url: DatabaseURL) -> Diagnosis:
    """Classify ``exc``, raised while connecting to ``url``."""
    if url.dialect == "sqlite":
        return Diagnosis(R.SQLITE_FILE, _sqlite_hint(url), url.database, _sqlite_permanent(exc))
    if isinstance(exc, HostsFailed):
        return _hosts_failed(exc, url)
    host = _where(url)
    reason = _postgres_reason(exc, url)
    if reason is R.TLS and tls.is_verification_failure(exc):
        # The certificate itself was refused: say which check failed.
        return Diagnosis(reason, tls.verification_hint(exc), host, permanent=True)
    return Diagnosis(
        reason,
        _HINTS[reason].format(
            where=host, user=url.user or "the user", database=url.database or "the database"
        ),
        host,
        permanent=reason is R.AUTHENTICATION or reason is R.DATABASE_MISSING,
    )


def _sqlite_permanent(exc: BaseException) -> bool:
    """A file that cannot be opened (missing directory, permissions, not a database)
    stays that way; a busy or locked database is transient. Decided by SQLite's
    primary result code (the low byte of the extended one), not the message."""
    if isinstance(exc, OSError):
        return True
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return not (isinstance(code, int) and code & 0xFF in _SQLITE_TRANSIENT)


def _hosts_failed(exc: HostsFailed, url: DatabaseURL) -> Diagnosis:
    """Every host failed: unreachable only if nothing answered (then a manager may
    degrade); read-only if the others were unreachable; else the first refusal."""
    answered = [r for r in exc.reasons if r is not R.UNREACHABLE]
    reason = answered[0] if answered else R.UNREACHABLE
    if R.READ_ONLY in answered and all(r is R.READ_ONLY for r in answered):
        reason = R.READ_ONLY
    where = f"{url.host} ({exc})"
    hint = _HINTS[reason].format(
        where=where, user=url.user or "the user", database=url.database or "the database"
    )
    return Diagnosis(reason, hint, url.host)


def _postgres_reason(exc: BaseException, url: DatabaseURL) -> UnavailableReason:
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        return _SQLSTATE_REASONS.get(sqlstate, R.REFUSED)
    # ssl errors are OSErrors (and a verification error a ValueError): test them first.
    if isinstance(exc, ssl.SSLError):
        return R.TLS
    if isinstance(exc, TimeoutError | socket.gaierror | ConnectionRefusedError):
        return R.UNREACHABLE
    if isinstance(exc, FileNotFoundError):
        # A unix socket that does not exist is a server not running; on TCP the only
        # file a connect opens is a certificate named in the URL (sslrootcert...).
        return R.UNREACHABLE if _on_socket(url) else R.CONFIGURATION
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None and isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        # Answered, but a standby (or default_transaction_read_only=on) where
        # target_session_attrs asks for a writable server.
        return R.READ_ONLY
    if asyncpg is not None and isinstance(exc, asyncpg.InterfaceError):
        return R.CONFIGURATION  # ClientConfigurationError and kin: bad parameters
    if type(exc) is ConnectionError and _tls_required(url):
        # asyncpg's "rejected SSL upgrade" / "error response during SSL exchange":
        # the server answered the TLS request with no (or an error).
        return R.TLS
    if isinstance(exc, OSError):
        if exc.errno in _UNREACHABLE_ERRNOS:
            return R.UNREACHABLE
        if type(exc) is OSError and exc.errno is None:
            # asyncio's create_connection raises a plain OSError without errno when a
            # name resolves to several addresses (localhost: ::1 and 127.0.0.1) and
            # every socket connect failed: socket-level failures only.
            return R.UNREACHABLE
        return R.REFUSED
    if isinstance(exc, ValueError):
        return R.CONFIGURATION
    return R.REFUSED


def _where(url: DatabaseURL) -> str:
    if url.host is None:
        return f"the default host (unix socket or localhost), port {url.port}"
    if url.host.startswith("/") or "," in url.host or url.port is None:
        return url.host
    return f"[{url.host}]:{url.port}" if ":" in url.host else f"{url.host}:{url.port}"


def _on_socket(url: DatabaseURL) -> bool:
    return url.host is None or url.host.startswith("/")


def _tls_required(url: DatabaseURL) -> bool:
    return any(k.lower() == "sslmode" and v.lower() in _TLS_MODES for k, v in url.query)


def _sqlite_hint(url: DatabaseURL) -> str:
    return (
        f"Check that the SQLite file {url.database} is a database, and that its directory "
        "exists (or can be created) and is writable by this user; fix the sqlite:/// path "
        "in KGENTS_DATABASE_URL if it is mistyped"
    )


_HINTS = {
    R.UNREACHABLE: (
        "Nothing answers at {where}: start the server (for the docker-compose database: "
        "docker compose up -d), or fix the host and port"
    ),
    R.AUTHENTICATION: (
        "The server at {where} rejected {user}: fix the user or password in the URL (or "
        "the passfile, or the credential provider), or the server's pg_hba.conf"
    ),
    R.AUTHORIZATION: (
        "{user} may not connect to {database}: GRANT CONNECT ON DATABASE to it, or use another user"
    ),
    R.DATABASE_MISSING: (
        "The server at {where} has no database {database}: create it (createdb) or fix "
        "the database name in the URL"
    ),
    R.TLS: (
        "The TLS handshake with {where} failed: check sslmode, that sslrootcert names the "
        "CA that signed the server's certificate, and that the host name matches it"
    ),
    R.TOO_MANY_CLIENTS: (
        "The server at {where} is at max_connections: lower KGENTS_POOL_MAX_SIZE of the "
        "processes sharing it, put PgBouncer in front, or raise max_connections (a larger "
        "max_size makes it worse)"
    ),
    R.SERVER_NOT_READY: (
        "The server at {where} is starting up, shutting down or in recovery: retry when it is up"
    ),
    R.READ_ONLY: (
        "No host of {where} accepts writes: promote a standby (pg_ctl promote, or SELECT "
        "pg_promote()) and the pool moves to it within about a second; or set "
        "target_session_attrs=any in the URL if read-only connections will do"
    ),
    R.CONFIGURATION: (
        "The connection settings for {where} are not usable: check the URL's query "
        "parameters and that every file they name exists"
    ),
    R.REFUSED: "The server at {where} refused the connection: see its log for the cause",
}
