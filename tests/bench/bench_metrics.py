"""What metrics cost on the lease path: lease + ``SELECT 1`` throughput with metrics
on against metrics off, in the same run.

Run::

    uv run python tests/bench/bench_metrics.py [--rounds 9] [--url URL] [--append FILE]

Three managers on one database, each with its own 10 connections, open for the whole
run; for each concurrency the modes take turns (round r runs them in an order rotated
by r: a warm-up, then a measured window), and the figures are medians over the rounds.

Modes:

- ``off``: ``ConnectionManager(url)``: no observer.
- ``on``: what connman ships: ``observer=metrics.observer`` (plain-int buckets
  per (pool, consumer), a ``bisect`` per sample) and the manager instrumented, with a
  thread scraping the registry every ``--scrape-interval`` seconds during its windows
  (Prometheus would scrape every 15 s; 1 s here, to charge the scrape too).
- ``prom``: the design connman did not take, for the record: an observer that calls
  prometheus_client's ``Histogram.labels(pool, consumer).observe()`` and
  ``Counter.labels(...).inc()`` (a lock per call).

Workload: ``tasks`` tasks spread over three consumers (sqlalchemy, dgent, brain), each
looping ``async with manager.lease(consumer) as l: await l.connection.fetchval("SELECT 1")``.

Pass: median ``on`` >= 0.9 x median ``off`` at every concurrency (exit status 1
otherwise). The database: ``--url``, else ``$CONNMAN_BENCH_URL``, else a throwaway
cluster from the local PostgreSQL binaries. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import connman
from connman.metrics import LEASE_BUCKETS, Metrics

POOL_SIZE = 10
CONSUMERS = ("sqlalchemy", "dgent", "brain")
MODES = ("off", "on", "prom")
_pc = time.perf_counter


class PrometheusClientObserver:
    """The alternative: prometheus_client's own metric objects on the hot path."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("pool", "consumer")
        self.wait = Histogram(
            "bench_wait_seconds", "w", labels, buckets=LEASE_BUCKETS, registry=registry
        )
        self.use = Histogram(
            "bench_use_seconds", "u", labels, buckets=LEASE_BUCKETS, registry=registry
        )
        self.failed = Counter("bench_failed", "f", (*labels, "reason"), registry=registry)
        self.leaks = Counter("bench_leaks", "l", labels, registry=registry)
        self.create = Histogram("bench_create_seconds", "c", ("pool",), registry=registry)

    def lease_acquired(self, pool: str, consumer: str, wait: float) -> None:
        self.wait.labels(pool, consumer).observe(wait)

    def lease_released(self, pool: str, consumer: str, used: float) -> None:
        self.use.labels(pool, consumer).observe(used)

    def acquire_failed(self, pool: str, consumer: str, reason: str) -> None:
        self.failed.labels(pool, consumer, reason).inc()

    def connection_opened(self, pool: str, seconds: float) -> None:
        self.create.labels(pool).observe(seconds)

    def connection_closed(self, pool: str, lost: bool) -> None:
        pass

    def connect_failed(self, pool: str) -> None:
        pass

    def leak_detected(self, pool: str, consumer: str) -> None:
        self.leaks.labels(pool, consumer).inc()


class Scraper:
    """Scrapes a registry from another thread while ``active`` is set."""

    def __init__(self, registry: CollectorRegistry, interval: float) -> None:
        self.registry = registry
        self.interval = interval
        self.active = threading.Event()
        self.stop = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if self.active.is_set():
                generate_latest(self.registry)
                self.scrapes += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@dataclass
class Cell:
    mode: str
    tasks: int
    ops: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)

    @property
    def median_ops(self) -> float:
        return statistics.median(self.ops)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu_us)


async def measure(
    manager: connman.ConnectionManager, tasks: int, warmup: float, duration: float
) -> tuple[float, float]:
    phase = [0]  # 0 warm-up, 1 measuring, 2 stop
    counts = [0] * tasks

    async def worker(i: int) -> None:
        consumer = CONSUMERS[i % len(CONSUMERS)]
        lease = manager.lease
        while phase[0] < 2:
            async with lease(consumer) as held:
                await held.connection.fetchval("SELECT 1")
            if phase[0] == 1:
                counts[i] += 1

    running = [asyncio.create_task(worker(i)) for i in range(tasks)]
    await asyncio.sleep(warmup)
    phase[0] = 1
    t0, cpu0 = _pc(), time.process_time()
    await asyncio.sleep(duration)
    phase[0] = 2
    t1, cpu1 = _pc(), time.process_time()
    await asyncio.gather(*running)
    ops = sum(counts)
    return ops / (t1 - t0), 1e6 * (cpu1 - cpu0) / ops


async def open_manager(url: str, observer: Any) -> connman.ConnectionManager:
    config = connman.PoolConfig(min_size=POOL_SIZE, max_size=POOL_SIZE)
    manager = connman.ConnectionManager(url, config=config, degrade=False, observer=observer)
    await manager.start()
    while manager.stats()[0].idle < POOL_SIZE:  # min_size fills in the background
        await asyncio.sleep(0.01)
    return manager


