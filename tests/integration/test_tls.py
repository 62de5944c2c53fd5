"""TLS against a real server: a throwaway cluster with ``ssl=on`` and a certificate
for 127.0.0.1/localhost signed by a private CA made here with ``openssl``.

verify-full with the right CA works (with ``~`` in the path); the wrong CA fails at
once with a TLS hint, not at the acquire deadline; a missing file is named."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from connman import ConfigError, ConnectionManager, PoolConfig, PoolUnavailable
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import throwaway_cluster, unavailable
from tests.support.faultkit import wait_until

pytestmark = pytest.mark.postgres


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Path:
    """A self-signed CA (EC key) in ``directory``; returns its certificate."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=connman test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.pem"


def make_server_cert(directory: Path, ca: str, name: str = "server") -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca``: the
    certificate and key files ``{name}.crt``, ``{name}.key``."""
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return directory / f"{name}.crt", directory / f"{name}.key"


def server_owned(*paths: Path) -> None:
    """Make files readable by the server's user only (it refuses a key others can
    read), whoever runs the tests."""
    for path in paths:
        path.chmod(0o700 if path.is_dir() else 0o600)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(path, user.pw_uid, user.pw_gid)


class TlsCluster:
    def __init__(self, cluster: LocalCluster, certs: Path) -> None:
        self.cluster = cluster
        self.certs = certs
        self.ca = certs / "ca.pem"
        self.wrong_ca = certs / "wrong-ca.pem"

    def url(self, query: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cluster.port}/postgres?{query}"


@contextlib.contextmanager
def tls_server(certs: Path, name: str) -> Iterator[LocalCluster]:
    """A cluster with ssl=on serving ``{name}.crt`` (a copy: tests may swap it)."""
    cert, key = certs / f"{name}-live.crt", certs / f"{name}-live.key"
    shutil.copy(certs / "server.crt", cert)
    shutil.copy(certs / "server.key", key)
    server_owned(cert, key)
    settings = {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}
    with throwaway_cluster(settings=settings) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    if shutil.which("openssl") is None:
        unavailable("openssl is not installed (apt-get install openssl)")
    # Not under pytest's tmp dirs: the server reads its key as its own user, through
    # directories only root may enter. It refuses a key others can read.
    certs = Path(tempfile.mkdtemp(prefix="connman-tls-"))
    try:
        make_ca(certs, "ca")
        make_ca(certs, "wrong-ca")
        make_server_cert(certs, "ca")
        make_server_cert(certs, "wrong-ca", name="impostor")
        server_owned(certs)
        with tls_server(certs, "module") as cluster:
            yield TlsCluster(cluster, certs)
    finally:
        shutil.rmtree(certs, ignore_errors=True)


async def test_verify_full_with_the_right_ca_and_a_tilde_path(tls_cluster, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(tls_cluster.ca, home / "ca.pem")
    monkeypatch.setenv("HOME", str(home))
    url = tls_cluster.url("sslmode=verify-full&sslrootcert=~/ca.pem")
    async with ConnectionManager(url, degrade=False) as manager, manager.lease("tls") as lease:
        encrypted = await lease.connection.fetchval(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
    assert encrypted is True


async def test_the_wrong_ca_fails_at_once_with_a_tls_hint(tls_cluster):
    right = tls_cluster.url(f"sslmode=verify-full&sslrootcert={tls_cluster.ca}")
    wrong = tls_cluster.url(f"sslmode=verify-full&sslrootcert={tls_cluster.wrong_ca}")
    config = PoolConfig(acquire_timeout=20, min_size=0)

    # At start-up: the error says what is wrong with TLS, not "is the server running".
    started = time.monotonic()
    with pytest.raises(PoolUnavailable) as info:
        async with ConnectionManager(wrong, config=config, degrade=False):
            pass
    assert time.monotonic() - started < 5
    text = str(info.value)
    assert "certificate" in text and "sslrootcert" in text, text
    # (the manager's closing advice after it is t10-trust's: degrade rules and hints)
    assert "server runs" not in text, text

    # A pool opened on demand: its waiters fail at once (a certificate that does not
    # verify will not verify on the next attempt), not after acquire_timeout.
    async with ConnectionManager(right, config=config, degrade=False) as manager:
        started = time.monotonic()
        with pytest.raises(PoolUnavailable) as info:
            async with manager.lease("tls", url=wrong):
                pass
        waited = time.monotonic() - started
        assert waited < 5, f"waited {waited:.1f}s of the 20s acquire timeout"
        assert "sslrootcert" in str(info.value)
        # the pool with the right CA is not affected
        async with manager.lease("tls") as lease:
            assert await lease.connection.fetchval("SELECT 1") == 1


async def test_a_missing_certificate_file_is_named(tls_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    url = tls_cluster.url("sslmode=verify-full&sslrootcert=~/nowhere/ca.pem")
    with pytest.raises(ConfigError) as info:
        async with ConnectionManager(url, degrade=False):
            pass
    assert f"{tmp_path}/nowhere/ca.pem" in str(info.value)
    assert "sslrootcert" in str(info.value)


async def test_a_certificate_that_stops_verifying_fails_waiters_at_once(tls_cluster):
    """The server's certificate is replaced by one the client's CA did not sign (a
    rotation gone wrong) while the pool runs. Once its connections are gone, leases
    fail at once with the TLS hint instead of waiting out acquire_timeout."""
    certs = tls_cluster.certs
    with tls_server(certs, "rotated") as cluster:
        url = (
            f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
            f"?sslmode=verify-full&sslrootcert={certs / 'ca.pem'}"
        )
        config = PoolConfig(acquire_timeout=20, min_size=1, max_size=2)
        async with ConnectionManager(url, config=config, degrade=False) as manager:
            async with manager.lease("tls") as lease:
                assert await lease.connection.fetchval("SELECT 1") == 1
            shutil.copy(certs / "impostor.crt", certs / "rotated-live.crt")
            shutil.copy(certs / "impostor.key", certs / "rotated-live.key")
            admin = await asyncpg.connect(cluster.dsn)
            try:
                await admin.execute("SELECT pg_reload_conf()")
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            finally:
                await admin.close()
            # The idle watch notices the terminated backend asynchronously; lease only
            # once the pool holds no connection from before the rotation.
            await wait_until(
                lambda: manager.stats()[0].idle == 0,
                what="the pool to drop its terminated connection",
            )
            started = time.monotonic()
            with pytest.raises(PoolUnavailable) as info:
                async with manager.lease("tls"):
                    pass
            waited = time.monotonic() - started
        assert waited < 5, f"waited {waited:.1f}s of the 20s acquire timeout"
        assert "sslrootcert" in str(info.value), str(info.value)
