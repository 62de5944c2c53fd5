"""Benchmark: SQLAlchemy on connman against SQLAlchemy's own AsyncAdaptedQueuePool.

Run::

    uv run python tests/bench/bench_sqlalchemy.py [--quick] [--url URL] [--rounds N]

One process, one PostgreSQL database, two engines open for the whole run:

- ``connman``: ``connman.adapters.sqlalchemy.create_async_engine(manager)`` on a
  ``ConnectionManager(url, PoolConfig(min_size=10, max_size=10))``;
- ``queuepool``: ``sqlalchemy.ext.asyncio.create_async_engine(url, pool_size=10,
  max_overflow=0)`` (AsyncAdaptedQueuePool, SQLAlchemy's default for asyncpg).

The operation, for both: ``async with engine.connect() as c: await
c.execute(text("SELECT 1"))``: a checkout, SQLAlchemy's autobegin (``BEGIN``), the
query, the rollback on close, the checkin: three round trips. Both pools are warmed up
to 10 open connections before anything is measured.

Reported per cell: ops/s, client CPU per operation (``time.process_time``, this
process only), the checkout wait p50/p99, and the operations of the least served
task in the window (0: a task starved), each the median over the rounds (the least
served: the minimum).

For each concurrency (1, 16, 128 tasks), round r runs the two engines in an order
rotated by r, each for a warm-up and then a measured window; the figures are the
median over the rounds, and the ratio is the median of the per-round ratios (both ran
within a second of each other, so a change of machine load hits both).

The database: ``--url``, else ``$CONNMAN_BENCH_URL`` (loopback only), else a throwaway
cluster from the local PostgreSQL binaries (``connman.testing.cluster.LocalCluster``);
never the shared server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy
from _common import bench_database
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

import connman
from connman.adapters.sqlalchemy import create_async_engine

POOL_SIZE = 10
CONCURRENCY = (1, 16, 128)
IMPLS = ("connman", "queuepool")
TITLES = {
    "connman": "SQLAlchemy on connman",
    "queuepool": "SQLAlchemy AsyncAdaptedQueuePool",
}
SELECT_1 = text("SELECT 1")
# --json: a row with a jsonb column, decoded by both engines (natively by the codec
# the asyncpg dialect installs, on connman by the engine's cursor): its cost.
SELECT_JSON = text("""SELECT '{"a": [1, 2.5], "b": "x"}'::jsonb AS doc, 1 AS n""")
QUERY = SELECT_1
_pc = time.perf_counter


@dataclass
class Sample:
    ops_per_s: float
    cpu_us_per_op: float
    wait_p50_ms: float
    wait_p99_ms: float
    fewest: int  # operations of the least served task in the window


@dataclass
class Cell:
    impl: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


class Window:
    """One measured window: phase 0 warm-up, 1 measuring, 2 stop."""

    __slots__ = ("phase", "waits")

    def __init__(self) -> None:
        self.phase = 0
        self.waits: list[float] = []


async def worker(engine: AsyncEngine, window: Window) -> int:
    """Checkout + SELECT 1 + checkin in a loop; returns the operations done while
    measuring. The wait is from asking for the connection until holding it."""
    connect = engine.connect
    waits = window.waits
    served = 0
    while window.phase < 2:
        t0 = _pc()
        async with connect() as conn:
            t1 = _pc()
            await conn.execute(QUERY)
        if window.phase == 1:
            waits.append(t1 - t0)
            served += 1
    return served


async def measure(engine: AsyncEngine, tasks: int, warmup: float, duration: float) -> Sample:
    window = Window()
    loop = asyncio.get_running_loop()
    running = [loop.create_task(worker(engine, window)) for _ in range(tasks)]
    try:
        await asyncio.sleep(warmup)
        window.phase = 1
        t0, cpu0 = _pc(), time.process_time()
        await asyncio.sleep(duration)
        window.phase = 2
        t1, cpu1 = _pc(), time.process_time()
        served = await asyncio.gather(*running)
    except BaseException:
        window.phase = 2
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    waits = sorted(window.waits)
    ops = len(waits)
    return Sample(
        ops_per_s=ops / (t1 - t0),
        cpu_us_per_op=1e6 * (cpu1 - cpu0) / ops if ops else float("nan"),
        wait_p50_ms=1e3 * waits[ops // 2] if ops else float("nan"),
        wait_p99_ms=1e3 * waits[min(ops - 1, int(0.99 * ops))] if ops else float("nan"),
        fewest=min(served),
    )


async def warm(engine: AsyncEngine) -> None:
    """Open POOL_SIZE connections: hold that many at once, then give them back."""
    conns = [await engine.connect() for _ in range(POOL_SIZE)]
    for conn in conns:
        await conn.execute(SELECT_1)
    for conn in conns:
        await conn.close()


async def bench(url: str, rounds: int, warmup: float, duration: float) -> list[Cell]:
    config = connman.PoolConfig(min_size=POOL_SIZE, max_size=POOL_SIZE, acquire_timeout=60)
    manager = connman.ConnectionManager(url, config=config, degrade=False)
    await manager.start()
    engines = {
        "connman": create_async_engine(manager),
        "queuepool": sa_create_async_engine(
            url, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=60
        ),
    }
    cells: list[Cell] = []
    try:
        for engine in engines.values():
            await warm(engine)
        for conc in CONCURRENCY:
            by_impl = {name: Cell(name, conc) for name in IMPLS}
            for r in range(rounds):
                order = IMPLS[r % 2 :] + IMPLS[: r % 2]
                for name in order:
                    gc.collect()
                    sample = await measure(engines[name], conc, warmup, duration)
                    by_impl[name].samples.append(sample)
            cells.extend(by_impl.values())
            line = "  ".join(f"{c.impl} {c.median('ops_per_s'):,.0f}" for c in by_impl.values())
            print(f"# c={conc}: {line} ops/s", file=sys.stderr, flush=True)
        stats = manager.stats()[0]
        assert stats.size <= POOL_SIZE, stats
    finally:
        for engine in engines.values():
            await engine.dispose()
        await manager.aclose()
    return cells


def paired_ratio(a: Cell, b: Cell) -> float:
    return statistics.median(
        x.ops_per_s / y.ops_per_s for x, y in zip(a.samples, b.samples, strict=True)
    )


def report(cells: list[Cell]) -> tuple[str, list[tuple[bool, str]]]:
    index = {(c.impl, c.concurrency): c for c in cells}
    out = [
        "| c | engine | ops/s | client CPU µs/op | wait p50 ms | wait p99 ms "
        "| ops of the least served task |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for conc in CONCURRENCY:
        for name in IMPLS:
            cell = index[(name, conc)]
            out.append(
                f"| {conc} | {TITLES[name]} | {cell.median('ops_per_s') / 1000:.2f}k "
                f"| {cell.median('cpu_us_per_op'):.0f} | {cell.median('wait_p50_ms'):.2f} "
                f"| {cell.median('wait_p99_ms'):.2f} | {min(s.fewest for s in cell.samples)} |"
            )
    out += [
        "",
        "| c | connman / AsyncAdaptedQueuePool, ops/s (median of per-round ratios) |",
        "|---:|---:|",
    ]
    checks: list[tuple[bool, str]] = []
    for conc in CONCURRENCY:
        ratio = paired_ratio(index[("connman", conc)], index[("queuepool", conc)])
        out.append(f"| {conc} | {ratio:.2f}x |")
        checks.append((ratio >= 1.0, f"c={conc}: connman / AsyncAdaptedQueuePool = {ratio:.2f}x"))
    return "\n".join(out), checks


# ====================================================================== database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.3 s windows")
    parser.add_argument("--url", help="a loopback PostgreSQL (default: a throwaway cluster)")
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 7, quick 3)")
    parser.add_argument("--json", action="store_true", help="query a jsonb value, not SELECT 1")
    args = parser.parse_args(argv)
    global QUERY
    QUERY = SELECT_JSON if args.json else SELECT_1
    rounds = args.rounds or (3 if args.quick else 7)
    warmup, duration = (0.1, 0.3) if args.quick else (0.3, 1.5)
    command = "uv run python tests/bench/bench_sqlalchemy.py" + (" --quick" if args.quick else "")
    command += " --json" if args.json else ""
    with bench_database(args.url) as db:
        where = db.source
        cells = asyncio.run(bench(db.url, rounds, warmup, duration))
    table, checks = report(cells)
    print(f"Command: `{command}`")
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}, {os.cpu_count()} CPUs; database: {where}; "
        f"{rounds} rounds x {duration} s windows (after {warmup} s warm-up), "
        f"pool size {POOL_SIZE} for both.\n"
    )
    print(table)
    print()
    for ok, line in checks:
        print(f"- [{'x' if ok else ' '}] {line} (target >= 1.0x)")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
