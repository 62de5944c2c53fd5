"""Soak: the three adapters at twice the pool size through failovers, terminations and
restarts, for minutes. Not part of the test run.

Run::

    uv run python tests/bench/soak.py [--minutes 10] [--pool-size 5] [--fault-every 20]
        [--trace-memory]

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

The metrics are on (the manager's observer, ``instrument()``, an HTTP endpoint on
loopback) and scraped every 15 s, so their path is soaked too.

The first and last minutes run without faults, so they compare like with like.
Reported, and checked (exit status 1 if one fails):

- leaked leases: 0 (in use and waiting 0 at the end, the ``leaks`` counter 0 with a
  30 s leak threshold);
- RSS of this process and the p99 latency of acknowledged operations: the last minute
  not more than 10 % above the first (RSS: at the end of each; p99 over each). One-sided:
  a last minute that is faster or smaller than a first one still warming up passes.
  Minute 2 against the last (after the warm-up) is printed too, not checked;
- every acknowledged write present on the final primary.

The bookkeeping is of fixed size, so that this process's RSS is the pool's: latencies
go into a histogram of 1 % log buckets (p99 read from it, to within 1 %), and each
worker keeps its number of attempts and the few attempts that failed. Every minute
prints where the RSS is: Python's small-object arenas (pymalloc; how much of them is in
live blocks), glibc malloc (in use; free but kept), and the rest (code, libraries,
stacks, mmaps). ``--trace-memory`` runs tracemalloc (slower) and prints, per minute,
the source lines whose memory grew since the end of minute 1: those in connman/ and
the largest anywhere. Its snapshots are Python objects too, and tracemalloc hides
pymalloc's figures: judge the RSS from a run without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import math
import os
import random
import re
import sys
import tempfile
import time
import tracemalloc
import urllib.request
import uuid
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from connman import ConnectionManager, PoolConfig, metrics
from connman.adapters.sqlalchemy import create_async_engine
from connman.kgents.brain import BrainStore
from connman.kgents.dgent import Datum, DgentStore
from connman.testing.cluster import LocalCluster

ADAPTERS = ("sqlalchemy", "dgent", "brain")
SCRAPE_EVERY = 15.0  # seconds between two scrapes of the metrics endpoint


class Histogram:
    """Latencies (seconds) in buckets 1 % wide on a log scale, from 10 µs to 1000 s:
    fixed memory, however many are added; a quantile is read to within 1 % (the upper
    edge of its bucket)."""

    LOW = 1e-5
    GROWTH = 1.01
    SIZE = math.ceil(math.log(1e3 / LOW, GROWTH)) + 2

    def __init__(self) -> None:
        self.counts = array("q", bytes(8 * self.SIZE))
        self.n = 0

    def add(self, seconds: float) -> None:
        i = 0 if seconds <= self.LOW else math.ceil(math.log(seconds / self.LOW, self.GROWTH))
        self.counts[min(i, self.SIZE - 1)] += 1
        self.n += 1

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0 < q < 1); 0.0 when empty."""
        rank, seen = math.ceil(q * self.n), 0
        for i, count in enumerate(self.counts):
            seen += count
            if count and seen >= rank:
                return self.LOW * self.GROWTH**i
        return 0.0


@dataclass
class Marks:
    """One worker's writes: attempt n was acknowledged unless n is in ``failed``."""

    attempts: int = 0
    failed: set[int] = field(default_factory=set)


@dataclass
class Memory:
    """Where this process's memory is, in kB (see :func:`memory`)."""

    rss: int
    arenas: int  # pymalloc arenas (mmap)
    blocks: int  # of which in live Python objects
    malloc_used: int  # glibc malloc, in use (heap and mmapped chunks); -1: unknown
    malloc_free: int  # glibc malloc, free but not returned to the system; -1: unknown
    traced: int  # tracemalloc's traced memory; -1: not tracing
    tracer: int  # tracemalloc's own memory (in malloc); -1: not tracing

    def line(self) -> str:
        def mb(kb: int) -> str:
            return f"{kb / 1024:.1f}"

        rest = self.rss - sum(
            max(kb, 0) for kb in (self.arenas, self.malloc_used, self.malloc_free)
        )
        text = f"RSS {mb(self.rss)} MB = pymalloc "
        if self.arenas >= 0:
            text += f"{mb(self.arenas)} ({mb(self.blocks)} live)"
        else:  # sys._debugmallocstats() prints nothing while tracemalloc hooks pymalloc
            text += "? (hidden by tracemalloc)"
        if self.malloc_used >= 0:
            text += f" + malloc {mb(self.malloc_used)} used + {mb(self.malloc_free)} free"
        text += f" + rest {mb(rest)}"
        if self.traced >= 0:
            text += f"; traced {mb(self.traced)}, tracemalloc's own {mb(self.tracer)}"
        return text


