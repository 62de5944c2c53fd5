"""connman.metrics against a real PostgreSQL: /metrics scraped over HTTP while three
consumers work, parsed with prometheus_client's own parser; /healthz before and after
the server goes away; the ASGI app; several managers and event loops in threads."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from connman import AcquireTimeout, ConnectionManager, PoolConfig, PoolUnavailable
from connman import metrics as cm_metrics
from connman.metrics import METRICS, Metrics, MetricsObserver

PASSWORD = f"Pw-{uuid.uuid4().hex[:12]}-metrics"
ROLE = "metrics_app"
CONSUMERS = ("sqlalchemy", "dgent", "brain")


class WakingObserver(MetricsObserver):
    """The real observer, plus a wake-up for tests waiting on what it saw."""

    __slots__ = ("changed", "leaks", "lost")

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()
        self.leaks = 0
        self.lost = 0

    def leak_detected(self, pool: str, consumer: str) -> None:
        super().leak_detected(pool, consumer)
        self.leaks += 1
        self.changed.set()

    def connection_closed(self, pool: str, lost: bool) -> None:
        super().connection_closed(pool, lost)
        self.lost += lost
        self.changed.set()

    def connect_failed(self, pool: str) -> None:
        super().connect_failed(pool)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def _get(url: str) -> tuple[int, str, str]:
    """GET from a worker thread's point of view: (status, content type, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def fetch(url: str) -> tuple[int, str, str]:
    # The server thread takes the snapshot on this loop: never block the loop here.
    return await anyio.to_thread.run_sync(_get, url)


def samples_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    matches = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert len(matches) == 1, f"{name}{labels}: {matches} in {samples.get(name)}"
    return float(matches[0])


def check_histograms(samples: dict[str, Any], name: str) -> None:
    """Cumulative buckets, +Inf equal to _count, a non-negative _sum, per series."""
    series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    for labels, v in samples[f"{name}_bucket"]:
        key = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        series.setdefault(key, []).append((float(labels["le"]), v))
    assert series, name
    for key, buckets in series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), (name, key, buckets)
        assert buckets[-1][0] == float("inf")
        assert value(samples, f"{name}_count", **dict(key)) == counts[-1]
        assert value(samples, f"{name}_sum", **dict(key)) >= 0


# Exported per read replica only (tests/faults/test_replicas.py scrapes them).
REPLICA_ONLY = {"connman_replica_in_rotation", "connman_replica_lag_seconds"}


def assert_documented_metrics_present(samples: dict[str, Any]) -> None:
    for doc in METRICS:
        if doc.name in REPLICA_ONLY:
            continue
        names = (
            [f"{doc.name}_bucket", f"{doc.name}_count", f"{doc.name}_sum"]
            if doc.type == "histogram"
            else [doc.name]
        )
        for name in names:
            assert name in samples, f"{name} missing from the scrape"
            for labels, _ in samples[name]:
                assert set(labels) - {"le"} == set(doc.labels), (name, labels)


async def secret_url(cluster: Any) -> str:
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
    finally:
        await admin.close()
    await anyio.to_thread.run_sync(cluster.require_password)
    return f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{cluster.port}/postgres"


