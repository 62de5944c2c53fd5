"""Database URLs: parse, normalize, key and redact. The only place that does.

Every spelling of one database (``postgres://u@h/db``, ``postgresql://u@h:5432/db``,
``postgresql+asyncpg://u@h/db``) normalizes to one string, which is the key of its pool.
A password never leaves this module in clear except through
:meth:`DatabaseURL.connect_dsn`, which only the asyncpg driver calls.

Parsing uses :func:`urllib.parse.urlsplit` rather than SQLAlchemy's ``make_url``:
importing SQLAlchemy costs about half a second, which every process that only wants a
raw asyncpg lease would pay before its first query.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode

from connman.errors import ConfigError

__all__ = [
    "ACCEPTED_SCHEMES",
    "DatabaseURL",
    "Dialect",
    "parse_url",
    "redact_text",
]

Dialect = Literal["postgresql", "sqlite"]

# Every scheme kgents code has used for these databases. The driver part is dropped:
# connman always talks to Postgres through asyncpg and to SQLite through aiosqlite.
_POSTGRES_SCHEMES = frozenset(
    {
        "postgres",
        "postgresql",
        "postgresql+asyncpg",
        "postgresql+psycopg",
        "postgresql+psycopg2",
        "postgresql+psycopg_async",
        "postgresql+pg8000",
    }
)
_SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"})
ACCEPTED_SCHEMES = (
    "postgresql+asyncpg://, postgresql://, postgres://, postgresql+psycopg:// "
    "(user:password@host:port/database) or sqlite+aiosqlite:///path/to/file.db, "
    "sqlite:///~/file.db, sqlite:///:memory:"
)

_DEFAULT_PORT = 5432
_MASK = "***"
_PLACEHOLDER = "<password>"
# Query parameters whose value is a secret, whatever the URL's scheme.
_SECRET_PARAMS = frozenset({"password", "sslpassword", "passfile_password"})

# Passwords seen in parsed URLs. redact_text() removes them from arbitrary text such
# as driver exception messages; short ones are left to the URL pattern below, since
# masking a two-letter password everywhere would mangle ordinary words.
_known_secrets: set[str] = set()
_MIN_SECRET_LEN = 4
# Userinfo of anything URL-shaped, parsed or not: the password is everything between
# the first ':' after the user part and the *last* '@' of the token (as the parser
# reads it, rpartition), so a raw '@', '/' or ':' in a password never half-leaks. The
# user part starts after a scheme and its slashes (``scheme://``, and the typos
# ``scheme:/``, ``scheme//``), or at the start of a token (``user:pw@host/db``).
_URL_PASSWORD = re.compile(
    r"(?P<head>(?:[a-zA-Z][\w+.-]*(?::/+|//+)[^:/@\s'\"]*:"
    # at a token's start, "word:" followed by '/' is a scheme, not a user
    r"|(?<![^\s'\"(<\[=,])(?:[^:/@\s'\"]+:(?!/)|[^a-zA-Z:/@\s'\"][^:/@\s'\"]*:|:)))"
    r"(?P<pw>\S*)(?P<tail>@)"
)
# "word:/x@host" with no ':' in x: a user:password whose password starts with '/' as
# much as a scheme with one slash (real schemes have two): mask x.
_URL_ONE_SLASH = re.compile(
    r"(?P<head>(?<![^\s'\"(<\[=,])[a-zA-Z][\w+.-]*:/)(?!/)(?P<pw>[^:@\s]+)(?P<tail>@)"
)
# The same with spaces in the password (a raw, unescaped one), after a scheme only: up
# to the next '@' on the line, not across a '/', and not where a mask is already.
_URL_PASSWORD_SPACED = re.compile(
    r"(?P<head>[a-zA-Z][\w+.-]*(?::/+|//+)[^:/@\s]*:)(?!\*\*\*@)(?P<pw>[^@/\n]*)(?P<tail>@)"
)
# Where the user part of one URL-shaped *value* starts: after its scheme and slashes.
_VALUE_SCHEME = re.compile(r"\s*[a-zA-Z][\w+.-]*(?::/+|//+)")
# password=VALUE: in URL query strings up to '&' or whitespace (quotes are no syntax
# there); in libpq keyword strings quoted values honour backslash escapes, unquoted
# ones end at whitespace.
_QUOTED = r"'(?:[^'\\]|\\.)*'?|\"(?:[^\"\\]|\\.)*\"?"
_PARAM_PASSWORD_URL = re.compile(
    r"(?P<head>\b(?:password|sslpassword)\s*=\s*)(?P<pw>[^&\s]+)", re.I
)
_PARAM_PASSWORD_KEYWORDS = re.compile(
    # a quoted value only when the quote ends the word: password=""x is not one
    r"(?P<head>\b(?:password|sslpassword)\s*=\s*)(?P<pw>(?:" + _QUOTED + r")(?=\s|$)|\S+)",
    re.I,
)
# In one URL value, a password parameter runs to the next '&' (or '#'), spaces included.
_PARAM_PASSWORD_VALUE = re.compile(
    r"(?P<head>\b(?:password|sslpassword)\s*=\s*)(?P<pw>[^&#]*)", re.I
)


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    """A parsed, normalized database URL.

    Equality and hashing use the normalized form (password included), so two spellings
    of the same database compare equal. ``str()`` and ``repr()`` are redacted.
    """

    dialect: Dialect
    host: str | None = None
    """Postgres host (lowercase), a comma-separated host list, or a unix socket
    directory; ``None`` lets asyncpg apply libpq's defaults (PGHOST, then sockets)."""
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    """Postgres database name, or the absolute SQLite file path (``:memory:``)."""
    query: tuple[tuple[str, str], ...] = ()

    # -- derived views -------------------------------------------------------------

    @property
    def is_memory(self) -> bool:
        """True for an in-memory SQLite database."""
        return self.dialect == "sqlite" and self.database == ":memory:"

    @property
    def is_local(self) -> bool:
        """True for SQLite, and for Postgres on loopback or a unix socket."""
        if self.dialect == "sqlite":
            return True
        if self.host is None:
            return True  # libpq's default: a unix socket, else localhost
        return all(_is_local_host(h) for h in self.host.split(",") if h)

    @property
    def hosts(self) -> tuple[tuple[str, int], ...]:
        """Each ``(host, port)`` of a multi-host URL (``h1:p1,h2:p2``), in order; a
        host without its own port gets the URL's, else 5432. Empty for one host, a
        unix socket, or SQLite."""
        if self.dialect != "postgresql" or self.host is None or "," not in self.host:
            return ()
        pairs: list[tuple[str, int]] = []
        for item in self.host.split(","):
            host, port = item, self.port or _DEFAULT_PORT
            if item.startswith("["):  # [::1]:5432
                host, _, after = item[1:].partition("]")
                port = int(after[1:]) if after.startswith(":") else port
            elif item.count(":") == 1:
                host, _, port_s = item.partition(":")
                port = int(port_s)
            pairs.append((host, port))
        return tuple(pairs)

    @property
    def key(self) -> str:
        """The normalized URL with its password: the identity of a pool. Never log it."""
        return self._render(hide_password=False)

    def redacted(self) -> str:
        """The normalized URL with the password replaced by ``***``."""
        return self._render(hide_password=True)

    def with_placeholder(self) -> str:
        """The normalized URL with ``<password>`` where the password goes: a form to
        paste into a configuration and fill in (``***`` would be taken literally)."""
        return self._render(hide_password=True, mask=_PLACEHOLDER)

    def connect_dsn(self) -> str:
        """A libpq-style DSN (``postgresql://``) for asyncpg, password included."""
        if self.dialect != "postgresql":
            raise ConfigError(f"{self.redacted()} is not a PostgreSQL URL")
        return "postgresql" + self._render(hide_password=False)[len("postgresql+asyncpg") :]

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"DatabaseURL({self.redacted()!r})"

    def _render(self, *, hide_password: bool, mask: str = _MASK) -> str:
        query = [
            (k, mask if hide_password and k.lower() in _SECRET_PARAMS else v) for k, v in self.query
        ]
        socket = self.host is not None and self.host.startswith("/")
        if socket:
            # A unix socket directory cannot sit in the netloc: keep it (and the port,
            # which names the socket file) as libpq query parameters.
            query.append(("host", self.host or ""))
            if self.port is not None:
                query.append(("port", str(self.port)))
            query.sort()
        safe = "/:,*<>" if hide_password else "/:,*"  # <> for the <password> placeholder
        qs = ("?" + urlencode(query, safe=safe)) if query else ""
        if self.dialect == "sqlite":
            # '%' and '?' would be read back as an escape and a query: escape them so
            # that the key parses back to the same file.
            path = (self.database or "").replace("%", "%25").replace("?", "%3F")
            return f"sqlite+aiosqlite:///{path}{qs}"
        auth = ""
        if self.user is not None or self.password is not None:
            auth = quote(self.user, safe="") if self.user is not None else ""
            if self.password is not None:
                auth += ":" + (mask if hide_password else quote(self.password, safe=""))
            auth += "@"
        host = ""
        if self.host is not None and not socket:
            host = f"[{self.host}]" if ":" in self.host and "," not in self.host else self.host
            if self.port is not None:
                host += f":{self.port}"
        db = quote(self.database, safe="") if self.database else ""
        return f"postgresql+asyncpg://{auth}{host}/{db}{qs}"


