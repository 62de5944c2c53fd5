"""Logs: every pool lifecycle event, as JSON lines, with pool and consumer, and the
password of the URL nowhere (a real server checks that password); console output on
a TTY; the lease context in the application's own events; the configure-once helper
(in a subprocess: structlog's configuration is process-wide)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest
import structlog

import connman.logging as cm_logging
from connman import AcquireTimeout, ConnectionManager, PoolConfig, resolve_storage
from connman.metrics import MetricsObserver
from tests.support.helpers import captured_logs

PASSWORD = f"Pw-{uuid.uuid4().hex[:12]}-logs"
ROLE = "log_app"


class Hooks(MetricsObserver):
    """Wakes the test on the pool events it waits for."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()
        self.seen: dict[str, int] = {}

    def _note(self, name: str) -> None:
        self.seen[name] = self.seen.get(name, 0) + 1
        self.changed.set()

    def leak_detected(self, pool: str, consumer: str) -> None:
        super().leak_detected(pool, consumer)
        self._note("leak")

    def connect_failed(self, pool: str) -> None:
        super().connect_failed(pool)
        self._note("connect_failed")

    def connection_opened(self, pool: str, seconds: float) -> None:
        super().connection_opened(pool, seconds)
        self._note("opened")

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed


@pytest.mark.postgres
async def test_lifecycle_events_as_json_without_the_password(postgres_cluster, tmp_path):
    if structlog.is_configured():
        pytest.skip("structlog is configured by the host: connman's own output is not used")
    admin = await asyncpg.connect(postgres_cluster.dsn)
    try:
        await admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        await anyio.to_thread.run_sync(postgres_cluster.require_password)
    finally:
        await admin.close()
    admin = await asyncpg.connect(postgres_cluster.dsn)
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{postgres_cluster.port}/postgres"
    hooks = Hooks()
    config = PoolConfig(
        min_size=1,
        max_size=2,
        leak_threshold=0.1,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
    )
    app_log = cm_logging.get_logger("app")
    with captured_logs("debug") as records:
        manager = ConnectionManager(url, config=config, observer=hooks)
        try:
            await manager.start()  # pool_created, connection_opened

            async with manager.lease("dgent"):
                app_log.info("app_work")  # the application's own event, inside a lease
                inside = structlog.contextvars.get_contextvars()
            assert "consumer" not in structlog.contextvars.get_contextvars()

            # connection_lost, logged while the lease of "brain" ends
            with pytest.raises(asyncpg.PostgresError):
                async with manager.lease("brain") as lease:
                    await lease.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")

            # acquire_timeout and leaks: both connections held past leak_threshold
            first = await manager.acquire("sqlalchemy")
            second = await manager.acquire("dgent")
            with pytest.raises(AcquireTimeout):
                async with manager.lease("brain", timeout=0.05):
                    pass
            await hooks.wait_for(lambda: hooks.seen.get("leak", 0) >= 2)
            await first.release()  # lease_returned_after_leak
            await second.release()

            # reconnect attempts: the role's backends are gone and it may open no more
            await admin.execute(f"ALTER ROLE {ROLE} CONNECTION LIMIT 0")
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1",
                ROLE,
            )
            opened = hooks.seen.get("opened", 0)

            async def lease_again() -> None:
                for _ in range(5):  # the dead connections are found one by one
                    try:
                        async with manager.lease("dgent", timeout=10) as lease:
                            await lease.connection.execute("SELECT 1")
                        return
                    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                        continue
                raise AssertionError("no lease after the reconnect")

            async with anyio.create_task_group() as tg:
                tg.start_soon(lease_again)
                await hooks.wait_for(lambda: hooks.seen.get("connect_failed", 0) >= 2)
                await admin.execute(f"ALTER ROLE {ROLE} CONNECTION LIMIT -1")
                await hooks.wait_for(lambda: hooks.seen.get("opened", 0) > opened)
        finally:
            await manager.aclose()  # connection_closed, pool_closed
            await admin.close()

        # storage_unreachable + storage_degraded: the wanted database and the unified
        # fallback do not answer, the portable file does
        env = {
            "KGENTS_DATABASE_URL": f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{_closed_port()}/x",
            "KGENTS_UNIFIED_URL": f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{_closed_port()}/x",
            "XDG_DATA_HOME": str(tmp_path),
        }
        storage = resolve_storage(env)
        degraded = ConnectionManager(storage, config=PoolConfig(connect_timeout=0.5))
        async with degraded:
            assert degraded.degraded

    raw = "\n".join(json.dumps(r) for r in records)
    assert PASSWORD not in raw
    events: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        events.setdefault(record["event"], []).append(record)
        assert {"level", "timestamp", "logger"} <= set(record), record

    pool = f"postgresql+asyncpg://{ROLE}:***@127.0.0.1:{postgres_cluster.port}/postgres"
    for name in (
        "pool_created",
        "connection_opened",
        "connection_closed",
        "connection_lost",
        "connect_failed",
        "reconnect_scheduled",
        "connect_recovered",
        "acquire_timeout",
        "lease_leak_suspected",
        "lease_returned_after_leak",
        "pool_closed",
    ):
        assert name in events, f"no {name} event in {sorted(events)}"
        assert any(e.get("pool") == pool for e in events[name]), events[name]
    assert events["connection_lost"][0]["consumer"] == "brain"
    assert events["acquire_timeout"][0]["consumer"] == "brain"
    assert {e["consumer"] for e in events["lease_leak_suspected"]} == {"sqlalchemy", "dgent"}
    assert "too many connections" in events["connect_failed"][0]["error"]
    # connection events belong to the pool, whatever lease's task started them
    for name in ("connect_failed", "reconnect_scheduled", "connect_recovered", "connection_opened"):
        assert all(e["consumer"] is None for e in events[name]), events[name]
    degraded_event = events["storage_degraded"][0]
    assert degraded_event["level"] == "warning"
    assert degraded_event["got_tier"] == "portable"
    assert "***" in degraded_event["wanted"]
    assert events["storage_unreachable"][0]["tier"] == "unified"

    # the lease context reached the application's own event
    assert inside == {"consumer": "dgent", "pool": pool}
    (app_event,) = events["app_work"]
    assert app_event["consumer"] == "dgent" and app_event["pool"] == pool


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_console_on_a_tty_json_otherwise_exceptions_redacted():
    if structlog.is_configured():
        pytest.skip("structlog is configured by the host: connman's own output is not used")
    log = cm_logging.get_logger("connman.test")
    secret = f"Pw-{uuid.uuid4().hex[:12]}-tty"
    for stream, is_json in ((_Tty(), False), (io.StringIO(), True)):
        cm_logging.configure(level="info", stream=stream)
        try:
            try:
                raise ConnectionError(f"cannot reach postgresql://u:{secret}@db:5432/x")
            except ConnectionError:
                log.exception("probe_failed", urls=[f"postgres://u:{secret}@h/db"])
        finally:
            cm_logging.configure()
        out = stream.getvalue()
        assert secret not in out, out
        assert "probe_failed" in out and "ConnectionError" in out and "***" in out
        if is_json:
            record = json.loads(out)
            assert record["level"] == "error" and "Traceback" in record["exception"]
        else:
            with pytest.raises(json.JSONDecodeError):
                json.loads(out.splitlines()[0])


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_setup_configures_structlog_once():
    secret = f"Pw-{uuid.uuid4().hex[:12]}-setup"
    result = _run(
        f"""
        import sys, structlog
        import connman.logging as L
        assert L.setup(level="info", stream=sys.stdout) is True
        assert L.setup(level="debug") is False          # configure-once
        log = structlog.get_logger("app")
        log.debug("hidden")
        tokens = L.bind_lease_context("brain", "postgresql+asyncpg://u:***@h/db")
        try:
            raise RuntimeError("postgresql://u:{secret}@h/db refused")
        except RuntimeError:
            log.exception("app_failed")
        L.unbind_lease_context(tokens)
        log.info("after", note="password={secret}")
        """
    )
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["event"] for r in lines] == ["app_failed", "after"]
    assert lines[0]["consumer"] == "brain" and "***" in lines[0]["exception"]
    assert "consumer" not in lines[1] and lines[1]["note"] == "password=***"


def test_setup_leaves_a_host_configuration_alone():
    result = _run(
        """
        import sys, structlog
        import connman.logging as L
        structlog.configure(processors=[structlog.processors.KeyValueRenderer()],
                            logger_factory=structlog.PrintLoggerFactory(sys.stdout))
        before = structlog.get_config()
        assert L.setup() is False
        assert structlog.get_config() == before
        assert L.setup(force=True) is True              # only when asked
        """
    )
    assert result.returncode == 0, result.stderr