@pytest.mark.postgres
async def test_scrape_while_three_consumers_work(postgres_cluster):
    url = await secret_url(postgres_cluster)
    registry = CollectorRegistry()
    observer = WakingObserver()
    metrics = Metrics(registry, observer=observer)
    config = PoolConfig(
        min_size=2,
        max_size=4,
        consumer_limits={"brain": 1},
        leak_threshold=0.2,
        reconnect_initial_delay=0.01,
        reconnect_max_delay=0.05,
    )
    manager = ConnectionManager(url, config=config, observer=observer)
    metrics.instrument(manager)
    server = cm_metrics.start_http_server(0, metrics=metrics, registry=registry)
    try:
        await manager.start()

        # -- work: three consumers, 30 leases each, interleaved
        async def work(consumer: str) -> None:
            for i in range(30):
                async with manager.lease(consumer) as lease:
                    assert await lease.connection.fetchval("SELECT $1::int", i) == i

        async with anyio.create_task_group() as tg:
            for consumer in CONSUMERS:
                tg.start_soon(work, consumer)

        # -- a connection lost mid-lease (its backend terminated)
        with pytest.raises(asyncpg.PostgresError):
            async with manager.lease("dgent") as lease:
                await lease.connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        await observer.wait_for(lambda: observer.lost == 1)  # dropped in the background

        # -- a known state to scrape: every connection out, one waiter, one timeout
        held = [
            await manager.acquire("sqlalchemy"),
            await manager.acquire("sqlalchemy"),
            await manager.acquire("dgent"),
            await manager.acquire("brain"),
        ]
        with pytest.raises(AcquireTimeout):  # brain is at its limit of 1
            await manager.acquire("brain", timeout=0.05)
        waiter_done = anyio.Event()

        async def waiter() -> None:
            async with manager.lease("dgent", timeout=10):
                pass
            waiter_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await observer.wait_for(lambda: observer.leaks >= 4)  # all four held > 0.2 s
            while manager.stats()[0].waiting < 1:  # the waiter queued (one hop)
                await asyncio.sleep(0)

            status, ctype, text = await fetch(server.url + "/metrics")
            assert status == 200 and ctype.startswith("text/plain")
            for lease in held:
                await lease.release()
        await waiter_done.wait()

        # -- nothing secret anywhere in the exposition
        assert PASSWORD not in text
        samples = samples_of(text)
        for name, series in samples.items():
            for labels, _ in series:
                for label_value in labels.values():
                    assert PASSWORD not in label_value, (name, labels)

        assert_documented_metrics_present(samples)
        pool = manager.stats()[0].name
        assert pool == f"postgresql+asyncpg://{ROLE}:***@127.0.0.1:{postgres_cluster.port}/postgres"
        v = lambda name, **labels: value(samples, name, pool=pool, **labels)  # noqa: E731

        assert v("connman_pool_connections", state="used") == 4
        assert v("connman_pool_connections", state="idle") == 0
        assert v("connman_pool_connections_max") == 4
        assert v("connman_pool_connections_min") == 2
        assert v("connman_pool_pending_requests") == 1
        assert v("connman_pool_up") == 1
        assert v("connman_consumer_leases", consumer="sqlalchemy") == 2
        assert v("connman_consumer_leases", consumer="dgent") == 1
        assert v("connman_consumer_leases", consumer="brain") == 1
        assert v("connman_consumer_pending_requests", consumer="dgent") == 1
        assert v("connman_consumer_pending_requests", consumer="brain") == 0
        assert v("connman_consumer_limit", consumer="brain") == 1
        assert v("connman_pool_timeouts_total", consumer="brain") == 1
        assert v("connman_pool_timeouts_total", consumer="dgent") == 0
        assert v("connman_pool_unavailable_total", consumer="brain") == 0
        assert sum(v("connman_pool_leaks_total", consumer=c) for c in CONSUMERS) >= 4
        assert v("connman_pool_connections_lost_total") == 1
        assert v("connman_pool_connection_errors_total") == 0
        opened = v("connman_pool_connections_opened_total")
        closed = v("connman_pool_connections_closed_total")
        assert opened - closed == 4  # all open connections are lent
        assert v("connman_pool_create_time_seconds_count") == opened
        assert v("connman_pool_resets_total") >= 0
        assert v("connman_pool_health_check_failures_total") >= 0
        for consumer in CONSUMERS:
            # 30 leases each (+ the lost one and the held ones)
            assert v("connman_pool_wait_time_seconds_count", consumer=consumer) >= 30
            assert v("connman_pool_use_time_seconds_count", consumer=consumer) >= 30
        for name in (
            "connman_pool_wait_time_seconds",
            "connman_pool_use_time_seconds",
            "connman_pool_create_time_seconds",
        ):
            check_histograms(samples, name)
        info = samples["connman_storage_info"]
        assert info == [
            (
                {
                    "pool": pool,
                    "tier": "unified",
                    "dialect": "postgresql",
                    "source": "url",
                    "degraded": "false",
                    "requested_tier": "unified",
                },
                1.0,
            )
        ]

        # -- /healthz: every pool serves
        status, ctype, body = await fetch(server.url + "/healthz")
        assert (status, ctype) == (200, "application/json")
        health = json.loads(body)
        assert health["status"] == "ok" and health["pools"][0]["pool"] == pool

        # -- the server goes away: 503 with the reason, still no password
        await anyio.to_thread.run_sync(postgres_cluster.stop)
        with pytest.raises(Exception):  # noqa: B017,PT011 - lost connection or unavailable
            async with manager.lease("dgent", timeout=2) as lease:
                await lease.connection.execute("SELECT 1")
        await observer.wait_for(lambda: not metrics.health().ok)
        status, _, body = await fetch(server.url + "/healthz")
        assert status == 503, body
        health = json.loads(body)
        assert health["status"] == "unavailable"
        assert "unreachable" in health["reason"] and pool in health["reason"]
        assert PASSWORD not in body
        _, _, text = await fetch(server.url + "/metrics")
        assert PASSWORD not in text
        samples = samples_of(text)
        assert value(samples, "connman_pool_up", pool=pool) == 0
        assert value(samples, "connman_pool_connection_errors_total", pool=pool) >= 1

        # -- a closed manager is forgotten: nothing left to serve
        await manager.aclose(timeout=1)
        status, _, body = await fetch(server.url + "/healthz")
        assert status == 503 and "no open ConnectionManager" in body
        status, _, _ = await fetch(server.url + "/nothing-here")
        assert status == 404
    finally:
        server.close()
        await manager.aclose(timeout=1)