def parse_url(raw: str, *, source: str = "url", home: str | None = None) -> DatabaseURL:
    """Parse and normalize a database URL.

    ``source`` names where the URL came from (an environment variable, say) so that the
    error for a bad URL tells the user what to fix. Postgres URLs get the default port;
    SQLite paths get ``~`` expanded (to ``home`` when given, else the process's home)
    and become absolute.

    Raises:
        ConfigError: unsupported scheme or malformed URL; the message shows the URL
            with its password redacted and lists what is accepted.
    """
    text = raw.strip()
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise _bad(source, text, "it is not a URL (expected scheme://...)")
    if scheme in _POSTGRES_SCHEMES:
        url = _parse_postgres(rest, source, text)
    elif scheme in _SQLITE_SCHEMES:
        url = _parse_sqlite(rest, source, text, home)
    else:
        raise _bad(source, text, f"the scheme {scheme!r} is not supported")
    # A password equal to the user or database name is shown by every redacted form
    # anyway; masking it everywhere would mangle words such as "postgres" or "kgents".
    if (
        url.password
        and len(url.password) >= _MIN_SECRET_LEN
        and url.password not in (url.user, url.database)
    ):
        _known_secrets.add(url.password)
        _known_secrets.add(quote(url.password, safe=""))
    return url


