"""Prometheus metrics, ``/healthz``, and the HTTP endpoint that serves them.

Two halves, so that the lease path stays cheap:

- :class:`MetricsObserver` is the :class:`~connman.stats.PoolObserver` a manager is
  built with (``ConnectionManager(url, observer=connman.metrics.observer())``). On the
  hot path it only adds to plain integers: per (pool, consumer) histogram buckets
  (a ``bisect`` into fixed bounds) and a few counters. No lock: a pool runs on one
  event loop, and a scrape copies the lists (one C-level copy under the GIL).
- :class:`Metrics` is a prometheus_client collector. At scrape time it reads
  ``manager.stats()`` of every instrumented manager (on the manager's own event loop,
  so a snapshot is never taken while the loop is half-way through a handoff) and the
  observer's numbers, and yields metric families.

Usage::

    from connman import ConnectionManager, metrics

    manager = ConnectionManager(observer=metrics.observer())
    metrics.instrument(manager)                 # gauges read from manager.stats()
    server = metrics.start_http_server()        # http://127.0.0.1:9464/metrics, /healthz

or, for both at once (what ``connman demo`` uses)::

    server = metrics.serve_metrics(manager, port=9464)
    ...
    server.close()

Every metric is listed in :data:`METRICS` (name, type, labels, meaning). Label
``pool`` is the pool's name: its redacted URL unless configured, never a password.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import threading
import weakref
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder
from prometheus_client.registry import REGISTRY, CollectorRegistry

from connman import stats as S
from connman.logging import get_logger
from connman.urls import redact_text

if TYPE_CHECKING:
    from connman.manager import ConnectionManager
    from connman.stats import PoolStats

__all__ = [
    "CREATE_BUCKETS",
    "DEFAULT_PORT",
    "LEASE_BUCKETS",
    "METRICS",
    "Health",
    "MetricDoc",
    "Metrics",
    "MetricsObserver",
    "MetricsServer",
    "default_metrics",
    "instrument",
    "make_asgi_app",
    "make_wsgi_app",
    "observer",
    "serve_metrics",
    "start_http_server",
]

DEFAULT_PORT: Final = 9464
"""The port OpenTelemetry's Prometheus exporter uses by default."""

LEASE_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the wait and use time histograms: a lease from an idle
connection waits microseconds, the default acquire deadline is 30 s."""

CREATE_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the connection create time histogram."""


@dataclass(frozen=True, slots=True)
class MetricDoc:
    """One exported metric, as documented in the README."""

    name: str
    """The name as scraped (counters with ``_total``; histograms add ``_bucket``,
    ``_sum``, ``_count``; info metrics end in ``_info``)."""
    type: str
    labels: tuple[str, ...]
    help: str
    otel: str = ""
    """The OpenTelemetry database-pool metric it corresponds to, if any."""


_P = ("pool",)
_PC = ("pool", "consumer")

