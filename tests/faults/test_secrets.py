"""A password in the URL never shows: not in logs, error messages, tracebacks, reprs,
stats or warnings, whatever goes wrong (DESIGN.md: credentials never leave urls.py
unredacted). The server really checks the password (scram-sha-256), so the URL's
password is the one that works."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import socket
import string
import traceback
import uuid
from collections.abc import Iterator
from unittest import mock
from urllib.parse import quote

import anyio
import pytest
import structlog
import structlog.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

import connman.logging
from connman import (
    AcquireTimeout,
    ConfigError,
    ConnectionManager,
    PoolConfig,
    PoolUnavailable,
    parse_url,
    redact_text,
    resolve_storage,
)
from connman.cli import main as cli_main
from tests.support.faultkit import admin_connect, app_name, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

ROLE = "alice"


def _secret(special: bool) -> tuple[str, str]:
    """A password and the unique part that must never show, even in part. With
    ``special``, the characters that URLs must escape come first."""
    nonce = uuid.uuid4().hex[:12]
    return ("Sp@c:/?#&=%+'" if special else "Pw-") + nonce, nonce


def _error_texts(exc: BaseException) -> list[str]:
    """Everything a user may see of an exception: str, repr, the printed traceback,
    and the chained exceptions (even a suppressed context, which error trackers keep)."""
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    for chained in (exc.__cause__, exc.__context__):
        if chained is not None:
            texts += [str(chained), repr(chained)]
    return texts


@contextlib.contextmanager
def _connman_logs(mode: str) -> Iterator[list[str]]:
    """Every connman log event while the block runs, as text."""
    lines: list[str] = []
    if mode == "stream":
        if structlog.is_configured():
            pytest.skip("structlog is configured by the host: connman's stream is not used")
        buf = io.StringIO()
        connman.logging.configure(level="debug", json=True, stream=buf)
        try:
            yield lines
        finally:
            connman.logging.configure(level="warning", json=None, stream=None)
            lines += buf.getvalue().splitlines()
    else:
        # The host configured structlog: events reach it as connman built them, before
        # any processor of ours ran, so they must be clean at the source.
        with structlog.testing.capture_logs() as events:
            yield lines
        lines += [repr(event) for event in events]


@pytest.mark.parametrize(
    ("logs", "special"), [("stream", False), ("capture", True)], ids=["stream", "capture"]
)
async def test_password_never_shown(postgres_cluster, logs, special, caplog, capsys, recwarn):
    """Run a manager whose URL holds a real password through every error it can
    raise (AcquireTimeout, ConfigError, PoolUnavailable for a wrong password and for
    a stopped server) and a reconnect; collect every log line, message, traceback,
    repr and stats snapshot: the password shows in none, not even in part."""
    password, nonce = _secret(special)
    wrong_password, wrong_nonce = _secret(special)
    admin = await admin_connect(postgres_cluster.url)
    try:
        await admin.execute(
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password.replace(chr(39), chr(39) * 2)}'"
        )
    finally:
        await admin.close()
    await anyio.to_thread.run_sync(postgres_cluster.require_password)
    port = postgres_cluster.port
    quoted, wrong_quoted = quote(password, safe=""), quote(wrong_password, safe="")
    url = f"postgresql://{ROLE}:{quoted}@127.0.0.1:{port}/postgres"
    other_db = f"postgres://127.0.0.1:{port}/template1?user={ROLE}&password={quoted}"
    wrong = f"postgresql+asyncpg://{ROLE}:{wrong_quoted}@127.0.0.1:{port}/postgres"
    config = PoolConfig(
        application_name=app_name("secrets"),
        min_size=1,
        max_size=1,
        connect_timeout=2.0,
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.2,
    )
    caplog.set_level(logging.DEBUG)
    seen: list[str] = []  # every user-visible string produced below
    errors: list[BaseException] = []

    with _connman_logs(logs) as log_lines:
        manager = ConnectionManager(url, config=config, degrade=False)
        seen.append(repr(manager))
        try:
            with anyio.fail_after(60):
                await manager.start()
                async with manager.lease("dgent") as lease:
                    # The password is real: the server checked it.
                    assert await lease.connection.fetchval("SELECT current_user") == ROLE
                    seen += [repr(lease), lease.url]
                    # Pool exhausted: AcquireTimeout.
                    with pytest.raises(AcquireTimeout) as timeout_info:
                        async with manager.lease("brain", timeout=0.2):
                            pass
                    errors.append(timeout_info.value)
                seen.append(repr(lease))

                # A second database, password in the query string.
                async with manager.lease("sqlalchemy", url=other_db) as lease:
                    assert await lease.connection.fetchval("SELECT current_database()") == (
                        "template1"
                    )
                    seen += [repr(lease), lease.url]

                # Bad URLs: ConfigError, from the constructor and from a lease.
                # (libpq keyword strings with special characters: see the test below.)
                for bad in (
                    f"postgresql://{ROLE}:{quoted}@127.0.0.1:notaport/postgres",
                    f"mysql://{ROLE}:{quoted}@127.0.0.1/postgres",
                    f"postgresql://127.0.0.1:{port}/postgres?user={ROLE}&password={quoted}&junk",
                    *([] if special else [f"host=127.0.0.1 user={ROLE} password={password}"]),
                ):
                    with pytest.raises(ConfigError) as config_info:
                        ConnectionManager(bad, config=config, degrade=False)
                    errors.append(config_info.value)
                    with pytest.raises(ConfigError) as config_info:
                        async with manager.lease("dgent", url=bad):
                            pass
                    errors.append(config_info.value)

                # The wrong password: at start-up, and for a pool opened by a lease.
                wrong_manager = ConnectionManager(wrong, config=config, degrade=False)
                with pytest.raises(PoolUnavailable) as wrong_info:
                    await wrong_manager.start()
                errors.append(wrong_info.value)
                seen += [repr(wrong_manager), repr(wrong_manager.stats())]
                await wrong_manager.aclose()
                with pytest.raises((PoolUnavailable, AcquireTimeout)) as wrong_info:
                    async with manager.lease("dgent", url=wrong, timeout=0.5):
                        pass
                errors.append(wrong_info.value)

                # The server goes away: PoolUnavailable, connect errors logged; then
                # it comes back and the pool reconnects (logged too).
                await anyio.to_thread.run_sync(postgres_cluster.stop)
                with pytest.raises((PoolUnavailable, AcquireTimeout)) as down_info:
                    async with manager.lease("dgent", timeout=1.0) as lease:
                        await lease.connection.fetchval("SELECT 1")
                errors.append(down_info.value)
                with pytest.raises(PoolUnavailable) as down_info:
                    async with manager.lease("dgent", timeout=0.5):
                        pass
                errors.append(down_info.value)
                seen += [repr(manager.stats()), str(manager.stats())]
                await anyio.to_thread.run_sync(postgres_cluster.start)
                await wait_until(
                    lambda: manager.stats()[0].last_error is None,
                    timeout=10,
                    what="the pool to reconnect",
                )
                async with manager.lease("dgent", timeout=5) as lease:
                    assert await lease.connection.fetchval("SELECT 1") == 1
                seen += [repr(manager), repr(manager.storage), repr(manager.config)]
                seen += [repr(manager.stats()), repr(manager.default_pool.url)]
        finally:
            await manager.aclose()

    for exc in errors:
        seen += _error_texts(exc)
    seen += log_lines
    seen += [caplog.text, *capsys.readouterr(), *(str(w.message) for w in recwarn)]

    # The checks see what they should: logs were written, naming the redacted URL.
    assert any("connect_failed" in line for line in log_lines), log_lines[:5]
    assert any(f"{ROLE}:***@" in text for text in seen)
    assert any("password authentication failed" in text for text in seen)
    for secret in (nonce, wrong_nonce):
        leaks = [text for text in seen if secret in text]
        assert not leaks, f"the password shows in: {leaks[0][:3000]}"


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("postgresql://alice:Pw-{n}@127.0.0.1:notaport/db", id="url"),
        pytest.param("postgresql://alice:Pw%26{n}@127.0.0.1:notaport/db", id="url-escaped"),
        pytest.param("mysql://alice:Pw-{n}@127.0.0.1/db", id="url-scheme"),
        pytest.param("postgresql://127.0.0.1:notaport/db?password=Pw-{n}", id="url-query"),
        pytest.param("host=127.0.0.1 user=alice password=Pw-{n}", id="libpq"),
        # parse_url accepts an unescaped '@' in a password (it splits at the last '@').
        pytest.param("postgresql://alice:Pw@{n}@127.0.0.1:notaport/db", id="url-raw-at"),
        pytest.param("host=127.0.0.1 user=alice password='Pw {n}'", id="libpq-quoted"),
        # ...and an unescaped space too.
        pytest.param(
            "postgresql://alice:Pw {n}@127.0.0.1:notaport/db",
            id="url-raw-space",
        ),
        # libpq keyword values end at whitespace, not at '&'; quotes inside quoted
        # values are escaped with a backslash.
        pytest.param("host=127.0.0.1 user=alice password=Pw&{n}", id="libpq-ampersand"),
        pytest.param(
            r"host=127.0.0.1 user=alice password='Pw\' {n}'",
            id="libpq-quoted-escape",
        ),
    ],
)
def test_config_error_never_shows_a_password_connman_never_parsed(template):
    """A URL that does not parse is often the only one the process has seen (a typo in
    KGENTS_DATABASE_URL), so the error's redaction cannot lean on passwords parsed
    before: it must find the password in the text. Each case uses a fresh secret."""
    nonce = uuid.uuid4().hex
    with pytest.raises(ConfigError) as info:
        ConnectionManager(template.format(n=nonce), degrade=False)
    assert "***" in str(info.value)
    for text in _error_texts(info.value):
        assert nonce not in text, text


# -- property: a URL-shaped value never shows its password, however malformed ----------

# The password's core, fresh in every example: connman remembers the passwords it
# parsed and masks them anywhere, so a marker seen before would be masked by memory,
# not by the rule under test.
_MARKS = st.text("0123456789abcdef", min_size=10, max_size=10).map(lambda n: f"Zq7x{n}x")
_PW_CHARS = string.ascii_letters + string.digits + "/@:?#&=%+ '\"!$*;,[]~"
_QUERY_PW_CHARS = _PW_CHARS.replace("&", "").replace("#", "")
_SCHEMES = (
    "postgresql://",
    "postgres://",
    "postgresql+asyncpg://",
    "postgresql+psycopg://",
    "POSTGRESQL://",
    "  postgresql://",
    "postgresql:/",
    "postgresql//",
    "postgresql:",
    "postgresql:///",
    "",
    "postgresq://",
    "postgressql://",
    "mysql://",
    "sqlite://",
    "sqlite:///",
)
_HOSTS = (
    "127.0.0.1",
    "localhost",
    "[::1]",
    "",
    "127.0.0.1:{port}",
    "localhost:{port}",
    "[::1]:{port}",
    "127.0.0.1:abc",
    "127.0.0.1:99999",
    "[::1",
    "::1",
)
_PATHS = ("/db", "", "/", "/a/b", "/db?sslmode=disable", "/db#frag", "?x", "/db?application_name=a")


@st.composite
def url_shaped(draw: st.DrawFn, hosts: tuple[str, ...] = _HOSTS, port: int = 1) -> tuple[str, str]:
    """A URL-shaped string, valid or broken, whose password holds a marker (returned
    with it); sometimes a ``password=`` parameter holds it too."""
    mark = draw(_MARKS)
    scheme = draw(st.sampled_from(_SCHEMES))
    user = draw(st.text(string.ascii_letters + string.digits + "._-", max_size=8))
    around = st.text(_PW_CHARS, max_size=6)
    password = draw(around) + mark + draw(around)
    host = draw(st.sampled_from(hosts)).format(port=port)
    path = draw(st.sampled_from(_PATHS))
    value = f"{scheme}{user}:{password}@{host}{path}"
    if draw(st.booleans()):
        query_pw = st.text(_QUERY_PW_CHARS, max_size=6)
        sep = "&" if "?" in path else "?"
        value += f"{sep}password={draw(query_pw)}{mark}{draw(query_pw)}"
    return value, mark


# "u://pw@host" (user u, a password starting with "//") reads as scheme u, user pw:
# in free text nothing can tell; the errors (value-level) hide the whole userinfo.
_AMBIGUOUS = re.compile(r"[a-zA-Z][\w+.-]*://[^:]*@")


def _texts_of_value(value: str) -> list[str]:
    """What connman shows of ``value`` as KGENTS_DATABASE_URL, as KGENTS_POSTGRES_URL,
    and as a parsed URL: errors, str, repr, warnings."""
    texts: list[str] = []
    try:
        url = parse_url(value, source="KGENTS_DATABASE_URL")
    except ConfigError as exc:
        texts += _error_texts(exc)
    else:
        texts += [str(url), repr(url), url.redacted(), url.with_placeholder()]
    for name in ("KGENTS_DATABASE_URL", "KGENTS_POSTGRES_URL"):
        try:
            storage = resolve_storage({name: value, "HOME": "/nonexistent-connman-home"})
        except ConfigError as exc:
            texts += _error_texts(exc)
        else:
            texts += [str(storage), repr(storage), *storage.warnings]
    if not any(c.isspace() for c in value) and not _AMBIGUOUS.match(value):
        # Free text: a value inside a message (token rules: no spaces to guess across).
        texts.append(redact_text(f"could not use {value} (from the environment)"))
    return texts


_M = "Zq7x0000000001x"


@settings(max_examples=3000, deadline=None, database=None)
@given(case=url_shaped())
# Cases hypothesis found while the rule was being written: each leaked then.
@example(case=(f"sqlite:///:{_M}@127.0.0.1/db", _M))
@example(case=(f"postgresql://:{_M}@127.0.0.1?password=/{_M}", _M))
@example(case=(f"postgresql:///:{_M}?@127.0.0.1/db?password={_M}", _M))
@example(case=(f"postgresql://:{_M}@127.0.0.1/db?password=SoI@K?{_M}", _M))
@example(case=(f'postgressql://:{_M}@127.0.0.1/db?password=""{_M}', _M))
@example(case=(f":/{_M}@127.0.0.1/db", _M))
@example(case=(f"postgresql://:?{_M}@127.0.0.1/db", _M))
@example(case=(f"0:/{_M}@127.0.0.1/db", _M))
@example(case=(f"u:/{_M}@127.0.0.1/db", _M))
@example(case=(f'A:/{_M}"@127.0.0.1/db', _M))
@example(case=(f':{_M}@127.0.0.1/db?password=""{_M}', _M))
def test_property_url_shaped_values_never_show_their_password(case):
    value, mark = case
    leaks = [text for text in _texts_of_value(value) if mark in text]
    assert not leaks, leaks[0]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_CLOSED_PORT = _closed_port()
# Only hosts with the closed port (or none that parses): a URL without a port would
# reach the default 5432, where a shared server may answer.
_CLOSED_HOSTS = tuple(h for h in _HOSTS if "{port}" in h or h in ("127.0.0.1:abc", "[::1", "::1"))


@settings(max_examples=60, deadline=None, database=None)
@given(case=url_shaped(hosts=_CLOSED_HOSTS, port=_CLOSED_PORT))
def test_property_connman_status_never_shows_the_password(case):
    """``connman status`` run in-process on the value (strict: nothing to fall back to;
    every host is loopback, every port closed): stdout and stderr never hold it."""
    value, mark = case
    out, err = io.StringIO(), io.StringIO()
    env = {
        "KGENTS_DATABASE_URL": value,
        "KGENTS_STORAGE_STRICT": "1",
        "KGENTS_POOL_CONNECT_TIMEOUT": "2",
        "XDG_DATA_HOME": "/nonexistent-connman-xdg",
    }
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli_main(["status"])
    assert code in (1, 2), (code, out.getvalue(), err.getvalue())
    assert mark not in out.getvalue() + err.getvalue()
