"""TLS policy and the files a PostgreSQL connection reads: the one place that decides
whether a URL verifies its server, and that turns ``~/ca.pem`` into a path that exists.

libpq's settings, in the URL (``?sslmode=verify-full&sslrootcert=~/ca.pem``) or in the
``PG*`` environment (``PGSSLMODE``, ``PGSSLROOTCERT``...; the URL wins), are what asyncpg
reads. asyncpg's default is ``prefer``: encrypted if the server offers it, the
certificate never checked. On loopback that is harmless; anywhere else a
man-in-the-middle reads the password, so such a URL gets a warning, and
``KGENTS_REQUIRE_TLS=1`` (or ``PoolConfig(require_tls=True)``) makes it an error.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Final

from connman.config import parse_flag
from connman.errors import ConfigError
from connman.urls import DatabaseURL

__all__ = [
    "FILE_PARAMETERS",
    "REQUIRE_TLS_ENV",
    "VERIFYING_MODES",
    "check_tls",
    "is_verification_failure",
    "require_tls_from_env",
    "resolve_files",
    "sslmode_of",
    "verification_hint",
]

REQUIRE_TLS_ENV: Final = "KGENTS_REQUIRE_TLS"
VERIFYING_MODES: Final = frozenset({"verify-ca", "verify-full"})
"""The sslmodes that check the server's certificate against a CA."""

FILE_PARAMETERS: Final = {
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "passfile": "PGPASSFILE",
}
"""libpq parameters naming a file, and the environment variable each falls back to."""


def _param(url: DatabaseURL, name: str) -> str | None:
    for key, value in url.query:
        if key.lower() == name:
            return value
    return None


def sslmode_of(url: DatabaseURL, env: Mapping[str, str] | None = None) -> str | None:
    """The sslmode asyncpg will use: the URL's, else ``PGSSLMODE``, else None (asyncpg's
    ``prefer``)."""
    env = os.environ if env is None else env
    mode = _param(url, "sslmode") or env.get("PGSSLMODE") or None
    return mode.strip().lower() if mode else None


def require_tls_from_env(env: Mapping[str, str] | None = None) -> bool:
    """``KGENTS_REQUIRE_TLS`` as a boolean (unset or blank: False)."""
    env = os.environ if env is None else env
    return parse_flag(REQUIRE_TLS_ENV, env.get(REQUIRE_TLS_ENV, ""))


def check_tls(
    url: DatabaseURL, env: Mapping[str, str] | None = None, *, require: bool = False
) -> str | None:
    """A warning when ``url`` is a PostgreSQL server off this machine that is not
    verified (sslmode other than verify-ca/verify-full); None when it is fine.

    Raises:
        ConfigError: ``require`` (or ``KGENTS_REQUIRE_TLS``) is set and the URL would
            not verify its server.
    """
    if url.dialect != "postgresql" or url.is_local:
        return None
    mode = sslmode_of(url, env)
    if mode in VERIFYING_MODES:
        return None
    text = (
        f"{url.redacted()} is not on this machine and its certificate is not verified "
        f"(sslmode={mode or 'prefer, the default'}): anyone on the path can read the "
        "password. Add ?sslmode=verify-full&sslrootcert=/path/to/ca.pem (or set "
        "PGSSLMODE/PGSSLROOTCERT)"
    )
    if require or require_tls_from_env(env):
        raise ConfigError(f"{text}; {REQUIRE_TLS_ENV} (or PoolConfig.require_tls) requires it.")
    return text + f"; {REQUIRE_TLS_ENV}=1 turns this warning into an error."


def resolve_files(
    url: DatabaseURL, env: Mapping[str, str] | None = None, home: str | None = None
) -> DatabaseURL:
    """``url`` with every file parameter (:data:`FILE_PARAMETERS`, from the URL or its
    ``PG*`` variable) made explicit, ``~`` expanded (to ``home`` when given) and
    checked to exist: asyncpg expands nothing, and for a missing file raises an
    ``OSError`` that does not say which file.

    Raises:
        ConfigError: a named file does not exist (the message names it and where the
            setting came from).
    """
    if url.dialect != "postgresql":
        return url
    env = os.environ if env is None else env
    query = dict(url.query)
    lowered = {k.lower(): k for k in query}
    changed = False
    for name, variable in FILE_PARAMETERS.items():
        key = lowered.get(name)
        if key is not None:
            raw, source = query[key], f"the URL's {name}="
        elif env.get(variable, "").strip():
            key, raw, source = name, env[variable].strip(), f"{variable}="
        else:
            continue
        path = _expand(raw, home)
        if not os.path.isfile(path):
            shown = raw if path == raw else f"{raw} ({path})"
            raise ConfigError(
                f"{name} file {shown}, from {source}, does not exist or is not a file. "
                "Fix the path (a relative one is relative to the working directory)."
            )
        if query.get(key) != path:
            query[key] = path
            changed = True
    if not changed:
        return url
    return dataclasses.replace(url, query=tuple(sorted(query.items())))


def _expand(path: str, home: str | None) -> str:
    if home is not None and (path == "~" or path.startswith("~/")):
        return home + path[1:]
    return os.path.expanduser(path)


def is_verification_failure(exc: BaseException) -> bool:
    """True when ``exc`` says the server's certificate did not verify (an untrusted
    CA, an expired certificate, a host name that does not match). That will not go
    away by retrying, unlike a handshake cut short by a restarting server."""
    return isinstance(exc, ssl.SSLCertVerificationError)


def verification_hint(exc: BaseException) -> str:
    """What to do about a certificate that did not verify."""
    reason = getattr(exc, "verify_message", None) or "certificate verify failed"
    return (
        f"The server's TLS certificate was rejected ({reason}). Check that sslrootcert "
        "names the CA that signed the server's certificate and that the host in the URL "
        "is one the certificate names (sslmode=verify-full checks both, verify-ca only the CA)"
    )
