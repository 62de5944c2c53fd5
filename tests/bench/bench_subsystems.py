"""Three subsystems: one connman pool of 10 against three asyncpg pools of 10.

Run::

    uv run python tests/bench/bench_subsystems.py [--quick] [--url URL] [--tasks N]

The situation connman exists for: SQLAlchemy, D-gent and Brain each busy in one
process. ``separate`` gives each subsystem its own ``asyncpg.create_pool(min_size=10,
max_size=10)`` (today's kgents: a pool per subsystem); ``shared`` gives them one
connman pool of 10 with a consumer each. Every subsystem runs ``--tasks`` tasks doing
acquire + ``SELECT 1`` + release in a loop. Reported per setup, median over interleaved
rounds: total ops/s, and the peak number of server connections, counted in
pg_stat_activity by application_name from a second connection sampling as fast as the
server answers. Targets (from the issue): peak 10 vs 30, shared ops/s >= 1.0x separate.

The database: ``--url``, else ``$CONNMAN_BENCH_URL``, else a throwaway cluster from the
local binaries (``connman.testing.cluster.LocalCluster``). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
from _common import bench_database

import connman

SUBSYSTEMS = ("sqlalchemy", "dgent", "brain")
POOL_SIZE = 10


@dataclass
class Result:
    ops: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)


class Separate:
    """Three asyncpg pools, one per subsystem (asyncpg defaults: reset on release)."""

    name = "separate: 3 asyncpg pools of 10"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.app = f"bench_sep_{uuid.uuid4().hex[:6]}"
        self.pools: dict[str, asyncpg.Pool] = {}

    async def open(self) -> None:
        for subsystem in SUBSYSTEMS:
            self.pools[subsystem] = await asyncpg.create_pool(
                self.dsn,
                min_size=POOL_SIZE,
                max_size=POOL_SIZE,
                server_settings={"application_name": self.app},
            )

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    def op(self, subsystem: str) -> Callable[[], Awaitable[None]]:
        pool = self.pools[subsystem]

        async def one() -> None:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")

        return one


class Shared:
    """One connman pool of 10; each subsystem is a consumer."""

    name = "shared: 1 connman pool of 10"

    def __init__(self, url: str) -> None:
        self.app = f"bench_cm_{uuid.uuid4().hex[:6]}"
        config = connman.PoolConfig(
            min_size=POOL_SIZE, max_size=POOL_SIZE, application_name=self.app
        )
        self.manager = connman.ConnectionManager(url, config=config, degrade=False)

    async def open(self) -> None:
        await self.manager.start()

    async def close(self) -> None:
        await self.manager.aclose()

    def op(self, subsystem: str) -> Callable[[], Awaitable[None]]:
        manager = self.manager

        async def one() -> None:
            async with manager.lease(subsystem) as lease:
                await lease.connection.fetchval("SELECT 1")

        return one


async def measure(
    setup: Separate | Shared, admin: asyncpg.Connection, tasks: int, seconds: float
) -> tuple[float, int]:
    """Run every subsystem's tasks for ``seconds``; total ops/s and peak connections."""
    stop = asyncio.Event()
    count = 0
    peak = 0

    async def worker(op: Callable[[], Awaitable[None]]) -> None:
        nonlocal count
        while not stop.is_set():
            await op()
            count += 1

    async def sample() -> None:
        nonlocal peak
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        while not stop.is_set():
            peak = max(peak, await admin.fetchval(query, setup.app))

    workers = [
        asyncio.create_task(worker(setup.op(subsystem)))
        for subsystem in SUBSYSTEMS
        for _ in range(tasks)
    ]
    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0.3)  # warm-up: let every pool reach its steady state
    count = 0
    started = time.perf_counter()
    await asyncio.sleep(seconds)  # the measured window (a benchmark, not a test)
    elapsed = time.perf_counter() - started
    total = count
    stop.set()
    await asyncio.gather(*workers, sampler)
    return total / elapsed, peak


async def run(dsn: str, url: str, *, rounds: int, seconds: float, tasks: int) -> dict[str, Result]:
    admin = await asyncpg.connect(dsn)
    setups: list[Separate | Shared] = [Separate(dsn), Shared(url)]
    results = {setup.name: Result() for setup in setups}
    try:
        for setup in setups:
            await setup.open()
        for r in range(rounds):
            order = setups if r % 2 == 0 else list(reversed(setups))
            for setup in order:
                ops, peak = await measure(setup, admin, tasks, seconds)
                results[setup.name].ops.append(ops)
                results[setup.name].peaks.append(peak)
    finally:
        for setup in setups:
            await setup.close()
        await admin.close()
    return results


def report(
    results: dict[str, Result], *, tasks: int, rounds: int, seconds: float
) -> tuple[str, bool]:
    sep = results[Separate.name]
    shared = results[Shared.name]
    ratios = sorted(s / p for s, p in zip(shared.ops, sep.ops, strict=True))
    ratio = statistics.median(ratios)
    lines = [
        f"3 subsystems x {tasks} tasks, acquire + SELECT 1 + release; {rounds} interleaved "
        f"rounds of {seconds:g} s, medians.",
        "",
        "| setup | ops/s | peak server connections |",
        "|---|---:|---:|",
    ]
    for name, result in results.items():
        lines.append(f"| {name} | {statistics.median(result.ops):,.0f} | {max(result.peaks)} |")
    lines.append("")
    ok_peak = max(shared.peaks) <= POOL_SIZE
    ok_ops = ratio >= 1.0
    lines.append(
        f"{'PASS' if ok_peak else 'FAIL'}  peak server connections: shared {max(shared.peaks)} "
        f"(<= {POOL_SIZE}) vs separate {max(sep.peaks)}"
    )
    lines.append(
        f"{'PASS' if ok_ops else 'FAIL'}  shared / separate ops/s = {ratio:.2f}x (>= 1.0x)"
    )
    return "\n".join(lines), ok_peak and ok_ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1 s")
    parser.add_argument("--url", default=None)
    parser.add_argument("--tasks", type=int, default=16, help="tasks per subsystem")
    args = parser.parse_args(argv)
    rounds, seconds = (3, 1.0) if args.quick else (7, 2.0)
    with bench_database(args.url) as db:
        results = asyncio.run(run(db.dsn, db.url, rounds=rounds, seconds=seconds, tasks=args.tasks))
    text, ok = report(results, tasks=args.tasks, rounds=rounds, seconds=seconds)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
