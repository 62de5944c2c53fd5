"""A server that answers and refuses is an error, never a reason to write elsewhere.

Degradation (Production -> Unified -> Portable) is for a database nothing answers for:
connection refused, name not resolved, connect timeout. A wrong password, a missing
database, a certificate that does not verify or a server at max_connections is a
:class:`PoolUnavailable` with the reason and a hint of its own, strict mode or not,
and the portable SQLite file is not even created. Real servers: a throwaway cluster
with scram passwords and max_connections=6, one with TLS and a private CA.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import asyncpg
import pytest
import structlog.testing

from connman import (
    ConnectionManager,
    PoolConfig,
    PoolUnavailable,
    UnavailableReason,
    resolve_storage,
)
from connman.cli import main as cli_main
from connman.testing.cluster import ClusterUnavailable, LocalCluster
from connman.testing.plugin import unavailable

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

ROLE, PASSWORD = "alice", "alice-right-pw"
# superuser_reserved_connections is 3 by default: 3 slots are left for alice.
MAX_CONNECTIONS = 6
CONFIG = PoolConfig(connect_timeout=5, min_size=1, max_size=2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A cluster of this module's own: scram passwords, max_connections=6."""
    try:
        server = LocalCluster(max_connections=MAX_CONNECTIONS)
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    try:
        server.start()
        server.require_password("scram-sha-256")
        for sql in (
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'",
            "CREATE DATABASE private",
            "REVOKE CONNECT ON DATABASE private FROM PUBLIC",
        ):
            subprocess.run(
                [str(server.bindir / "psql"), server.dsn, "-c", sql],
                check=True,
                capture_output=True,
                timeout=60,
            )
        yield server
    finally:
        server.destroy()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {"KGENTS_DATABASE_URL": url, "XDG_DATA_HOME": str(tmp_path / "xdg"), **extra}


def _portable_file(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "kgents" / "membrane.db"


async def _refused(tmp_path: Path, url: str, strict: bool) -> PoolUnavailable:
    """Start a manager on resolved storage; it must refuse, and write nothing."""
    env = _env(tmp_path, url, KGENTS_STORAGE_STRICT="1" if strict else "0")
    storage = resolve_storage(env)
    assert storage.fallbacks, "non-strict storage on PostgreSQL has a portable fallback"
    manager = ConnectionManager(storage, config=CONFIG)
    try:
        with pytest.raises(PoolUnavailable) as caught:
            await manager.start()
        assert not manager.degraded and manager.default_pool is None
    finally:
        await manager.aclose()
    # Nothing went to another store: the fallback file was never made.
    assert not (tmp_path / "xdg").exists()
    return caught.value


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
async def test_wrong_password_is_an_error_not_a_fallback(cluster, tmp_path, strict):
    url = f"postgresql://{ROLE}:not-the-password@127.0.0.1:{cluster.port}/postgres"
    error = await _refused(tmp_path, url, strict)
    assert error.reason is UnavailableReason.AUTHENTICATION
    assert error.host == f"127.0.0.1:{cluster.port}"
    assert error.hint is not None and "password" in error.hint
    assert "docker compose" not in str(error)
    assert "not-the-password" not in str(error) + repr(error)


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
async def test_missing_database_is_an_error_not_a_fallback(cluster, tmp_path, strict):
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{cluster.port}/no_such_db"
    error = await _refused(tmp_path, url, strict)
    assert error.reason is UnavailableReason.DATABASE_MISSING
    assert error.hint is not None and "no_such_db" in error.hint and "createdb" in error.hint


async def test_no_connect_privilege_is_an_error_not_a_fallback(cluster, tmp_path):
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{cluster.port}/private"
    error = await _refused(tmp_path, url, strict=False)
    assert error.reason is UnavailableReason.AUTHORIZATION
    assert error.hint is not None and "GRANT CONNECT" in error.hint


async def test_too_many_clients_is_an_error_not_a_fallback(cluster, tmp_path):
    dsn = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{cluster.port}/postgres"
    held: list[asyncpg.Connection] = []
    try:
        # Take every slot a non-superuser has; the next connect is refused.
        while True:
            try:
                held.append(await asyncpg.connect(dsn))
            except asyncpg.TooManyConnectionsError:
                break
            assert len(held) <= MAX_CONNECTIONS
        error = await _refused(tmp_path, dsn, strict=False)
    finally:
        for conn in held:
            await conn.close()
    assert error.reason is UnavailableReason.TOO_MANY_CLIENTS
    assert error.hint is not None and "max_connections" in error.hint


async def test_unreachable_port_degrades_loudly(tmp_path):
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{closed_port()}/postgres"
    storage = resolve_storage(_env(tmp_path, url))
    with structlog.testing.capture_logs() as events:
        async with ConnectionManager(storage, config=CONFIG) as manager:
            assert manager.degraded
            async with manager.lease("dgent") as lease:
                assert lease.dialect == "sqlite"
            reason = manager.degraded_reason
    assert reason is not None and "ConnectionRefusedError" in reason
    degraded = [e for e in events if e["event"] == "storage_degraded"]
    assert degraded and degraded[0]["log_level"] == "warning"
    assert degraded[0]["got_tier"] == "portable"
    assert _portable_file(tmp_path).exists()


async def test_unreachable_in_strict_mode_says_unreachable(tmp_path):
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{closed_port()}/postgres"
    error = await _refused(tmp_path, url, strict=True)
    assert error.reason is UnavailableReason.UNREACHABLE and error.unreachable
    assert error.hint is not None and "KGENTS_STORAGE_STRICT" in error.hint


# -- TLS: a certificate that does not verify ------------------------------------------


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (openssl)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory) -> Iterator[tuple[LocalCluster, Path]]:
    """A cluster with ssl=on and a self-signed certificate; yields it with the path of
    *another* CA's certificate, which does not sign the server's."""
    try:
        server = LocalCluster()
    except ClusterUnavailable as exc:
        unavailable(str(exc))
    try:
        owner = os.stat(server.data)
        cert, key = _self_signed(server.base, "server")
        for path in (cert, key):
            os.chown(path, owner.st_uid, owner.st_gid)
        key.chmod(0o600)
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n")
        server.start()
        other_ca, _ = _self_signed(tmp_path_factory.mktemp("ca"), "other-ca")
        yield server, other_ca
    finally:
        server.destroy()