METRICS: Final[tuple[MetricDoc, ...]] = (
    MetricDoc(
        "connman_pool_connections",
        "gauge",
        ("pool", "state"),
        "Open connections by state: idle (in the pool) or used (lent, or being cleaned).",
        "db.client.connection.count",
    ),
    MetricDoc(
        "connman_pool_connections_max",
        "gauge",
        _P,
        "Most connections the pool may open (max_size).",
        "db.client.connection.max",
    ),
    MetricDoc(
        "connman_pool_connections_min",
        "gauge",
        _P,
        "Connections the pool keeps open when idle (min_size).",
        "db.client.connection.idle.min",
    ),
    MetricDoc(
        "connman_pool_pending_requests",
        "gauge",
        _P,
        "Acquires waiting for a connection.",
        "db.client.connection.pending_requests",
    ),
    MetricDoc(
        "connman_pool_up",
        "gauge",
        _P,
        "1 when the pool can serve leases; 0 when it is closed, or has no connection "
        "and its last connection attempt failed (what /healthz checks).",
    ),
    MetricDoc(
        "connman_consumer_leases",
        "gauge",
        _PC,
        "Leases in use per consumer (0 for consumers seen before).",
    ),
    MetricDoc(
        "connman_consumer_pending_requests",
        "gauge",
        _PC,
        "Acquires waiting per consumer.",
    ),
    MetricDoc(
        "connman_consumer_limit",
        "gauge",
        _PC,
        "Most leases a consumer may hold at once (only consumers with a limit).",
    ),
    MetricDoc(
        "connman_replica_in_rotation",
        "gauge",
        _P,
        "Per read replica: 1 while it serves read-only leases; 0 while it is out "
        "(lagging beyond max_lag, promoted, or not answering).",
    ),
    MetricDoc(
        "connman_replica_lag_seconds",
        "gauge",
        _P,
        "Per read replica: how far its replay was behind the primary at the last check.",
    ),
    MetricDoc(
        "connman_storage_info",
        "info",
        ("pool", "tier", "dialect", "source", "degraded", "requested_tier"),
        "Storage a manager runs on: the default pool, its tier, dialect, where the URL "
        "came from, and whether it is a fallback (degraded=true) for requested_tier.",
    ),
    MetricDoc(
        "connman_pool_wait_time_seconds",
        "histogram",
        _PC,
        "Time to obtain a connection (acquire wait), per consumer.",
        "db.client.connection.wait_time",
    ),
    MetricDoc(
        "connman_pool_use_time_seconds",
        "histogram",
        _PC,
        "Time between acquire and release of a lease, per consumer.",
        "db.client.connection.use_time",
    ),
    MetricDoc(
        "connman_pool_create_time_seconds",
        "histogram",
        _P,
        "Time to open a new connection.",
        "db.client.connection.create_time",
    ),
    MetricDoc(
        "connman_pool_timeouts_total",
        "counter",
        _PC,
        "Acquires that failed with AcquireTimeout.",
        "db.client.connection.timeouts",
    ),
    MetricDoc(
        "connman_pool_unavailable_total",
        "counter",
        _PC,
        "Acquires that failed with PoolUnavailable (database unreachable).",
    ),
    MetricDoc(
        "connman_pool_leaks_total",
        "counter",
        _PC,
        "Leases held longer than leak_threshold.",
    ),
    MetricDoc(
        "connman_pool_reads_total",
        "counter",
        ("pool", "role"),
        "Read-only leases (lease(readonly=True)) served per pool; role is primary or "
        "replica. Reads on the primary while replicas are configured are fallbacks.",
    ),
    MetricDoc(
        "connman_pool_connections_opened_total",
        "counter",
        _P,
        "Connections opened.",
    ),
    MetricDoc(
        "connman_pool_connections_closed_total",
        "counter",
        _P,
        "Connections that left the pool, for any reason (opened - closed = open now).",
    ),
    MetricDoc(
        "connman_pool_connections_lost_total",
        "counter",
        _P,
        "Of the closed connections, those found dead (server restart, terminated backend).",
    ),
    MetricDoc(
        "connman_pool_connection_errors_total",
        "counter",
        _P,
        "Failed connection attempts.",
    ),
    MetricDoc(
        "connman_pool_resets_total",
        "counter",
        _P,
        "Releases that needed a round trip to clean the connection (ROLLBACK, RESET ALL).",
    ),
    MetricDoc(
        "connman_pool_health_check_failures_total",
        "counter",
        _P,
        "Pings of idle connections that failed (the connection was replaced).",
    ),
)
"""Every metric connman exports. Counters from the observer start at 0 for every
(pool, consumer) that has leased; histograms and consumer counters need the manager
to be built with ``observer=``."""


# ====================================================================== hot path


