"""Soak: the three adapters at twice the pool size through failovers, terminations and
restarts, for minutes. Not part of the test run.

Run::

    uv run python tests/bench/soak.py [--minutes 10] [--pool-size 5] [--fault-every 20]

Two throwaway clusters from the local binaries (a primary and a ``pg_basebackup -R``
standby, loopback only) behind one multi-host URL. One ConnectionManager serves the
SQLAlchemy engine (ORM inserts of settings rows), a DgentStore (puts) and a BrainStore
(captures), ``2 x pool size`` tasks in all, each recording the ids of its acknowledged
writes. From the end of the first minute to the start of the last, every
``--fault-every`` seconds the next fault of the cycle hits the current primary:

- ``terminate``: ``pg_terminate_backend`` on every pooled backend;
- ``restart``: ``pg_ctl restart -m fast``;
- ``failover``: stop the primary, promote the standby, then rebuild the old primary as
  a standby of the new one (``pg_basebackup``) and start it: the roles swap, the URL
  stays the same.

The first and last minutes run without faults, so they compare like with like.
Reported, and checked (exit status 1 if one fails):

- leaked leases: 0 (in use and waiting 0 at the end, the ``leaks`` counter 0 with a
  30 s leak threshold);
- RSS of this process and the p99 latency of acknowledged operations: last minute
  within 10 % of the first (RSS: at the end of each; p99 over each);
- every acknowledged write present on the final primary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from connman import ConnectionManager, PoolConfig
from connman.adapters.brain import BrainStore
from connman.adapters.dgent import Datum, DgentStore
from connman.adapters.sqlalchemy import create_async_engine
from connman.testing.cluster import LocalCluster

ADAPTERS = ("sqlalchemy", "dgent", "brain")


@dataclass
class Run:
    """What the run records, in memory that does not grow with the operations done
    (so that this process's RSS is the pool's, not the bookkeeping's): one byte per
    write attempt, and the latencies of the current minute only."""

    started: float = field(default_factory=time.monotonic)
    # adapter -> worker tag -> one byte per attempt n: 1 if acknowledged
    acked: dict[str, dict[str, bytearray]] = field(
        default_factory=lambda: {a: {} for a in ADAPTERS}
    )
    minute: list[float] = field(default_factory=list)  # latencies, this minute
    p99s: list[float] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    rss: list[int] = field(default_factory=list)  # kB, at the end of each minute
    faults: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def worker(run: Run, adapter: str, op: Callable[[str], Awaitable[None]]) -> None:
    tag = uuid.uuid4().hex[:8]
    marks = run.acked[adapter].setdefault(tag, bytearray())
    for n in itertools.count():
        if run.stop.is_set():
            return
        key = f"soak-{adapter}-{tag}-{n}"
        began = time.monotonic()
        try:
            await op(key)
        except Exception as exc:  # expected while a fault lasts: counted by type
            name = f"{adapter}: {type(exc).__name__}"
            run.errors[name] = run.errors.get(name, 0) + 1
            run.examples.setdefault(name, str(exc)[:300])
            marks.append(0)
            await asyncio.sleep(0.01)  # no hot loop while nothing answers
        else:
            marks.append(1)
            run.minute.append(time.monotonic() - began)


async def admin(cluster: LocalCluster, sql: str) -> Any:
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


class Pair:
    """The primary and the standby; ``failover`` swaps them."""

    def __init__(self) -> None:
        self.primary = LocalCluster()
        self.standby = LocalCluster()
        self.primary.start()
        self.standby.make_standby_of(self.primary)
        self.standby.start()
        # The order never changes, whichever is primary.
        self.url = (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},"
            f"127.0.0.1:{self.standby.port}/postgres"
        )

    def failover(self) -> None:
        old, new = self.primary, self.standby
        old.stop("fast")
        new.promote()
        self.primary, self.standby = new, old
        old.make_standby_of(new)
        old.start()

    def destroy(self) -> None:
        for cluster in (self.primary, self.standby):
            cluster.destroy()


async def faults(run: Run, pair: Pair, app: str, minutes: float, every: float) -> None:
    cycle = itertools.cycle(("terminate", "restart", "failover"))
    end_faults = run.started + (minutes - 1) * 60
    next_at = run.started + 60
    while not run.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), max(0.0, next_at - time.monotonic()))
        if run.stop.is_set() or time.monotonic() + every > end_faults:
            return
        kind = next(cycle)
        began = time.monotonic()
        if kind == "terminate":
            await admin(
                pair.primary,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name = '{app}'",
            )
        elif kind == "restart":
            await asyncio.to_thread(pair.primary.restart, "fast")
        else:
            await asyncio.to_thread(pair.failover)
        run.faults.append(f"{kind} at {began - run.started:.0f}s ({time.monotonic() - began:.1f}s)")
        print(f"  fault: {run.faults[-1]}", flush=True)
        next_at = began + every


async def sampler(run: Run, minutes: float) -> None:
    for m in range(1, int(minutes) + 1):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), run.started + 60 * m - time.monotonic())
        window, run.minute = run.minute, []
        run.rss.append(rss_kb())
        run.ops.append(len(window))
        run.p99s.append(statistics.quantiles(window, n=100)[98] if len(window) > 100 else 0.0)
        print(
            f"  minute {m}: {len(window)} ops, p99 {run.p99s[-1] * 1e3:.1f} ms, "
            f"RSS {run.rss[-1]} kB",
            flush=True,
        )


async def soak(minutes: float, pool_size: int, every: float) -> int:
    pair = await asyncio.to_thread(Pair)
    app = f"soak_{uuid.uuid4().hex[:6]}"
    config = PoolConfig(
        min_size=2,
        max_size=pool_size,
        acquire_timeout=5.0,
        connect_timeout=5.0,
        leak_threshold=30.0,
        application_name=app,
    )
    manager = ConnectionManager(pair.url, config=config, degrade=False)
    await manager.start()
    engine = create_async_engine(manager)
    dgent, brain = DgentStore(manager), BrainStore(manager)
    await brain.ensure_schema()
    await dgent.ensure_schema()
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from connman.schema.models import BrainSettings

    sessions = async_sessionmaker(engine, expire_on_commit=False)
    rng = random.Random(1)

    async def orm(key: str) -> None:
        async with sessions() as session, session.begin():
            session.add(BrainSettings(id=key, config={"soak": True}))

    async def put(key: str) -> None:
        await dgent.put(Datum(id=key, content=key.encode(), metadata={"source": "soak"}))

    async def capture(key: str) -> None:
        await brain.capture(
            f"soak {key}", embedding=[rng.uniform(-1, 1) for _ in range(32)], capture_id=key
        )

    ops = {"sqlalchemy": orm, "dgent": put, "brain": capture}
    run = Run()
    print(f"soak: {minutes:g} min, pool {pool_size}, {2 * pool_size} tasks, {pair.url}")
    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(2 * pool_size):
                adapter = ADAPTERS[i % 3]
                tg.create_task(worker(run, adapter, ops[adapter]))
            tg.create_task(faults(run, pair, app, minutes, every))
            sample = tg.create_task(sampler(run, minutes))
            await sample
            run.stop.set()
        [stats] = manager.stats()
        missing = {}
        for adapter, (table, column) in {
            "sqlalchemy": ("brain_settings", "id"),
            "dgent": ("data", "id"),
            "brain": ("captures", "id"),
        }.items():
            rows = await admin(
                pair.primary, f"SELECT {column} FROM {table} WHERE {column} LIKE 'soak-%'"
            )
            present = {r[0] for r in rows}
            missing[adapter] = sum(
                1
                for tag, marks in run.acked[adapter].items()
                for n, ok in enumerate(marks)
                if ok and f"soak-{adapter}-{tag}-{n}" not in present
            )
    finally:
        await engine.dispose()
        await manager.aclose()
        await asyncio.to_thread(pair.destroy)

    first_p99, last_p99 = run.p99s[0], run.p99s[-1]
    first_rss, last_rss = run.rss[0], run.rss[-1]
    leaked = stats.in_use + stats.waiting + stats.counters["leaks"]
    count = {a: sum(sum(m) for m in run.acked[a].values()) for a in ADAPTERS}
    acked = sum(count.values())
    checks = {
        "leaked leases 0": leaked == 0,
        "RSS last/first minute within 10 %": abs(last_rss / first_rss - 1) <= 0.10,
        "p99 last/first minute within 10 %": abs(last_p99 / first_p99 - 1) <= 0.10,
        "every acknowledged write present": not any(missing.values()),
    }
    print(f"\nfaults: {len(run.faults)}: {', '.join(run.faults)}")
    per_adapter = ", ".join(f"{a} {count[a]}" for a in ADAPTERS)
    print(f"acknowledged writes: {acked} ({per_adapter})")
    p99s = [round(p * 1e3, 1) for p in run.p99s]
    print(f"ops per minute: {run.ops}; p99 per minute (ms): {p99s}")
    print(f"RSS per minute (kB): {run.rss}")
    print(f"errors during faults: {dict(sorted(run.errors.items()))}")
    for name, text in sorted(run.examples.items()):
        print(f"  e.g. {name}: {text}")
    print(f"missing acknowledged writes: {missing}")
    print(
        f"leaked leases: {leaked} (in use {stats.in_use}, waiting {stats.waiting}, "
        f"leaks counter {stats.counters['leaks']})"
    )
    print(f"RSS first/last minute: {first_rss} / {last_rss} kB ({last_rss / first_rss:.3f}x)")
    print(
        f"p99 first/last minute: {first_p99 * 1e3:.2f} / {last_p99 * 1e3:.2f} ms "
        f"({last_p99 / first_p99:.3f}x)"
    )
    print(f"pool: {stats.counters}, hosts {dict(stats.hosts)}")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds between faults")
    args = parser.parse_args()
    if args.minutes < 3:
        parser.error("--minutes must be at least 3 (a quiet first and last minute)")
    return asyncio.run(soak(args.minutes, args.pool_size, args.fault_every))


if __name__ == "__main__":
    sys.exit(main())