@dataclass
class Run:
    """What the run records, in memory that does not grow with the operations done."""

    started: float = field(default_factory=time.monotonic)
    acked: dict[str, dict[str, Marks]] = field(default_factory=lambda: {a: {} for a in ADAPTERS})
    minute: Histogram = field(default_factory=Histogram)  # latencies, this minute
    p99s: list[float] = field(default_factory=list)
    ops: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    memory: list[Memory] = field(default_factory=list)  # at the end of each minute
    faults: list[str] = field(default_factory=list)
    scrapes: int = 0
    scrape_errors: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33+), None elsewhere."""
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


MALLINFO2 = _mallinfo2()


def _pymalloc_kb() -> tuple[int, int]:
    """(arena bytes, bytes in allocated blocks) of pymalloc, in kB, from
    ``sys._debugmallocstats()`` (which writes to the C stderr: captured)."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    arenas = re.search(r"^\d+ arenas \* \d+ bytes/arena\s+=\s+([\d,]+)", text, re.M)
    blocks = re.search(r"^# bytes in allocated blocks\s+=\s+([\d,]+)", text, re.M)
    values = [int(m.group(1).replace(",", "")) // 1024 if m else -1 for m in (arenas, blocks)]
    return values[0], values[1]


def memory() -> Memory:
    arenas, blocks = _pymalloc_kb()
    used = free = -1
    if MALLINFO2 is not None:
        info = MALLINFO2()
        used, free = (info.uordblks + info.hblkhd) // 1024, info.fordblks // 1024
    traced = tracer = -1
    if tracemalloc.is_tracing():
        traced = tracemalloc.get_traced_memory()[0] // 1024
        tracer = tracemalloc.get_tracemalloc_memory() // 1024
    return Memory(rss_kb(), arenas, blocks, used, free, traced, tracer)


async def worker(run: Run, adapter: str, op: Callable[[str], Awaitable[None]]) -> None:
    tag = uuid.uuid4().hex[:8]
    marks = run.acked[adapter].setdefault(tag, Marks())
    for n in itertools.count():
        if run.stop.is_set():
            return
        key = f"soak-{adapter}-{tag}-{n}"
        marks.attempts = n + 1
        began = time.monotonic()
        try:
            await op(key)
        except Exception as exc:  # expected while a fault lasts: counted by type
            name = f"{adapter}: {type(exc).__name__}"
            run.errors[name] = run.errors.get(name, 0) + 1
            run.examples.setdefault(name, str(exc)[:300])
            marks.failed.add(n)
            await asyncio.sleep(0.01)  # no hot loop while nothing answers
        else:
            run.minute.add(time.monotonic() - began)


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


class Tracer:
    """``--trace-memory``: tracemalloc snapshots at the end of each minute, compared
    with the one at the end of minute 1 (the pools and caches are warm by then)."""

    TOP = 8

    def __init__(self) -> None:
        self.base: tracemalloc.Snapshot | None = None
        self.connman_growth: dict[str, int] = {}  # line -> bytes grown, last snapshot

    def minute(self) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        if self.base is None:
            self.base = snapshot
            return
        growing = [d for d in snapshot.compare_to(self.base, "lineno") if d.size_diff > 0]
        ours = [d for d in growing if "/connman/" in d.traceback[0].filename]
        self.connman_growth = {_where(d): d.size_diff for d in ours}
        for title, diffs in (("connman/", ours), ("anywhere", growing)):
            print(f"    grown since minute 1, {title}:", "none" if not diffs else "")
            for d in diffs[: self.TOP]:
                print(f"      {d.size_diff / 1024:+9.1f} kB {d.count_diff:+7d} blocks  {_where(d)}")


def _where(diff: tracemalloc.StatisticDiff) -> str:
    frame = diff.traceback[0]
    name = frame.filename
    for root in ("/connman/", "/site-packages/", "/lib/python"):
        if root in name:
            name = name[name.index(root) + 1 :]
            break
    return f"{name}:{frame.lineno}"


async def sampler(run: Run, minutes: float, tracer: Tracer | None) -> None:
    for m in range(1, int(minutes) + 1):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), run.started + 60 * m - time.monotonic())
        window, run.minute = run.minute, Histogram()
        run.memory.append(memory())
        run.ops.append(window.n)
        run.p99s.append(window.quantile(0.99))
        print(
            f"  minute {m}: {window.n} ops, p99 {run.p99s[-1] * 1e3:.2f} ms, "
            f"{run.memory[-1].line()}",
            flush=True,
        )
        if tracer is not None:
            tracer.minute()