async def run(args: argparse.Namespace, url: str) -> dict[tuple[str, int], Cell]:
    on_registry = CollectorRegistry()
    metrics = Metrics(on_registry)
    prom_registry = CollectorRegistry()
    managers = {
        "off": await open_manager(url, None),
        "on": await open_manager(url, metrics.observer),
        "prom": await open_manager(url, PrometheusClientObserver(prom_registry)),
    }
    metrics.instrument(managers["on"])
    scraper = Scraper(on_registry, args.scrape_interval)
    cells = {(m, t): Cell(m, t) for m in MODES for t in args.tasks}
    try:
        for tasks in args.tasks:
            for r in range(args.rounds):
                order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
                for mode in order:
                    if mode == "on":
                        scraper.active.set()
                    try:
                        ops, cpu = await measure(managers[mode], tasks, args.warmup, args.duration)
                    finally:
                        scraper.active.clear()
                    cells[mode, tasks].ops.append(ops)
                    cells[mode, tasks].cpu_us.append(cpu)
                print(
                    f"  tasks={tasks} round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{m} {cells[m, tasks].ops[-1]:,.0f}/s" for m in MODES),
                    file=sys.stderr,
                )
    finally:
        scraper.close()
        for manager in managers.values():
            await manager.aclose()
    print(f"  scrapes during 'on' windows: {scraper.scrapes}", file=sys.stderr)
    return cells


def observer_cost() -> dict[str, float]:
    """Microseconds for the two observer calls of one lease (acquired + released),
    in isolation (best of 5 timeit runs of 100k leases)."""
    import timeit

    out: dict[str, float] = {}
    for name, observer in (
        ("on", Metrics(None).observer),
        ("prom", PrometheusClientObserver(CollectorRegistry())),
    ):
        pool = "postgresql+asyncpg://kgents:***@127.0.0.1:5432/kgents"

        def lease(o: Any = observer, pool: str = pool) -> None:
            o.lease_acquired(pool, "dgent", 0.0)
            o.lease_released(pool, "dgent", 0.003)

        n = 100_000
        out[name] = min(timeit.repeat(lease, number=n, repeat=5)) / n * 1e6
    return out


def report(
    cells: dict[tuple[str, int], Cell],
    args: argparse.Namespace,
    command: str,
    cost: dict[str, float],
) -> str:
    lines = [
        "## Metrics overhead",
        "",
        f"`{command}`",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, asyncio loop, PostgreSQL on loopback, pool size "
        f"{POOL_SIZE}, three consumers, lease + `SELECT 1`; {args.rounds} interleaved "
        f"rounds of {args.duration:g} s (after {args.warmup:g} s warm-up) per mode, "
        "medians. `on` = connman's observer (plain-int buckets) + the instrumented "
        f"manager scraped every {args.scrape_interval:g} s; `prom` = prometheus_client "
        "Histogram/Counter objects on the hot path instead.",
        "",
        "| tasks | off ops/s | on ops/s | on/off | prom ops/s | prom/off "
        "| CPU µs/op off | on | prom |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tasks in args.tasks:
        off, on, prom = (cells[m, tasks] for m in MODES)
        lines.append(
            f"| {tasks} | {off.median_ops:,.0f} | {on.median_ops:,.0f} | "
            f"{on.median_ops / off.median_ops:.3f} | {prom.median_ops:,.0f} | "
            f"{prom.median_ops / off.median_ops:.3f} | {off.median_cpu:.1f} | "
            f"{on.median_cpu:.1f} | {prom.median_cpu:.1f} |"
        )
    lines += [
        "",
        f"The observer calls of one lease in isolation (acquired + released, best of 5 x "
        f"100k): connman's {cost['on']:.2f} µs, prometheus_client's {cost['prom']:.2f} µs.",
    ]
    ratios = [cells["on", t].median_ops / cells["off", t].median_ops for t in args.tasks]
    verdict = "PASS" if min(ratios) >= 0.9 else "FAIL"
    lines += ["", f"{verdict}: metrics on >= 0.9 x metrics off (worst {min(ratios):.3f}).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CONNMAN_BENCH_URL"))
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=float, default=0.3)
    parser.add_argument("--duration", type=float, default=1.5)
    parser.add_argument("--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[10, 50])
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--append", metavar="FILE", help="append the markdown section to FILE")
    args = parser.parse_args()
    command = "uv run python tests/bench/bench_metrics.py " + " ".join(sys.argv[1:])
    cluster = None
    url = args.url
    if url:
        host = urlsplit(url.replace("+asyncpg", "")).hostname or "localhost"
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            parser.error("benchmarks run against loopback databases only")
    else:
        from connman.testing.cluster import LocalCluster

        cluster = LocalCluster()
        cluster.start()
        url = cluster.url
    try:
        cells = asyncio.run(run(args, url))
    finally:
        if cluster is not None:
            cluster.destroy()
    text = report(cells, args, command.strip(), observer_cost())
    print(text)
    if args.append:
        with open(args.append, "a") as f:  # append only: others write other sections
            f.write("\n" + text)
    worst = min(cells["on", t].median_ops / cells["off", t].median_ops for t in args.tasks)
    return 0 if worst >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
