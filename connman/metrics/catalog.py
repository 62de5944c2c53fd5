"""What connman exports: every metric (:data:`METRICS`), the histogram buckets, and
the prometheus_client families built from them. Observer and collector both take
their names and help texts from here, so a metric is described in one place."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

__all__ = [
    "CREATE_BUCKETS",
    "DOCS",
    "LEASE_BUCKETS",
    "METRICS",
    "MetricDoc",
    "counter_family",
    "family_name",
    "gauge_family",
    "histogram_family",
]

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


P: Final = ("pool",)
"""Labels of a per-pool metric."""
PC: Final = ("pool", "consumer")
"""Labels of a per-(pool, consumer) metric."""

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
        P,
        "Most connections the pool may open (max_size).",
        "db.client.connection.max",
    ),
    MetricDoc(
        "connman_pool_connections_min",
        "gauge",
        P,
        "Connections the pool keeps open when idle (min_size).",
        "db.client.connection.idle.min",
    ),
    MetricDoc(
        "connman_pool_pending_requests",
        "gauge",
        P,
        "Acquires waiting for a connection.",
        "db.client.connection.pending_requests",
    ),
    MetricDoc(
        "connman_pool_up",
        "gauge",
        P,
        "1 when the pool can serve leases; 0 when it is closed, or has no connection "
        "and its last connection attempt failed (what /healthz checks).",
    ),
    MetricDoc(
        "connman_consumer_leases",
        "gauge",
        PC,
        "Leases in use per consumer (0 for consumers seen before).",
    ),
    MetricDoc(
        "connman_consumer_pending_requests",
        "gauge",
        PC,
        "Acquires waiting per consumer.",
    ),
    MetricDoc(
        "connman_consumer_limit",
        "gauge",
        PC,
        "Most leases a consumer may hold at once (only consumers with a limit).",
    ),
    MetricDoc(
        "connman_replica_in_rotation",
        "gauge",
        P,
        "Per read replica: 1 while it serves read-only leases; 0 while it is out "
        "(lagging beyond max_lag, promoted, or not answering).",
    ),
    MetricDoc(
        "connman_replica_lag_seconds",
        "gauge",
        P,
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
        PC,
        "Time to obtain a connection (acquire wait), per consumer.",
        "db.client.connection.wait_time",
    ),
    MetricDoc(
        "connman_pool_use_time_seconds",
        "histogram",
        PC,
        "Time between acquire and release of a lease, per consumer.",
        "db.client.connection.use_time",
    ),
    MetricDoc(
        "connman_pool_create_time_seconds",
        "histogram",
        P,
        "Time to open a new connection.",
        "db.client.connection.create_time",
    ),
    MetricDoc(
        "connman_pool_timeouts_total",
        "counter",
        PC,
        "Acquires that failed with AcquireTimeout.",
        "db.client.connection.timeouts",
    ),
    MetricDoc(
        "connman_pool_unavailable_total",
        "counter",
        PC,
        "Acquires that failed with PoolUnavailable (database unreachable).",
    ),
    MetricDoc(
        "connman_pool_leaks_total",
        "counter",
        PC,
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
        P,
        "Connections opened.",
    ),
    MetricDoc(
        "connman_pool_connections_closed_total",
        "counter",
        P,
        "Connections that left the pool, for any reason (opened - closed = open now).",
    ),
    MetricDoc(
        "connman_pool_connections_lost_total",
        "counter",
        P,
        "Of the closed connections, those found dead (server restart, terminated backend).",
    ),
    MetricDoc(
        "connman_pool_connection_errors_total",
        "counter",
        P,
        "Failed connection attempts.",
    ),
    MetricDoc(
        "connman_pool_resets_total",
        "counter",
        P,
        "Releases that needed a round trip to clean the connection (ROLLBACK, RESET ALL).",
    ),
    MetricDoc(
        "connman_pool_health_check_failures_total",
        "counter",
        P,
        "Pings of idle connections that failed (the connection was replaced).",
    ),
)
"""Every metric connman exports. Counters from the observer start at 0 for every
(pool, consumer) that has leased; histograms and consumer counters need the manager
to be built with ``observer=``."""


DOCS: Final = {doc.name: doc for doc in METRICS}


def family_name(name: str) -> str:
    """prometheus_client wants counters without ``_total`` and info without ``_info``."""
    doc = DOCS[name]
    if doc.type == "counter":
        return name.removesuffix("_total")
    if doc.type == "info":
        return name.removesuffix("_info")
    return name


def gauge_family(name: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, DOCS[name].help, labels=labels)


def counter_family(name: str, labels: Sequence[str]) -> CounterMetricFamily:
    return CounterMetricFamily(family_name(name), DOCS[name].help, labels=labels)


def histogram_family(name: str, labels: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, DOCS[name].help, labels=labels, unit="seconds")