# ---------------------------------------------------------------- without a server


async def _call_asgi(app: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None):
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": headers or []}
    await app(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"].decode()


async def test_asgi_app_and_several_managers(tmp_path):
    """Two managers on one SQLite file share a pool name: their gauges are summed into
    one series (a duplicate series would be an invalid exposition)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    one = ConnectionManager(url, observer=metrics.observer)
    two = ConnectionManager(url, observer=metrics.observer)
    app = cm_metrics.make_asgi_app(metrics)
    status, _, body = await _call_asgi(app, "/healthz")
    assert status == 503 and "no open ConnectionManager" in body
    async with one, two:
        metrics.instrument(one)
        metrics.instrument(two)
        async with one.lease("a"), two.lease("a"), two.lease("b"):
            status, headers, text = await _call_asgi(app, "/metrics")
        assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
        samples = samples_of(text)
        seen = [(n, tuple(sorted(lab.items()))) for n, s in samples.items() for lab, _ in s]
        assert len(seen) == len(set(seen)), "duplicate series"
        pool = one.stats()[0].name
        assert value(samples, "connman_consumer_leases", pool=pool, consumer="a") == 2
        assert value(samples, "connman_consumer_leases", pool=pool, consumer="b") == 1
        assert value(samples, "connman_pool_connections_max", pool=pool) == 20
        assert value(samples, "connman_pool_wait_time_seconds_count", pool=pool, consumer="a") == 2
        assert value(samples, "connman_pool_up", pool=pool) == 1
        assert len(samples["connman_storage_info"]) == 1  # same labels: one series

        status, _, body = await _call_asgi(app, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, headers, text = await _call_asgi(
            app, "/metrics", [(b"accept", b"application/openmetrics-text; version=1.0.0")]
        )
        assert headers[b"content-type"].startswith(b"application/openmetrics-text")
        assert text.rstrip().endswith("# EOF")
        status, _, _ = await _call_asgi(app, "/other")
        assert status == 404


def test_manager_on_a_loop_in_another_thread(tmp_path):
    """A scrape from another thread takes the snapshot on the manager's own loop; a
    loop blocked by synchronous code makes /healthz answer 503, not hang."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, stats_timeout=0.5)
    manager = ConnectionManager(f"sqlite+aiosqlite:///{tmp_path}/t.db", observer=metrics.observer)
    metrics.instrument(manager)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    unblock = threading.Event()
    try:
        asyncio.run_coroutine_threadsafe(manager.start(), loop).result(10)
        lease = asyncio.run_coroutine_threadsafe(manager.acquire("far"), loop).result(10)
        samples = samples_of(generate_latest(registry).decode())
        pool = manager.stats()[0].name
        assert value(samples, "connman_consumer_leases", pool=pool, consumer="far") == 1
        assert metrics.health().ok
        asyncio.run_coroutine_threadsafe(lease.release(), loop).result(10)

        blocked = threading.Event()

        def block() -> None:
            blocked.set()
            unblock.wait(10)

        loop.call_soon_threadsafe(block)
        blocked.wait(10)
        health = metrics.health()
        assert not health.ok and "did not answer" in health.reason
        generate_latest(registry)  # a scrape skips the stuck manager, does not fail
    finally:
        unblock.set()
        asyncio.run_coroutine_threadsafe(manager.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_histogram_buckets_are_le():
    """A sample equal to a bound counts in that bound's bucket (Prometheus' ``le``)."""
    observer = MetricsObserver(buckets=(0.1, 1.0))
    for wait in (0.0, 0.1, 0.5, 1.0, 7.0):
        observer.lease_acquired("p", "c", wait)
    registry = CollectorRegistry()
    Metrics(registry, observer=observer)
    samples = samples_of(generate_latest(registry).decode())
    buckets = {lab["le"]: v for lab, v in samples["connman_pool_wait_time_seconds_bucket"]}
    assert buckets == {"0.1": 2.0, "1.0": 4.0, "+Inf": 5.0}
    assert value(samples, "connman_pool_wait_time_seconds_sum", pool="p", consumer="c") == 8.6
    with pytest.raises(ValueError, match="strictly increasing"):
        MetricsObserver(buckets=(1.0, 0.5))


def test_default_metrics_registers_once():
    from prometheus_client import REGISTRY

    assert cm_metrics.default_metrics() is cm_metrics.default_metrics()
    assert cm_metrics.observer() is cm_metrics.default_metrics().observer
    names = {m.name for m in REGISTRY.collect()}
    assert "connman_pool_connections" in names


async def test_instrument_gives_a_manager_without_observer_the_histograms(
    tmp_path: Any,
) -> None:
    """get_manager() builds its manager without an observer; instrument() attaches one,
    so its leases show up in the wait/use time histograms."""
    registry = CollectorRegistry()
    m = Metrics(registry)
    async with ConnectionManager(f"sqlite:///{tmp_path}/o.db", degrade=False) as manager:
        m.instrument(manager)
        async with manager.lease("late"):
            pass
        text = await anyio.to_thread.run_sync(lambda: generate_latest(registry).decode())
    assert 'connman_pool_use_time_seconds_count{consumer="late"' in text


# ------------------------------------------------------- readiness of the default store


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_healthz_is_503_before_start_and_after_a_failed_start():
    """A strict manager whose database cannot be reached: /healthz must not say OK,
    neither before its first pool nor after start() failed; the reason says why."""
    metrics = Metrics(CollectorRegistry())
    app = cm_metrics.make_asgi_app(metrics)
    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{_closed_port()}/app"
    manager = ConnectionManager(url, config=PoolConfig(connect_timeout=2))  # strict
    metrics.instrument(manager)
    try:
        status, _, body = await _call_asgi(app, "/healthz")
        assert status == 503, body
        health = json.loads(body)
        assert health["status"] == "unavailable" and "not started" in health["reason"]

        with pytest.raises(PoolUnavailable):
            await manager.start()
        status, _, body = await _call_asgi(app, "/healthz")
        assert status == 503, body
        health = json.loads(body)
        assert "start failed (unreachable)" in health["reason"]
        assert "127.0.0.1" in health["reason"] and health["degraded"] is False
        assert PASSWORD not in body
    finally:
        await manager.aclose()


async def test_healthz_says_degraded_with_the_reason(tmp_path):
    """Serving from the portable fallback: 200 (it serves), but degraded and why."""
    from connman import resolve_storage

    env = {
        "KGENTS_DATABASE_URL": f"postgresql://app:{PASSWORD}@127.0.0.1:{_closed_port()}/app",
        "XDG_DATA_HOME": str(tmp_path),
    }
    metrics = Metrics(CollectorRegistry())
    app = cm_metrics.make_asgi_app(metrics)
    config = PoolConfig(connect_timeout=2)
    async with ConnectionManager(resolve_storage(env), config=config) as manager:
        metrics.instrument(manager)
        assert manager.degraded
        status, _, body = await _call_asgi(app, "/healthz")
    assert status == 200, body
    health = json.loads(body)
    assert health["status"] == "ok" and health["degraded"] is True
    assert "degraded: serving from sqlite" in health["reason"]
    assert "ConnectionRefusedError" in health["reason"]
    assert PASSWORD not in body