class _Histogram:
    """Bucket counts in plain ints (``counts[i]``: samples <= bounds[i]; the last
    slot is +Inf, not cumulative) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)
        self.sum = 0.0


class MetricsObserver:
    """The :class:`~connman.stats.PoolObserver` behind connman's histograms and
    per-consumer counters. Called on the lease path: each call is a dict lookup, a
    ``bisect`` and two additions.

    One observer may serve several managers (the pools are told apart by name). It
    takes no lock: use it from managers on one event loop, or accept that two loops
    in two threads updating the same (pool, consumer) at the same instant may lose
    an increment.
    """

    __slots__ = ("_bounds", "_create", "_create_bounds", "_failures", "_leaks", "_use", "_wait")

    def __init__(
        self,
        buckets: Sequence[float] = LEASE_BUCKETS,
        create_buckets: Sequence[float] = CREATE_BUCKETS,
    ) -> None:
        self._bounds = _check_bounds(buckets)
        self._create_bounds = _check_bounds(create_buckets)
        self._wait: dict[tuple[str, str], _Histogram] = {}
        self._use: dict[tuple[str, str], _Histogram] = {}
        self._create: dict[str, _Histogram] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._leaks: dict[tuple[str, str], int] = {}

    # -- PoolObserver ------------------------------------------------------------------

    def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
        key = (pool, consumer)
        hist = self._wait.get(key)
        if hist is None:
            hist = self._wait[key] = _Histogram(len(self._bounds))
        hist.counts[bisect_left(self._bounds, wait)] += 1
        hist.sum += wait

    def lease_released(self, pool: str, consumer: str, used: float) -> None:
        key = (pool, consumer)
        hist = self._use.get(key)
        if hist is None:
            hist = self._use[key] = _Histogram(len(self._bounds))
        hist.counts[bisect_left(self._bounds, used)] += 1
        hist.sum += used

    def acquire_failed(self, pool: str, consumer: str, reason: str) -> None:
        key = (pool, consumer, reason)
        self._failures[key] = self._failures.get(key, 0) + 1

    def connection_opened(self, pool: str, seconds: float) -> None:
        hist = self._create.get(pool)
        if hist is None:
            hist = self._create[pool] = _Histogram(len(self._create_bounds))
        hist.counts[bisect_left(self._create_bounds, seconds)] += 1
        hist.sum += seconds

    def connection_closed(self, pool: str, lost: bool) -> None:
        """Counted by the pool itself (``stats().counters``): nothing to do here."""

    def connect_failed(self, pool: str) -> None:
        """Counted by the pool itself (``stats().counters``): nothing to do here."""

    def leak_detected(self, pool: str, consumer: str) -> None:
        key = (pool, consumer)
        self._leaks[key] = self._leaks.get(key, 0) + 1

    # -- read side (any thread) ----------------------------------------------------------

    def consumers(self) -> set[tuple[str, str]]:
        """Every (pool, consumer) seen so far."""
        seen = set(self._wait.copy())
        seen.update(self._use.copy())
        seen.update((p, c) for p, c, _ in self._failures.copy())
        seen.update(self._leaks.copy())
        return seen

    def _families(self) -> Iterator[Metric]:
        wait = _histogram_family("connman_pool_wait_time_seconds", _PC)
        for key, hist in sorted(self._wait.copy().items()):
            _add_histogram(wait, key, self._bounds, hist)
        yield wait
        use = _histogram_family("connman_pool_use_time_seconds", _PC)
        for key, hist in sorted(self._use.copy().items()):
            _add_histogram(use, key, self._bounds, hist)
        yield use
        create = _histogram_family("connman_pool_create_time_seconds", _P)
        for pool, hist in sorted(self._create.copy().items()):
            _add_histogram(create, (pool,), self._create_bounds, hist)
        yield create

        known = self.consumers()
        failures = self._failures.copy()
        for reason, name in (
            ("timeout", "connman_pool_timeouts_total"),
            ("unavailable", "connman_pool_unavailable_total"),
        ):
            family = _counter_family(name, _PC)
            for pool, consumer in sorted(known):
                family.add_metric([pool, consumer], failures.get((pool, consumer, reason), 0))
            yield family
        leaks = self._leaks.copy()
        family = _counter_family("connman_pool_leaks_total", _PC)
        for pool, consumer in sorted(known):
            family.add_metric([pool, consumer], leaks.get((pool, consumer), 0))
        yield family


def _go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (``0.005``, ``1.0``)."""
    return repr(float(value))


def _check_bounds(bounds: Sequence[float]) -> tuple[float, ...]:
    out = tuple(float(b) for b in bounds)
    if not out or list(out) != sorted(set(out)) or out[-1] == float("inf"):
        raise ValueError(f"buckets must be finite, strictly increasing and non-empty: {bounds!r}")
    return out


# ====================================================================== collector

_DOCS: Final = {doc.name: doc for doc in METRICS}


