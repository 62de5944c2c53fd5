"""connman through a real PgBouncer in transaction mode, configured from
deploy/pgbouncer/pgbouncer.ini (only addresses, ports and paths replaced), in front
of a throwaway cluster: it works with ``statement_cache_size=0``, and without it the
trap the config file warns about is real (asyncpg's named prepared statements end up
on server connections that do not know them)."""

from __future__ import annotations

import configparser
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from connman import ConnectionManager, PoolConfig
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import throwaway_cluster
from tests.support.pgbouncer_load import run_load

pytestmark = pytest.mark.postgres

DEPLOY_INI = Path(__file__).parents[2] / "deploy" / "pgbouncer" / "pgbouncer.ini"
USER, PASSWORD = "kgents", "kgents-bouncer-pw"


class Bouncer:
    """A pgbouncer process of this test's own (as the ``postgres`` user when root:
    pgbouncer refuses to run as root)."""

    def __init__(self, binary: str, cluster_port: int, pool_size: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="connman-pgbouncer-"))
        self.port = _free_port()
        ini = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
        ini.read(DEPLOY_INI)
        self.settings = dict(ini["pgbouncer"])
        ini["databases"] = {"kgents": f"host=127.0.0.1 port={cluster_port} dbname=kgents"}
        ini["pgbouncer"].update(
            listen_addr="127.0.0.1",
            listen_port=str(self.port),
            unix_socket_dir="",
            auth_file=str(self.dir / "userlist.txt"),
            logfile=str(self.dir / "pgbouncer.log"),
            pidfile=str(self.dir / "pgbouncer.pid"),
            default_pool_size=str(pool_size),
            min_pool_size="0",
            reserve_pool_size="0",
        )
        (self.dir / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
        with open(self.dir / "pgbouncer.ini", "w") as f:
            ini.write(f)
        as_user: dict[str, object] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.process = subprocess.Popen(
            [binary, str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            **as_user,
        )
        self._wait_listening()

    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/kgents"

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                out = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"pgbouncer exited ({self.process.returncode}): {out}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("pgbouncer does not listen after 10 s") from None
                time.sleep(0.02)  # poll for the port: pgbouncer has no readiness signal

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: pgbouncer's immediate shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One throwaway cluster for the module (each test starts its own pgbouncer)."""
    with throwaway_cluster(
        f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'", f"CREATE DATABASE kgents OWNER {USER}"
    ) as local:
        yield local


@pytest.fixture
def bouncer(cluster, find_tool) -> Iterator[Callable[[int], Bouncer]]:
    """``bouncer(pool_size)``: a started pgbouncer in front of ``cluster``."""
    binary = find_tool("pgbouncer", "/usr/sbin/pgbouncer", package="pgbouncer")
    started: list[Bouncer] = []

    def start(pool_size: int) -> Bouncer:
        b = Bouncer(binary, cluster.port, pool_size)
        started.append(b)
        return b

    try:
        yield start
    finally:
        for b in started:
            b.stop()


def test_deploy_config_is_transaction_mode():
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    ini.read(DEPLOY_INI)
    assert ini["pgbouncer"]["pool_mode"] == "transaction"
    assert ini["pgbouncer"]["listen_port"] == "6432"
    assert "KGENTS_POOL_PGBOUNCER=transaction" in DEPLOY_INI.read_text()


def test_connman_through_pgbouncer_with_the_statement_cache_off(bouncer, cluster):
    b = bouncer(2)
    assert b.settings["pool_mode"] == "transaction"

    async def run() -> tuple[int, int]:
        config = PoolConfig(statement_cache_size=0, min_size=0, max_size=8)
        async with ConnectionManager(b.url(), config=config) as manager:

            async def work(consumer: str, n: int) -> None:
                for i in range(25):
                    async with manager.lease(consumer) as lease:
                        conn = lease.connection
                        assert await conn.fetchval("SELECT $1::int * 2", i + n) == 2 * (i + n)
                        async with conn.transaction():
                            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
                            await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,)])
                            assert await conn.fetchval("SELECT sum(x) FROM t") >= 3
                            await conn.execute("DROP TABLE t")

            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(work, ("sqlalchemy", "dgent", "brain")[n % 3], n)
            clients = manager.stats()[0].size
            admin = await asyncpg.connect(cluster.dsn)
            try:
                servers = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", USER
                )
            finally:
                await admin.close()
            return clients, servers

    clients, servers = anyio.run(run)
    # 8 connman connections were multiplexed onto at most 2 server connections
    assert clients == 8 and servers <= 2


def test_statement_cache_on_breaks_behind_pgbouncer(bouncer):
    """The trap: with the statement cache on, asyncpg prepares a named statement on
    one server connection and later uses it on another, which does not know it.
    (``pgbouncer="off"`` skips the check that keeps the cache off by default.)"""
    b = bouncer(2)

    async def run() -> None:
        config = PoolConfig(statement_cache_size=100, min_size=2, max_size=2, pgbouncer="off")
        async with ConnectionManager(b.url(), config=config) as manager:
            one = await manager.acquire("a")
            two = await manager.acquire("b")
            try:
                # prepared (and cached) on the only server connection, S1
                assert await one.connection.fetchval("SELECT $1::int", 1) == 1
                # another client takes S1 for a transaction...
                async with two.connection.transaction():
                    await two.connection.execute("SELECT 1")
                    # ...so the cached statement runs on a new server connection
                    with pytest.raises(asyncpg.PostgresError, match="prepared statement"):
                        await one.connection.fetchval("SELECT $1::int", 2)
            finally:
                await one.release(failed=True)
                await two.release()

    anyio.run(run)


def test_default_settings_through_transaction_mode_give_no_wrong_answer(bouncer):
    """Issue 11: 4 processes x pool 10 x 16 tasks through transaction mode with the
    default settings (statement cache on) ran statements under other clients' names:
    wrong answers with no error, and protocol errors. Each new connection now sees
    that a pooler answers for the server and keeps the cache off."""
    b = bouncer(4)
    figures = run_load(b.url(), processes=4, tasks=16, ops=100)
    print(f"through pgbouncer, default settings: {figures}")
    assert figures["wrong"] == 0, figures
    assert figures["errors"] == {}, figures
    assert figures["completed"] == figures["operations"] == 4 * 16 * 100


def test_sqlalchemy_with_default_settings_through_transaction_mode(bouncer):
    """The SQLAlchemy adapter prepares statements of its own (named, cached per
    connection): on a connection where connman keeps its cache off, so does it."""
    from sqlalchemy import text

    from connman.adapters.sqlalchemy import create_async_engine

    b = bouncer(2)

    async def run() -> list[BaseException]:
        errors: list[BaseException] = []
        async with ConnectionManager(b.url(), config=PoolConfig(min_size=0)) as manager:
            engine = create_async_engine(manager)

            async def work(n: int) -> None:
                for i in range(20):
                    k = n * 100 + i
                    query = ("SELECT CAST(:k AS int) * 3", "SELECT CAST(:k AS int) + 1")[i % 2]
                    try:
                        async with engine.connect() as conn:
                            value = await conn.scalar(text(query), {"k": k})
                        assert value == (3 * k if i % 2 == 0 else k + 1), (query, k, value)
                    except Exception as exc:
                        errors.append(exc)

            async with anyio.create_task_group() as tg:
                for n in range(8):
                    tg.start_soon(work, n)
            await engine.dispose()
        return errors

    errors = anyio.run(run)
    assert not errors, f"{len(errors)} failed, e.g. {errors[0]!r}"
