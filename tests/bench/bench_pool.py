"""Pool benchmark: connman against asyncpg.Pool, psycopg_pool and bare connections.

Run::

    uv run python tests/bench/bench_pool.py [--quick] [--url URL] [--loops asyncio,uvloop]

One process, one database. Every implementation is open for the whole run of an event
loop, and for each cell (workload x concurrency) the implementations take turns: round
r runs them in an order rotated by r, each for a short warm-up and then a measured
window, and the figures reported are the median over the rounds. So every
implementation sees the same server, the same machine load and the same harness.

Workloads (pool size 10 everywhere):

- ``select``: acquire, ``SELECT 1`` (asyncpg ``fetchval``, psycopg ``execute`` +
  ``fetchone``), release.
- ``lease``: acquire, one event-loop yield while holding the connection
  (``asyncio.sleep(0)``), release; no I/O of its own. Without the yield a pool whose
  acquire completes without suspending would never let another task run, and
  concurrency would mean nothing.

Implementations:

- ``connman``: ``ConnectionManager(url, PoolConfig(min_size=10, max_size=10))``, leases.
- ``asyncpg``: ``asyncpg.create_pool(min_size=10, max_size=10)``, defaults (its release
  runs the reset query, one round trip).
- ``asyncpg-noreset``: the same with ``reset=`` a coroutine that does nothing.
- ``psycopg``: ``psycopg_pool.AsyncConnectionPool(min_size=10, max_size=10)`` with
  ``autocommit=True`` connections (without it every lease costs BEGIN + COMMIT).
- ``fifo``: the least a fair pool can be (30 lines below): an idle list, a deque of
  futures, direct handoff of a released connection to the oldest waiter. No deadlines,
  no per-consumer accounting, no health checks, no reset, no cancellation safety. What
  parking and waking tasks in FIFO order costs by itself: the floor for connman.
- ``bare``: the physical limit. ``min(c, 10)`` tasks, each owning one of 10 asyncpg
  connections, issue operations back to back. At c >= 10 the server sees exactly what
  it sees under any 10-connection pool (10 queries in flight), with no pooling work
  at all on the client, so no pool can beat it. It has no acquire wait.

Reported per cell: ops/s, client CPU per op (``getrusage``: user + system time of the
benchmark process over the window, system time also apart; the server runs in other
processes), tasks that completed no operation in a window, and the acquire wait
(``perf_counter`` from asking for a connection until holding it) p50/p99, each the
median of its per-round values. Ratios between implementations are paired: the median
over rounds of the two implementations' ops/s in the same round. Then the targets of
the issue, PASS/FAIL (``--strict``: exit 1 on a FAIL). Results: tests/bench/RESULTS.md.

The database: ``--url``, else ``$CONNMAN_BENCH_URL``, else a throwaway cluster from the
local PostgreSQL binaries (``connman.testing.cluster.LocalCluster``). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from _common import bench_database

import connman

POOL_SIZE = 10
CONSUMER = "bench"
WORKLOADS = ("select", "lease")
WORKLOAD_TITLES = {
    "select": "SELECT 1 per lease (acquire + SELECT 1 + release)",
    "lease": "lease + release alone (one sleep(0) held, no query)",
}
IMPL_NAMES = ("connman", "asyncpg", "asyncpg-noreset", "psycopg", "fifo", "bare")
IMPL_TITLES = {
    "connman": "connman",
    "asyncpg": "asyncpg.Pool (default)",
    "asyncpg-noreset": "asyncpg.Pool (no-op reset)",
    "psycopg": "psycopg_pool (async)",
    "fifo": "minimal FIFO pool",
    "bare": "bare connections",
}

_pc = time.perf_counter


# ====================================================================== harness


class Run:
    """Shared state of one measured window: the phase (0 warm-up, 1 measuring,
    2 stop) and the acquire waits of the operations completed while measuring."""

    __slots__ = ("phase", "waits")

    def __init__(self) -> None:
        self.phase = 0
        self.waits: list[float] = []


@dataclass
class Sample:
    ops_per_s: float
    cpu_us_per_op: float  # user + system time of this process
    sys_us_per_op: float
    p50_us: float
    p99_us: float
    starved: int  # tasks that completed no operation in the window


@dataclass
class Cell:
    impl: str
    workload: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)

    def spread(self) -> float:
        """(max - min) / median of ops/s over the rounds, in percent."""
        values = [s.ops_per_s for s in self.samples]
        mid = statistics.median(values)
        return 100.0 * (max(values) - min(values)) / mid if mid else 0.0


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


Worker = Callable[[Run, bool, int], Coroutine[Any, Any, int]]


async def measure(
    worker: Worker, select: bool, tasks: int, warmup: float, duration: float
) -> Sample:
    """Start ``tasks`` workers, let them warm up, measure ``duration`` seconds."""
    run = Run()
    loop = asyncio.get_running_loop()
    running = [loop.create_task(worker(run, select, i)) for i in range(tasks)]
    try:
        await asyncio.sleep(warmup)
        run.phase = 1
        t0, cpu0 = _pc(), _rusage()
        await asyncio.sleep(duration)
        run.phase = 2
        t1, cpu1 = _pc(), _rusage()
        served = await asyncio.gather(*running)
    except BaseException:
        run.phase = 2
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    ops = len(run.waits)
    waits = sorted(run.waits)
    return Sample(
        ops_per_s=ops / (t1 - t0),
        cpu_us_per_op=1e6 * (cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime) / ops
        if ops
        else float("nan"),
        sys_us_per_op=1e6 * (cpu1.ru_stime - cpu0.ru_stime) / ops if ops else float("nan"),
        p50_us=1e6 * _quantile(waits, 0.50),
        p99_us=1e6 * _quantile(waits, 0.99),
        starved=sum(1 for n in served if n == 0),
    )


# ====================================================================== implementations


class Impl:
    name = ""
    has_wait = True

    async def open(self, dsn: str, url: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def tasks_for(self, concurrency: int) -> int:
        return concurrency

    async def worker(self, run: Run, select: bool, index: int) -> int:
        # Each implementation writes its loop out in full, with its own acquire bound
        # to a local: a shared loop taking the acquire as an argument would add a call
        # per lease to every anchor, and the pools differ by a few microseconds.
        raise NotImplementedError


class Connman(Impl):
    name = "connman"

    async def open(self, dsn: str, url: str) -> None:
        config = connman.PoolConfig(min_size=POOL_SIZE, max_size=POOL_SIZE)
        self.manager = connman.ConnectionManager(url, config=config, degrade=False)
        await self.manager.start()
        deadline = _pc() + 30
        while self.manager.stats()[0].idle < POOL_SIZE:  # min_size fills in the background
            if _pc() > deadline:
                raise RuntimeError(f"connman did not open {POOL_SIZE} connections")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.manager.aclose()

    async def worker(self, run: Run, select: bool, index: int) -> int:
        lease = self.manager.lease
        waits = run.waits
        pc = _pc
        served = 0
        if select:
            while run.phase < 2:
                t0 = pc()
                async with lease(CONSUMER) as held:
                    t1 = pc()
                    await held.connection.fetchval("SELECT 1")
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        else:
            sleep = asyncio.sleep
            while run.phase < 2:
                t0 = pc()
                async with lease(CONSUMER):
                    t1 = pc()
                    await sleep(0)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        return served


async def _no_reset(conn: asyncpg.Connection) -> None:
    return None


class AsyncpgPool(Impl):
    name = "asyncpg"
    reset: Any = None

    async def open(self, dsn: str, url: str) -> None:
        kwargs: dict[str, Any] = {} if self.reset is None else {"reset": self.reset}
        self.pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE, **kwargs)

    async def close(self) -> None:
        await self.pool.close()

    async def worker(self, run: Run, select: bool, index: int) -> int:
        acquire = self.pool.acquire
        waits = run.waits
        pc = _pc
        served = 0
        if select:
            while run.phase < 2:
                t0 = pc()
                async with acquire() as conn:
                    t1 = pc()
                    await conn.fetchval("SELECT 1")
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        else:
            sleep = asyncio.sleep
            while run.phase < 2:
                t0 = pc()
                async with acquire():
                    t1 = pc()
                    await sleep(0)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        return served


class AsyncpgNoReset(AsyncpgPool):
    name = "asyncpg-noreset"
    reset = staticmethod(_no_reset)


class PsycopgPool(Impl):
    name = "psycopg"

    async def open(self, dsn: str, url: str) -> None:
        from psycopg_pool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(
            dsn,
            min_size=POOL_SIZE,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True},
            open=False,
        )
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def worker(self, run: Run, select: bool, index: int) -> int:
        connection = self.pool.connection
        waits = run.waits
        pc = _pc
        served = 0
        if select:
            while run.phase < 2:
                t0 = pc()
                async with connection() as conn:
                    t1 = pc()
                    cur = await conn.execute("SELECT 1")
                    await cur.fetchone()
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        else:
            sleep = asyncio.sleep
            while run.phase < 2:
                t0 = pc()
                async with connection():
                    t1 = pc()
                    await sleep(0)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        return served


class _BareConnections(Impl):
    """Owns 10 plain asyncpg connections (shared by fifo and bare, which never run
    at the same time)."""

    conns: list[asyncpg.Connection]

    def __init__(self, shared: dict[str, Any]) -> None:
        self._shared = shared

    async def open(self, dsn: str, url: str) -> None:
        if "conns" not in self._shared:
            self._shared["conns"] = await asyncio.gather(
                *(asyncpg.connect(dsn) for _ in range(POOL_SIZE))
            )
            self._shared["owners"] = 0
        self._shared["owners"] += 1
        self.conns = self._shared["conns"]

    async def close(self) -> None:
        self._shared["owners"] -= 1
        if not self._shared["owners"]:
            await asyncio.gather(*(c.close() for c in self._shared.pop("conns")))


class FifoPool(_BareConnections):
    """The least a fair pool can do: LIFO idle list, strict FIFO waiters, direct
    handoff of a released connection to the oldest waiter. No deadlines, no
    consumers, no health checks, no reset (and no cancellation safety)."""

    name = "fifo"

    async def open(self, dsn: str, url: str) -> None:
        await super().open(dsn, url)
        self.idle = list(self.conns)
        self.waiters: deque[asyncio.Future[asyncpg.Connection]] = deque()

    async def acquire(self) -> asyncpg.Connection:
        if self.idle and not self.waiters:
            return self.idle.pop()
        future = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        return await future

    def release(self, conn: asyncpg.Connection) -> None:
        waiters = self.waiters
        while waiters:
            future = waiters.popleft()
            if not future.done():
                future.set_result(conn)
                return
        self.idle.append(conn)

    async def worker(self, run: Run, select: bool, index: int) -> int:
        acquire, release = self.acquire, self.release
        waits = run.waits
        pc = _pc
        served = 0
        if select:
            while run.phase < 2:
                t0 = pc()
                conn = await acquire()
                t1 = pc()
                try:
                    await conn.fetchval("SELECT 1")
                finally:
                    release(conn)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        else:
            sleep = asyncio.sleep
            while run.phase < 2:
                t0 = pc()
                conn = await acquire()
                t1 = pc()
                try:
                    await sleep(0)
                finally:
                    release(conn)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        return served


class Bare(_BareConnections):
    name = "bare"
    has_wait = False

    def tasks_for(self, concurrency: int) -> int:
        return min(concurrency, POOL_SIZE)

    async def worker(self, run: Run, select: bool, index: int) -> int:
        conn = self.conns[index]
        waits = run.waits
        pc = _pc
        served = 0
        if select:
            while run.phase < 2:
                t0 = pc()
                t1 = pc()
                await conn.fetchval("SELECT 1")
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        else:
            sleep = asyncio.sleep
            while run.phase < 2:
                t0 = pc()
                t1 = pc()
                await sleep(0)
                if run.phase == 1:
                    waits.append(t1 - t0)
                    served += 1
        return served


def make_impls(names: list[str]) -> list[Impl]:
    shared: dict[str, Any] = {}
    factories: dict[str, Callable[[], Impl]] = {
        "connman": Connman,
        "asyncpg": AsyncpgPool,
        "asyncpg-noreset": AsyncpgNoReset,
        "psycopg": PsycopgPool,
        "fifo": lambda: FifoPool(shared),
        "bare": lambda: Bare(shared),
    }
    return [factories[n]() for n in names]


# ====================================================================== one event loop


@dataclass
class Plan:
    impls: list[str]
    workloads: list[str]
    concurrency: list[int]
    rounds: int
    warmup: float
    duration: dict[str, float]


async def bench_loop(loop_name: str, dsn: str, url: str, plan: Plan) -> list[Cell]:
    impls = make_impls(plan.impls)
    for impl in impls:
        await impl.open(dsn, url)
    cells: list[Cell] = []
    try:
        for workload in plan.workloads:
            for conc in plan.concurrency:
                by_impl = {i.name: Cell(i.name, workload, conc) for i in impls}
                for r in range(plan.rounds):
                    order = impls[r % len(impls) :] + impls[: r % len(impls)]
                    for impl in order:
                        gc.collect()
                        sample = await measure(
                            impl.worker,
                            workload == "select",
                            impl.tasks_for(conc),
                            plan.warmup,
                            plan.duration[workload],
                        )
                        by_impl[impl.name].samples.append(sample)
                cells.extend(by_impl.values())
                line = "  ".join(f"{c.impl} {c.median('ops_per_s'):,.0f}" for c in by_impl.values())
                print(f"# [{loop_name}] {workload} c={conc}: {line}", file=sys.stderr, flush=True)
    finally:
        for impl in reversed(impls):
            await impl.close()
    return cells


def run_loop(loop_name: str, dsn: str, url: str, plan: Plan) -> list[Cell]:
    if loop_name == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    elif loop_name == "asyncio":
        factory = None
    else:
        raise SystemExit(f"--loops: unknown loop {loop_name!r} (asyncio, uvloop)")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(bench_loop(loop_name, dsn, url, plan))


# ====================================================================== report


def _fmt_ops(x: float) -> str:
    return f"{x / 1000:.1f}k"


def _fmt_us(x: float) -> str:
    if x != x:  # nan
        return "—"
    return f"{x:.0f}" if x >= 10 else f"{x:.1f}"


def paired_ratio(a: Cell | None, b: Cell | None) -> float:
    """Median over rounds of a's ops/s / b's ops/s in the same round (both ran within
    seconds of each other, so a load change on the machine hits both)."""
    if a is None or b is None:
        return float("nan")
    return statistics.median(
        x.ops_per_s / y.ops_per_s for x, y in zip(a.samples, b.samples, strict=True)
    )


def report(results: dict[str, list[Cell]], plan: Plan) -> tuple[str, list[tuple[bool, str]]]:
    out: list[str] = []
    checks: list[tuple[bool, str]] = []
    for loop_name, cells in results.items():
        index = {(c.impl, c.workload, c.concurrency): c for c in cells}
        for workload in plan.workloads:
            out.append(f"### {loop_name}: {WORKLOAD_TITLES[workload]}\n")
            out.append(
                "| c | implementation | ops/s | ÷ bare | spread | client CPU µs/op (of which sys) "
                "| wait p50 µs | wait p99 µs | starved |"
            )
            out.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
            for conc in plan.concurrency:
                for name in plan.impls:
                    cell = index.get((name, workload, conc))
                    if cell is None:
                        continue
                    waited = name != "bare"
                    tasks = min(conc, POOL_SIZE) if name == "bare" else conc
                    out.append(
                        f"| {conc} | {IMPL_TITLES[name]} | {_fmt_ops(cell.median('ops_per_s'))} "
                        f"| {_fmt_ratio(paired_ratio(cell, index.get(('bare', workload, conc))))} "
                        f"| {cell.spread():.0f}% | {_fmt_us(cell.median('cpu_us_per_op'))} "
                        f"({_fmt_us(cell.median('sys_us_per_op'))}) "
                        f"| {_fmt_us(cell.median('p50_us')) if waited else '—'} "
                        f"| {_fmt_us(cell.median('p99_us')) if waited else '—'} "
                        f"| {max(s.starved for s in cell.samples)}/{tasks} |"
                    )
            out.append("")
            if "connman" in plan.impls and ("asyncpg" in plan.impls or "bare" in plan.impls):
                out.append(
                    "| c | connman / asyncpg.Pool | connman / bare "
                    "| connman CPU − bare CPU µs/op | connman CPU − fifo CPU µs/op |"
                )
                out.append("|---:|---:|---:|---:|---:|")
                for conc in plan.concurrency:
                    cm = index.get(("connman", workload, conc))
                    if cm is None:
                        continue
                    deltas = []
                    for other in ("bare", "fifo"):
                        o = index.get((other, workload, conc))
                        deltas.append(
                            f"{cm.median('cpu_us_per_op') - o.median('cpu_us_per_op'):+.1f}"
                            if o
                            else "—"
                        )
                    r_ap = paired_ratio(cm, index.get(("asyncpg", workload, conc)))
                    r_bare = paired_ratio(cm, index.get(("bare", workload, conc)))
                    out.append(
                        f"| {conc} | {_fmt_ratio(r_ap)} | {_fmt_ratio(r_bare)} "
                        f"| {deltas[0]} | {deltas[1]} |"
                    )
                out.append("")
            if workload == "select":
                checks.extend(_checks(loop_name, index, plan))
    return "\n".join(out), checks


def _fmt_ratio(r: float) -> str:
    return "—" if r != r else f"{r:.2f}x"


def _checks(
    loop_name: str, index: dict[tuple[str, str, int], Cell], plan: Plan
) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []
    for conc in plan.concurrency:
        cm = index.get(("connman", "select", conc))
        ap = index.get(("asyncpg", "select", conc))
        if cm and ap:
            r = paired_ratio(cm, ap)
            checks.append(
                (
                    r >= 1.5,
                    f"[{loop_name}] SELECT 1 c={conc}: connman / asyncpg.Pool = {r:.2f}x (>= 1.5x)",
                )
            )
    for conc in plan.concurrency:
        cm = index.get(("connman", "select", conc))
        bare = index.get(("bare", "select", conc))
        if conc >= 16 and cm and bare:
            r = paired_ratio(cm, bare)
            checks.append(
                (r >= 0.7, f"[{loop_name}] SELECT 1 c={conc}: connman / bare = {r:.2f}x (>= 0.7x)")
            )
    cm = index.get(("connman", "select", 128))
    if cm:
        p50, p99 = cm.median("p50_us"), cm.median("p99_us")
        fifo = index.get(("fifo", "select", 128))
        control = (
            f"; minimal FIFO pool {fifo.median('p99_us') / fifo.median('p50_us'):.2f}x"
            if fifo
            else ""
        )
        checks.append(
            (
                p99 <= 2 * p50,
                f"[{loop_name}] SELECT 1 c=128: connman wait p99 {p99:.0f} µs <= 2 x p50 "
                f"{p50:.0f} µs ({p99 / p50:.2f}x{control})",
            )
        )
    return checks


# ====================================================================== database


async def _server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def _git_state() -> str:
    """The commit connman was measured at, and whether connman/ had local changes."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "connman"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"commit {head}" + (" + uncommitted changes in connman/" if dirty else " (clean)")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for dist in ("asyncpg", "psycopg", "psycopg-pool", "uvloop", "connman"):
        try:
            out[dist] = version(dist)
        except Exception:
            out[dist] = "?"
    return out


