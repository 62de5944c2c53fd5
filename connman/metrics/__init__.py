"""Prometheus metrics, ``/healthz``, and the HTTP endpoint that serves them.

Two halves, so that the lease path stays cheap (and the HTTP serving apart):

- :class:`MetricsObserver` is the :class:`~connman.stats.PoolObserver` a manager is
  built with (``ConnectionManager(url, observer=connman.metrics.observer())``). On the
  hot path it only adds to plain integers: per (pool, consumer) histogram buckets
  (a ``bisect`` into fixed bounds) and a few counters. No lock: a pool runs on one
  event loop, and a scrape copies the lists (one C-level copy under the GIL).
- :class:`Metrics` is a prometheus_client collector. At scrape time it reads
  ``manager.stats()`` of every instrumented manager (on the manager's own event loop,
  so a snapshot is never taken while the loop is half-way through a handoff) and the
  observer's numbers, and yields metric families; it also answers ``/healthz``.
- :mod:`connman.metrics.http` serves both: WSGI and ASGI apps, a threaded server.

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

from connman.metrics.catalog import CREATE_BUCKETS, LEASE_BUCKETS, METRICS, MetricDoc
from connman.metrics.collector import Metrics, default_metrics, instrument, observer
from connman.metrics.health import Health
from connman.metrics.http import (
    DEFAULT_PORT,
    MetricsServer,
    make_asgi_app,
    make_wsgi_app,
    serve_metrics,
    start_http_server,
)
from connman.metrics.timings import MetricsObserver
from connman.stats import pool_problem

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
    "pool_problem",
    "serve_metrics",
    "start_http_server",
]