async def scraper(run: Run, url: str) -> None:
    """GET the metrics endpoint every SCRAPE_EVERY seconds, as Prometheus would."""

    def get() -> int:
        with urllib.request.urlopen(url, timeout=10) as response:
            return len(response.read())

    while not run.stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), SCRAPE_EVERY)
        try:
            await asyncio.to_thread(get)
        except Exception:
            run.scrape_errors += 1
        else:
            run.scrapes += 1


async def soak(minutes: float, pool_size: int, every: float, trace: bool) -> int:
    tracer = None
    if trace:
        tracemalloc.start()
        tracer = Tracer()
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
    manager = ConnectionManager(pair.url, config=config, degrade=False, observer=metrics.observer())
    metrics.instrument(manager)
    server = metrics.start_http_server(port=0)
    await manager.start()
    engine = create_async_engine(manager)
    dgent, brain = DgentStore(manager), BrainStore(manager)
    await brain.ensure_schema()
    await dgent.ensure_schema()
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from connman.kgents.schema.models import BrainSettings

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
            tg.create_task(scraper(run, f"http://127.0.0.1:{server.port}/metrics"))
            sample = tg.create_task(sampler(run, minutes, tracer))
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
                for n in range(marks.attempts)
                if n not in marks.failed and f"soak-{adapter}-{tag}-{n}" not in present
            )
    finally:
        await engine.dispose()
        await manager.aclose()
        server.close()
        await asyncio.to_thread(pair.destroy)

    rss = [m.rss for m in run.memory]
    leaked = stats.in_use + stats.waiting + stats.counters["leaks"]
    count = {a: sum(m.attempts - len(m.failed) for m in run.acked[a].values()) for a in ADAPTERS}
    acked = sum(count.values())
    checks = {
        "leaked leases 0": leaked == 0,
        "RSS last minute <= 1.10x first": rss[-1] <= 1.10 * rss[0],
        "p99 last minute <= 1.10x first": run.p99s[-1] <= 1.10 * run.p99s[0],
        "every acknowledged write present": not any(missing.values()),
    }
    print(f"\nfaults: {len(run.faults)}: {', '.join(run.faults)}")
    per_adapter = ", ".join(f"{a} {count[a]}" for a in ADAPTERS)
    print(f"acknowledged writes: {acked} ({per_adapter})")
    p99s = [round(p * 1e3, 2) for p in run.p99s]
    print(f"ops per minute: {run.ops}; p99 per minute (ms): {p99s}")
    print(f"RSS per minute (MB): {[round(kb / 1024, 1) for kb in rss]}")
    print(f"  first: {run.memory[0].line()}\n  last:  {run.memory[-1].line()}")
    print(f"errors during faults: {dict(sorted(run.errors.items()))}")
    for name, text in sorted(run.examples.items()):
        print(f"  e.g. {name}: {text}")
    print(f"metrics scrapes: {run.scrapes} ({run.scrape_errors} failed)")
    print(f"missing acknowledged writes: {missing}")
    print(
        f"leaked leases: {leaked} (in use {stats.in_use}, waiting {stats.waiting}, "
        f"leaks counter {stats.counters['leaks']})"
    )
    for what, series, unit, scale in (("RSS", rss, "MB", 1 / 1024), ("p99", run.p99s, "ms", 1e3)):
        first, second, last = series[0], series[1], series[-1]
        print(
            f"{what} last/first minute: {first * scale:.2f} -> {last * scale:.2f} {unit} "
            f"({last / first:.3f}x); after the warm-up, last/minute 2: "
            f"{second * scale:.2f} -> {last * scale:.2f} {unit} ({last / second:.3f}x)"
        )
    if tracer is not None:
        grown = sum(tracer.connman_growth.values())
        print(
            f"connman/ lines grown since minute 1: {len(tracer.connman_growth)}, "
            f"{grown / 1024:.1f} kB in all"
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
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="tracemalloc: per minute, the lines whose memory grew since minute 1 (slower)",
    )
    args = parser.parse_args()
    if args.minutes < 3:
        parser.error("--minutes must be at least 3 (a quiet first and last minute)")
    return asyncio.run(soak(args.minutes, args.pool_size, args.fault_every, args.trace_memory))


if __name__ == "__main__":
    sys.exit(main())