def redact_text(text: str) -> str:
    """Remove passwords from free text: URL userinfo, ``password=`` pairs, and every
    password connman has parsed. Used for exception messages and log events."""
    if not text:
        return text
    # Known passwords first, longest first, before any pattern can cut one in two.
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, _MASK)
    # password= pairs first: an '@' in their value must not pass for the end of a
    # URL's userinfo (the patterns below run to the last '@').
    params = _PARAM_PASSWORD_URL if "://" in text else _PARAM_PASSWORD_KEYWORDS
    text = params.sub(lambda m: m["head"] + _MASK, text)
    text = _URL_PASSWORD.sub(_mask, text)
    text = _URL_ONE_SLASH.sub(_mask, text)
    return _URL_PASSWORD_SPACED.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    return match["head"] + _MASK + match["tail"]


def _redact_value(value: str) -> str:
    """One URL-shaped value (what a user typed), redacted without parsing it: from
    the first ':' after the user part to the last '@', and every password= parameter.
    Exact where :func:`redact_text` must guess token limits (a password with spaces)."""
    # password= first: an '@' in its value must not become "the last '@'" below.
    if "://" in value or "@" in value:
        value = _PARAM_PASSWORD_VALUE.sub(lambda m: m["head"] + _MASK, value)
    else:
        value = _PARAM_PASSWORD_KEYWORDS.sub(lambda m: m["head"] + _MASK, value)
    at = value.rfind("@")
    if at >= 0:
        scheme = _VALUE_SCHEME.match(value)
        start = scheme.end() if scheme else 0
        colon = value.find(":", start, at)
        if colon >= 0:
            value = value[: colon + 1] + _MASK + value[at:]
        elif scheme is not None:
            # No ':' after "x:/": either a user without a password, or user:/pw@
            # read as a scheme. Hide the whole userinfo rather than guess.
            value = value[:start] + _MASK + value[at:]
    return redact_text(value)


# -- private -----------------------------------------------------------------------


def _parse_postgres(rest: str, source: str, original: str) -> DatabaseURL:
    # The netloc ends at the first '/' or '?' (postgresql://host?sslmode=... has no path).
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    path, _, qs = tail.removeprefix("/").partition("?")
    if "@" in path or "@" in qs:
        # Where the '@' after a '/' or '?' ends a password, parsing around it would
        # show part of that password as a database name or a query parameter.
        raise _bad(
            source,
            original,
            "an '@' follows a '/' or '?': a password or user with '/', '@', '?' or '#' "
            "must be percent-encoded (%2F, %40, %3F, %23), and so must an '@' in a "
            "query parameter",
        )
    if "#" in qs or "#" in path:
        raise _bad(source, original, "it contains a fragment (#...)")
    params = _parse_query(qs, source, original)

    userinfo, at, hostport = netloc.rpartition("@")
    user = password = None
    if at:
        u, colon, p = userinfo.partition(":")
        user = unquote(u) or None
        password = unquote(p) if colon else None

    host, port = _parse_hostport(hostport, source, original)
    query: list[tuple[str, str]] = []
    for k, v in params:
        lk = k.lower()
        # libpq spellings in the query win only where the netloc said nothing.
        if lk == "host" and host is None:
            host = v if v.startswith("/") else v.lower()
        elif lk == "port" and port is None:
            port = _port(v, source, original)
        elif lk == "user" and user is None:
            user = v
        elif lk == "password" and password is None:
            password = v
        elif lk == "dbname" and not path:
            path = v
        else:
            query.append((k, v))
    if port is None and (host is None or "," not in host):
        port = _DEFAULT_PORT
    database = unquote(path) or None
    if database and "/" in database:
        raise _bad(source, original, "the database name contains '/'")
    return DatabaseURL(
        dialect="postgresql",
        host=host,
        port=port,
        user=user,
        password=password,
        database=database,
        query=tuple(sorted(query)),
    )


