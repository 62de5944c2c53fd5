"""The scrape-time half: :class:`Metrics`, connman's prometheus_client collector.

At scrape time it reads ``manager.stats()`` of every instrumented manager (on the
manager's own event loop, so a snapshot is never taken while the loop is half-way
through a handoff) and the numbers of its :class:`MetricsObserver`, and yields
metric families. It also answers ``/healthz`` (:mod:`connman.metrics.health`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from connman import stats as S
from connman.logging import get_logger
from connman.metrics.catalog import (
    DOCS,
    METRICS,
    P,
    counter_family,
    family_name,
    gauge_family,
    histogram_family,
)
from connman.metrics.health import Health, check_health
from connman.metrics.timings import MetricsObserver
from connman.stats import pool_problem

if TYPE_CHECKING:
    from connman.manager import ConnectionManager
    from connman.stats import PoolStats

__all__ = ["Metrics", "default_metrics", "instrument", "observer"]


# Counters read from PoolStats.counters at scrape time: (metric, counter name).
_STATS_COUNTERS: Final = (
    ("connman_pool_connections_opened_total", S.CONNECTIONS_OPENED),
    ("connman_pool_connections_closed_total", S.CONNECTIONS_CLOSED),
    ("connman_pool_connections_lost_total", S.CONNECTIONS_LOST),
    ("connman_pool_connection_errors_total", S.CONNECT_ERRORS),
    ("connman_pool_resets_total", S.RESETS),
    ("connman_pool_health_check_failures_total", S.HEALTH_CHECKS_FAILED),
)


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
        current = manager.observer
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
        loop = manager.loop
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
                out.append(gauge_family(doc.name, doc.labels))
            elif doc.type == "counter":
                out.append(counter_family(doc.name, doc.labels))
            elif doc.type == "histogram":
                out.append(histogram_family(doc.name, doc.labels))
            else:
                out.append(InfoMetricFamily(family_name(doc.name), doc.help, labels=doc.labels))
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
                family = gauge_family(doc.name, doc.labels)
                for labels, value in sorted(gauges[doc.name].items()):
                    family.add_metric(list(labels), value)
                yield family
        for name, _ in _STATS_COUNTERS:
            cfamily = counter_family(name, P)
            for labels, value in sorted(counters[name].items()):
                cfamily.add_metric(list(labels), value)
            yield cfamily
        rfamily = counter_family("connman_pool_reads_total", ("pool", "role"))
        for labels, value in sorted(reads.items()):
            rfamily.add_metric(list(labels), value)
        yield rfamily
        ifamily = InfoMetricFamily(
            family_name("connman_storage_info"),
            DOCS["connman_storage_info"].help,
            labels=DOCS["connman_storage_info"].labels,
        )
        for labels in sorted(info):
            ifamily.add_metric(list(labels), {})
        yield ifamily
        yield from self.observer.families()

    # -- health ----------------------------------------------------------------------
    def health(self) -> Health:
        """Can every open instrumented manager serve leases from its default store,
        and every pool it opened? See :func:`~connman.metrics.health.check_health`."""
        return check_health(self.managers(), self.snapshot)


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
