"""The hot-path half: :class:`MetricsObserver`, the :class:`~connman.stats.PoolObserver`
a manager is built with. On the lease path it only adds to plain integers (a
``bisect`` into fixed bounds); a scrape copies them and builds the families."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily, Metric

from connman.metrics.catalog import (
    CREATE_BUCKETS,
    LEASE_BUCKETS,
    PC,
    P,
    counter_family,
    histogram_family,
)

__all__ = ["MetricsObserver"]


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

    def families(self) -> Iterator[Metric]:
        """The histograms and per-consumer counters, as of now (any thread)."""
        wait = histogram_family("connman_pool_wait_time_seconds", PC)
        for key, hist in sorted(self._wait.copy().items()):
            _add_histogram(wait, key, self._bounds, hist)
        yield wait
        use = histogram_family("connman_pool_use_time_seconds", PC)
        for key, hist in sorted(self._use.copy().items()):
            _add_histogram(use, key, self._bounds, hist)
        yield use
        create = histogram_family("connman_pool_create_time_seconds", P)
        for pool, hist in sorted(self._create.copy().items()):
            _add_histogram(create, (pool,), self._create_bounds, hist)
        yield create

        known = self.consumers()
        failures = self._failures.copy()
        for reason, name in (
            ("timeout", "connman_pool_timeouts_total"),
            ("unavailable", "connman_pool_unavailable_total"),
        ):
            family = counter_family(name, PC)
            for pool, consumer in sorted(known):
                family.add_metric([pool, consumer], failures.get((pool, consumer, reason), 0))
            yield family
        leaks = self._leaks.copy()
        family = counter_family("connman_pool_leaks_total", PC)
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