def _parse_query(qs: str, source: str, original: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(qs, keep_blank_values=True, strict_parsing=bool(qs))
    except ValueError:
        pass
    # Raised outside the handler: parse_qsl's error quotes the field (a password, in
    # a broken URL) and error trackers keep even a suppressed __context__.
    raise _bad(source, original, "its query string is malformed")


def _parse_hostport(hostport: str, source: str, original: str) -> tuple[str | None, int | None]:
    hostport = unquote(hostport)
    if not hostport:
        return None, None
    if "," in hostport:  # multi-host (HA); asyncpg accepts h1:p1,h2:p2
        for item in hostport.split(","):
            # Each port checked now: DatabaseURL.hosts reads them back as numbers.
            _, bracket, after = item.partition("]") if item.startswith("[") else ("", "", item)
            name, colon, port_s = after.rpartition(":") if ":" in after else (after, "", "")
            if not item or ":" in name or (bracket and name) or (colon and not port_s):
                raise _bad(source, original, f"the host list has a malformed entry {item!r}")
            if colon:
                _port(port_s, source, original)
        return hostport.lower(), None
    if hostport.startswith("/"):
        return hostport, None
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _bad(source, original, "an IPv6 host is missing its closing ']'")
        host, after = hostport[1:end], hostport[end + 1 :]
        if after and not after.startswith(":"):
            raise _bad(source, original, "unexpected text after the IPv6 host")
        return host.lower(), _port(after[1:], source, original) if after else None
    host, colon, port_s = hostport.rpartition(":")
    if not colon:
        return hostport.lower(), None
    if not host:
        raise _bad(source, original, "the host is empty")
    if ":" in host:
        raise _bad(source, original, "an IPv6 host must be in brackets, e.g. [::1]:5432")
    return host.lower(), _port(port_s, source, original)


def _port(text: str, source: str, original: str) -> int:
    if not (text.isascii() and text.isdigit()):
        # Not echoed: in a URL such as user:pw/x@host the "port" is a password.
        raise _bad(source, original, "the port is not a number between 1 and 65535")
    if not 0 < int(text) < 65536:
        raise _bad(source, original, f"the port {text} is not a number between 1 and 65535")
    return int(text)


def _parse_sqlite(rest: str, source: str, original: str, home: str | None) -> DatabaseURL:
    path, _, qs = rest.partition("?")
    query = tuple(sorted(_parse_query(qs, source, original)))
    if path and not path.startswith("/"):
        # sqlite://host/path: SQLite has no host; a common typo for sqlite:///path.
        raise _bad(source, original, "SQLite URLs have no host: use three slashes, sqlite:///path")
    path = unquote(path[1:])
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        # user:password@host under a sqlite scheme: refused, so that the path (shown
        # in every redacted form) never carries a password.
        raise _bad(source, original, "a SQLite path holds no user:password@: check the scheme")
    if path in ("", ":memory:"):
        return DatabaseURL(dialect="sqlite", database=":memory:", query=query)
    if path.startswith("file:"):
        raise _bad(source, original, "use a plain path, not a file: URI, after sqlite:///")
    # The protocol's own example uses ~; expand it, then make the path absolute so that
    # relative and absolute spellings of one file share one pool.
    if home is not None and (path == "~" or path.startswith("~/")):
        path = home + path[1:]
    full = os.path.abspath(os.path.expanduser(path))
    return DatabaseURL(dialect="sqlite", database=full, query=query)


def _is_local_host(host: str) -> bool:
    if host.startswith("/"):
        return True  # a unix socket directory
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _bad(source: str, text: str, why: str) -> ConfigError:
    shown = _redact_value(text)
    return ConfigError(f"{source}={shown!r} is not usable: {why}. Accepted: {ACCEPTED_SCHEMES}")