# ====================================================================== main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short rounds (about 1 min)")
    parser.add_argument(
        "--url", help="PostgreSQL URL (loopback only); default: a throwaway cluster"
    )
    parser.add_argument("--loops", default="asyncio,uvloop", help="comma-separated: asyncio,uvloop")
    parser.add_argument("--impls", default=",".join(IMPL_NAMES), help="comma-separated subset")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="select,lease")
    parser.add_argument("--concurrency", default="1,16,128", help="comma-separated task counts")
    parser.add_argument("--rounds", type=int, help="rounds per cell (default 9, quick 3)")
    parser.add_argument(
        "--duration", type=float, help="seconds measured per implementation per round"
    )
    parser.add_argument("--json", help="also write the raw samples to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target fails")
    args = parser.parse_args(argv)

    impls = [n for n in args.impls.split(",") if n]
    for name in impls:
        if name not in IMPL_NAMES:
            parser.error(f"unknown implementation {name!r}; known: {', '.join(IMPL_NAMES)}")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}")
    # Many short slices rather than a few long ones: the machine is shared (2 cores,
    # the server on the same cores, maybe other jobs), and fine interleaving lets a
    # change of load hit every implementation alike.
    if args.quick:
        rounds, warmup, duration = 3, 0.05, {"select": 0.25, "lease": 0.15}
    else:
        rounds, warmup, duration = 9, 0.1, {"select": 0.5, "lease": 0.3}
    if args.rounds:
        rounds = args.rounds
    if args.duration:
        duration = dict.fromkeys(WORKLOADS, args.duration)
    plan = Plan(
        impls=impls,
        workloads=workloads,
        concurrency=[int(c) for c in args.concurrency.split(",")],
        rounds=rounds,
        warmup=warmup,
        duration=duration,
    )
    loops = [x for x in args.loops.split(",") if x]

    started = time.monotonic()
    load_before = os.getloadavg()
    results: dict[str, list[Cell]] = {}
    with bench_database(args.url) as db:
        dsn, url, source = db.dsn, db.url, db.source
        server = asyncio.run(_server_version(dsn))
        for loop_name in loops:
            results[loop_name] = run_loop(loop_name, dsn, url, plan)
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()

    versions = _versions()
    tables, checks = report(results, plan)
    header = [
        f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"machine: {os.cpu_count()} cores ({platform.machine()}), {platform.system()} "
        f"{platform.release()}; PostgreSQL {server} ({source}), client and server on the "
        "same cores",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"connman source: {_git_state()}",
        "command: "
        + " ".join(
            ["uv run python tests/bench/bench_pool.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}",
        f"plan: pool size {POOL_SIZE}; {plan.rounds} rounds per cell, implementations "
        f"rotated per round; warm-up {plan.warmup}s, measured "
        + ", ".join(f"{w} {d}s" for w, d in plan.duration.items())
        + f"; median of rounds; run took {elapsed:.0f}s",
        "",
    ]
    print("\n".join(header))
    print(tables)
    if checks:
        print("### Targets\n")
        print("```")
        for ok, text in checks:
            print(("PASS  " if ok else "FAIL  ") + text)
        print("```")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "header": header,
                    "versions": versions,
                    "server": server,
                    "results": {
                        loop: [
                            {
                                "impl": c.impl,
                                "workload": c.workload,
                                "concurrency": c.concurrency,
                                "samples": [s.__dict__ for s in c.samples],
                            }
                            for c in cells
                        ]
                        for loop, cells in results.items()
                    },
                },
                fh,
                indent=1,
            )
    return 1 if args.strict and not all(ok for ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