async def test_certificate_that_does_not_verify_is_an_error(tls_cluster, tmp_path):
    server, other_ca = tls_cluster
    url = (
        f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={other_ca}"
    )
    error = await _refused(tmp_path, url, strict=False)
    assert error.reason is UnavailableReason.TLS
    assert error.hint is not None and "sslrootcert" in error.hint


# -- connman status on the same servers: its exit code says what a process would get ---


def _status(tmp_path: Path, url: str, **extra: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {**_env(tmp_path, url, **extra), "KGENTS_POOL_CONNECT_TIMEOUT": "5"}
    with (
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        code = cli_main(["status"])
    return code, out.getvalue()


def test_status_exit_codes(cluster, tls_cluster, tmp_path):
    """0 answers as configured, 1 refused or unreachable (strict), 3 degraded."""
    server, other_ca = tls_cluster
    good = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{cluster.port}/postgres"
    cases = {
        "answers": (good, {}, 0),
        "wrong password": (good.replace(PASSWORD, "not-the-password"), {}, 1),
        "bad CA": (
            f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={other_ca}",
            {},
            1,
        ),
        "unreachable, strict": (
            f"postgresql://{ROLE}@127.0.0.1:{closed_port()}/postgres",
            {"KGENTS_STORAGE_STRICT": "1"},
            1,
        ),
        "unreachable, degraded": (f"postgresql://{ROLE}@127.0.0.1:{closed_port()}/postgres", {}, 3),
    }
    seen = {}
    for name, (url, extra, _) in cases.items():
        code, text = _status(tmp_path, url, **extra)
        seen[name] = code
        assert text.startswith("wanted "), text
        assert "not-the-password" not in text and PASSWORD not in text
    assert seen == {name: expected for name, (_, _, expected) in cases.items()}
    assert not (tmp_path / "xdg").exists()  # status wrote nothing, even when degraded