def _family_name(name: str) -> str:
    """prometheus_client wants counters without ``_total`` and info without ``_info``."""
    doc = _DOCS[name]
    if doc.type == "counter":
        return name.removesuffix("_total")
    if doc.type == "info":
        return name.removesuffix("_info")
    return name


def _gauge_family(name: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, _DOCS[name].help, labels=labels)


def _counter_family(name: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(_family_name(name), _DOCS[name].help, labels=labels)


def _histogram_family(name: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, _DOCS[name].help, labels=labels, unit="seconds")


def _add_histogram(
    family: HistogramMetricFamily,
    labels: Sequence[str],
    bounds: tuple[float, ...],
    hist: _Histogram,
) -> None:
    counts = hist.counts.copy()  # one consistent copy: buckets agree with the count
    total = hist.sum
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        buckets.append((_go_float(bound), running))
    buckets.append(("+Inf", running + counts[-1]))
    family.add_metric(list(labels), buckets, total)


# Counters read from PoolStats.counters at scrape time: (metric, counter name).
_STATS_COUNTERS: Final = (
    ("connman_pool_connections_opened_total", S.CONNECTIONS_OPENED),
    ("connman_pool_connections_closed_total", S.CONNECTIONS_CLOSED),
    ("connman_pool_connections_lost_total", S.CONNECTIONS_LOST),
    ("connman_pool_connection_errors_total", S.CONNECT_ERRORS),
    ("connman_pool_resets_total", S.RESETS),
    ("connman_pool_health_check_failures_total", S.HEALTH_CHECKS_FAILED),
)


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` answers: ``ok`` (HTTP 200) or not (503, with ``reason``)."""

    ok: bool
    reason: str
    pools: tuple[Mapping[str, Any], ...] = ()
    degraded: bool = False
    """Serving, but from a fallback store rather than the one configured."""

    def to_json(self) -> bytes:
        body = {
            "status": "ok" if self.ok else "unavailable",
            "reason": self.reason,
            "degraded": self.degraded,
            "pools": list(self.pools),
        }
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def pool_problem(stats: PoolStats) -> str | None:
    """Why a pool cannot serve leases, or None when it can."""
    if stats.closed:
        return "closed"
    if stats.size == 0 and stats.last_error is not None:
        return f"unreachable: {stats.last_error}"
    return None


class Metrics:
    """connman's prometheus_client collector: reads ``stats()`` of every instrumented
    manager at scrape time, and the numbers of its :attr:`observer`.

    Args:
        registry: where to register (``None``: do not register; default: the
            process-wide ``prometheus_client.REGISTRY``, next to the application's
            own metrics).
        observer: the observer whose numbers to export (default: a new one).
        stats_timeout: how long a scrape waits for a manager's event loop to take
            the snapshot (a loop blocked longer is reported by /healthz).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        observer: MetricsObserver | None = None,
        stats_timeout: float = 2.0,
    ) -> None:
        self.observer = observer if observer is not None else MetricsObserver()
        self.registry = registry
        self.stats_timeout = stats_timeout
        self._managers: weakref.WeakSet[ConnectionManager] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._log = get_logger("connman.metrics")
        if registry is not None:
            registry.register(self)

    # -- managers ----------------------------------------------------------------------

    def instrument(self, manager: ConnectionManager) -> ConnectionManager:
        """Export ``manager``'s pools (until it is closed or garbage-collected). A
        manager without an observer gets this one, so its wait/use time histograms and
        per-consumer counters are exported too."""
        current = getattr(manager, "_observer", None)
        if current is None:
            # A manager built without one (get_manager()'s): give it ours.
            manager.set_observer(self.observer)
        elif current is not self.observer:
            self._log.warning(
                "metrics_without_observer",
                hint="this manager reports its timings to another observer: build it with "
                "ConnectionManager(..., observer=metrics.observer()) for wait/use time "
                "histograms and per-consumer counters here",
            )
        with self._lock:
            self._managers.add(manager)
        return manager

    def forget(self, manager: ConnectionManager) -> None:
        """Stop exporting ``manager``'s pools."""
        with self._lock:
            self._managers.discard(manager)

    def managers(self) -> list[ConnectionManager]:
        """The instrumented managers still open (closed ones are forgotten)."""
        with self._lock:
            live = list(self._managers)
            for manager in live:
                if manager.closed:
                    self._managers.discard(manager)
        return [m for m in live if not m.closed]

    def snapshot(self, manager: ConnectionManager) -> list[PoolStats]:
        """``manager.stats()``, taken on the manager's own event loop when it runs in
        another thread (a pool's bookkeeping is only consistent between awaits).

        Raises:
            TimeoutError: the loop did not run the snapshot within ``stats_timeout``.
        """
        loop: asyncio.AbstractEventLoop | None = getattr(manager, "_loop", None)
        if loop is None or loop.is_closed() or not loop.is_running() or _running_loop() is loop:
            return manager.stats()
        future: concurrent.futures.Future[list[PoolStats]] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(manager.stats())
                except BaseException as exc:
                    future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop closed in between
            return manager.stats()
        try:
            return future.result(self.stats_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(
                f"the event loop of {manager!r} did not answer within {self.stats_timeout}s "
                "(blocked by synchronous code?)"
            ) from None

    # -- prometheus_client Collector ---------------------------------------------------

    def describe(self) -> list[Metric]:
        """The families this collector yields (for the registry's duplicate check)."""
        out: list[Metric] = []
        for doc in METRICS:
            if doc.type == "gauge":
                out.append(_gauge_family(doc.name, doc.labels))
            elif doc.type == "counter":
                out.append(_counter_family(doc.name, doc.labels))
            elif doc.type == "histogram":
                out.append(_histogram_family(doc.name, doc.labels))
            else:
                out.append(InfoMetricFamily(_family_name(doc.name), doc.help, labels=doc.labels))
        return out

    def collect(self) -> Iterator[Metric]:
        """One scrape: gauges and pool counters from ``stats()``, histograms and
        consumer counters from the observer."""
        gauges: dict[str, dict[tuple[str, ...], float]] = {
            doc.name: {} for doc in METRICS if doc.type == "gauge"
        }
        counters: dict[str, dict[tuple[str, ...], float]] = {
            name: {} for name, _ in _STATS_COUNTERS
        }
        info: dict[tuple[str, ...], None] = {}
        reads: dict[tuple[str, ...], float] = {}
        known = self.observer.consumers()

        def add(table: dict[tuple[str, ...], float], key: tuple[str, ...], value: float) -> None:
            table[key] = table.get(key, 0) + value

        for manager in self.managers():
            try:
                snapshot = self.snapshot(manager)
            except Exception as exc:  # one stuck manager must not fail the scrape
                self._log.warning("metrics_snapshot_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            for st in snapshot:
                pool = st.name
                add(gauges["connman_pool_connections"], (pool, "idle"), st.idle)
                add(gauges["connman_pool_connections"], (pool, "used"), st.in_use)
                add(gauges["connman_pool_connections_max"], (pool,), st.max_size)
                add(gauges["connman_pool_connections_min"], (pool,), st.min_size)
                add(gauges["connman_pool_pending_requests"], (pool,), st.waiting)
                up = gauges["connman_pool_up"]
                can_serve = float(pool_problem(st) is None)
                up[(pool,)] = min(up.get((pool,), 1.0), can_serve)
                consumers = {c for p, c in known if p == pool}
                consumers.update(st.consumers, st.waiting_by_consumer)
                for consumer in consumers:
                    key = (pool, consumer)
                    add(gauges["connman_consumer_leases"], key, st.consumers.get(consumer, 0))
                    add(
                        gauges["connman_consumer_pending_requests"],
                        key,
                        st.waiting_by_consumer.get(consumer, 0),
                    )
                for consumer, limit in st.consumer_limits.items():
                    add(gauges["connman_consumer_limit"], (pool, consumer), limit)
                for name, counter in _STATS_COUNTERS:
                    add(counters[name], (pool,), st.counters.get(counter, 0))
                add(reads, (pool, st.role), st.reads)
                if st.replica is not None:
                    gauges["connman_replica_in_rotation"][(pool,)] = float(st.replica.in_rotation)
                    if st.replica.lag is not None:
                        gauges["connman_replica_lag_seconds"][(pool,)] = st.replica.lag
            default = manager.default_pool
            if default is not None and snapshot:
                storage = manager.storage
                first = snapshot[0]  # stats() lists the default pool first
                info[
                    (
                        first.name,
                        first.tier or storage.tier.value,
                        first.dialect,
                        storage.source,
                        "true" if first.degraded else "false",
                        storage.tier.value,
                    )
                ] = None

        for doc in METRICS:
            if doc.type == "gauge":
                family = _gauge_family(doc.name, doc.labels)
                for labels, value in sorted(gauges[doc.name].items()):
                    family.add_metric(list(labels), value)
                yield family
        for name, _ in _STATS_COUNTERS:
            cfamily = _counter_family(name, _P)
            for labels, value in sorted(counters[name].items()):
                cfamily.add_metric(list(labels), value)
            yield cfamily
        rfamily = _counter_family("connman_pool_reads_total", ("pool", "role"))
        for labels, value in sorted(reads.items()):
            rfamily.add_metric(list(labels), value)
        yield rfamily
        ifamily = InfoMetricFamily(
            _family_name("connman_storage_info"),
            _DOCS["connman_storage_info"].help,
            labels=_DOCS["connman_storage_info"].labels,
        )
        for labels in sorted(info):
            ifamily.add_metric(list(labels), {})
        yield ifamily
        yield from self.observer._families()

    # -- health ----------------------------------------------------------------------

    def health(self) -> Health:
        """Can every open instrumented manager serve leases from its default store,
        and every pool it opened? A manager not started yet, or whose start failed,
        cannot (503 with the reason); a degraded one can, but says so (200,
        ``degraded``, and why). A read replica that cannot serve is not a failure
        (its reads go to the other replicas or the primary): 200, and the reason
        names it."""
        managers = self.managers()
        if not managers:
            return Health(False, "no open ConnectionManager is instrumented")
        problems: list[str] = []
        notes: list[str] = []
        replica_notes: list[str] = []
        pools: list[Mapping[str, Any]] = []
        for manager in managers:
            default_problem = _default_store_problem(manager)
            if default_problem is not None:
                problems.append(default_problem)
            elif manager.degraded and manager.default_pool is not None:
                notes.append(
                    f"degraded: serving from {manager.default_pool.name} instead of "
                    f"{manager.storage.redacted_url} ({manager.degraded_reason})"
                )
            try:
                snapshot = self.snapshot(manager)
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                continue
            for st in snapshot:
                problem = pool_problem(st)
                if problem is not None and st.role == "replica":
                    replica_notes.append(f"replica {st.name} serves no reads: {problem}")
                elif problem is not None:
                    problems.append(f"pool {st.name}: {problem}")
                pools.append(
                    {
                        "pool": st.name,
                        "role": st.role,
                        "reads": st.reads,
                        "replica_reason": None if st.replica is None else st.replica.reason,
                        "ok": problem is None,
                        "problem": problem,
                        "dialect": st.dialect,
                        "tier": st.tier,
                        "degraded": st.degraded,
                        "size": st.size,
                        "max_size": st.max_size,
                        "in_use": st.in_use,
                        "idle": st.idle,
                        "waiting": st.waiting,
                    }
                )
        degraded = bool(notes)
        if problems:
            return Health(False, redact_text("; ".join(problems)), tuple(pools), degraded)
        if degraded or replica_notes:
            text = redact_text("; ".join(notes + replica_notes))
            return Health(True, text, tuple(pools), degraded)
        return Health(True, "ok", tuple(pools))


def _default_store_problem(manager: ConnectionManager) -> str | None:
    """Why ``manager``'s default store cannot serve before or without its pool."""
    if manager.default_pool is not None:
        return None  # its pool's own state is checked with the others
    where = manager.storage.redacted_url
    error = manager.start_error
    if error is not None:
        return f"default store {where}: start failed ({error.reason}): {error}"
    return (
        f"default store {where}: not started (no pool opened yet; await manager.start() "
        "at start-up so that readiness reflects the database)"
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# ====================================================================== defaults

_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide :class:`Metrics`, registered in ``prometheus_client.REGISTRY``
    on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


def observer() -> MetricsObserver:
    """The observer of :func:`default_metrics`: pass it as
    ``ConnectionManager(..., observer=connman.metrics.observer())``."""
    return default_metrics().observer


def instrument(manager: ConnectionManager, metrics: Metrics | None = None) -> ConnectionManager:
    """Export ``manager`` through ``metrics`` (default: :func:`default_metrics`)."""
    return (metrics or default_metrics()).instrument(manager)


# ====================================================================== serving

_Environ = dict[str, Any]
_StartResponse = Callable[..., Any]
_WSGIApp = Callable[[_Environ, _StartResponse], Iterable[bytes]]
_Scope = dict[str, Any]
_Receive = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[dict[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]

_NOT_FOUND: Final = b"not found: try /metrics or /healthz\n"


def _render_metrics(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


def _registry_of(metrics: Metrics, registry: CollectorRegistry | None) -> CollectorRegistry:
    if registry is not None:
        return registry
    if metrics.registry is not None:
        return metrics.registry
    raise ValueError("metrics is not registered anywhere: pass registry=")


def make_wsgi_app(
    metrics: Metrics | None = None, registry: CollectorRegistry | None = None
) -> _WSGIApp:
    """A WSGI app: ``/metrics`` (and ``/``) the registry in Prometheus text format (or
    OpenMetrics if asked), ``/healthz`` the health check; 404 otherwise."""
    m = metrics or default_metrics()
    reg = _registry_of(m, registry)

    def app(environ: _Environ, start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            health = m.health()
            status = "200 OK" if health.ok else "503 Service Unavailable"
            body, ctype = health.to_json(), "application/json"
        elif path in ("/metrics", "/"):
            status = "200 OK"
            body, ctype = _render_metrics(reg, environ.get("HTTP_ACCEPT", ""))
        else:
            status, body, ctype = "404 Not Found", _NOT_FOUND, "text/plain; charset=utf-8"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


def make_asgi_app(
    metrics: Metrics | None = None, registry: CollectorRegistry | None = None
) -> _ASGIApp:
    """The same as :func:`make_wsgi_app`, for embedding in an ASGI application (mount
    it, e.g. Starlette's ``Mount("/", app)``). The scrape runs in a worker thread, so
    it never blocks the event loop."""
    import anyio.to_thread

    m = metrics or default_metrics()
    reg = _registry_of(m, registry)

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope.get("path") or "/"
        if path == "/healthz":
            health = await anyio.to_thread.run_sync(m.health)
            status, body, ctype = (200 if health.ok else 503), health.to_json(), "application/json"
        elif path in ("/metrics", "/"):
            accept = ""
            for key, value in scope.get("headers") or ():
                if key.lower() == b"accept":
                    accept = value.decode("latin-1")
            body, ctype = await anyio.to_thread.run_sync(_render_metrics, reg, accept)
            status = 200
        else:
            status, body, ctype = 404, _NOT_FOUND, "text/plain; charset=utf-8"
        headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body}
        )

    return app


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


class _V6Server(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """A running HTTP endpoint (``/metrics``, ``/healthz``) in a daemon thread."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.addr = str(server.server_address[0])
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        """``http://addr:port`` (where ``/metrics`` and ``/healthz`` live)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        """Stop serving and free the port. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    *,
    metrics: Metrics | None = None,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``addr:port`` (loopback by default;
    ``port=0`` picks a free one: see ``.port``) from a daemon thread."""
    app = make_wsgi_app(metrics, registry)
    server_class = _V6Server if ":" in addr else ThreadingWSGIServer
    server = make_server(addr, port, app, server_class, handler_class=_SilentHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.name = f"connman-metrics-{server.server_address[1]}"
    thread.start()
    return MetricsServer(server, thread)


def serve_metrics(
    manager: ConnectionManager,
    *,
    port: int = DEFAULT_PORT,
    addr: str = "127.0.0.1",
    metrics: Metrics | None = None,
) -> MetricsServer:
    """Instrument ``manager`` and serve ``/metrics`` and ``/healthz`` until
    ``.close()`` (what ``connman demo`` runs). Build the manager with
    ``observer=(metrics or default_metrics()).observer`` for the histograms."""
    m = metrics or default_metrics()
    m.instrument(manager)
    return start_http_server(port, addr, metrics=m)
