"""``connman demo``: the three kgents subsystems on one manager, for a few seconds.

On the resolved storage (the portable SQLite file when nothing is configured), one
ConnectionManager serves, concurrently:

- **sqlalchemy**: ORM sessions reading the newest crystals and recording an access
  (``access_count``, ``last_accessed``), plus a settings row;
- **dgent**: D-gent puts that grow causal chains, and chain walks;
- **brain**: Brain captures (capture + crystal in one transaction) and recent reads.

Then it prints what happened: operations per consumer, physical connections opened,
peak leases in use, waits, timeouts and errors (expected: zero), and checks that the
two Brain tracks are coherent. Metrics are served on 127.0.0.1 while it runs.

A run touches only its own rows: their ids start with ``demo-<run id>-``, its ORM
sessions read only those, and they are removed at the end, also after an error or a
Ctrl-C, unless ``--keep``. So a demo leaves no noise in someone's memory store, never
deletes what an earlier ``--keep`` run kept, and any number of demos can run at once
on one database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from connman.errors import ConnmanError
from connman.manager import ConnectionManager
from connman.resolve import resolve_storage
from connman.urls import redact_text

__all__ = ["DemoReport", "register_cli", "run_demo"]

_PREFIX = "demo-"
_CONSUMERS = ("sqlalchemy", "dgent", "brain")


@dataclass
class DemoReport:
    """What a demo run did."""

    storage: str
    tier: str
    dialect: str
    seconds: float
    operations: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    connections_opened: int = 0
    peak_in_use: int = 0
    max_size: int = 0
    waited: int = 0
    timeouts: int = 0
    acquired: int = 0
    tasks: int = 0
    run_prefix: str = _PREFIX
    coherent: bool | None = None
    metrics_url: str | None = None

    @property
    def ok(self) -> bool:
        """No error and the tracks coherent."""
        return not self.errors and self.coherent is not False


async def run_demo(
    *,
    seconds: float = 5.0,
    tasks_per_consumer: int = 4,
    metrics_port: int | None = 9464,
    keep: bool = False,
    out: TextIO | None = None,
    run_id: str | None = None,
) -> DemoReport:
    """Run the demo on the resolved storage and return its report.

    ``run_id`` names the run's rows (``demo-<run_id>-...``; default: a fresh one).
    Unless ``keep``, they are removed before this returns or raises, a cancellation
    (Ctrl-C) included."""
    from connman import metrics
    from connman.adapters.sqlalchemy import create_async_engine
    from connman.kgents.brain import BrainStore
    from connman.kgents.dgent import DgentStore

    out = out or sys.stdout
    storage = resolve_storage()
    manager = ConnectionManager(storage, observer=metrics.observer())
    await manager.start()
    pool = manager.default_pool
    assert pool is not None
    report = DemoReport(
        storage=pool.url.redacted(),
        tier=pool.tier or storage.tier.value,
        dialect=pool.dialect,
        seconds=seconds,
        max_size=pool.config.max_size,
        tasks=tasks_per_consumer * len(_CONSUMERS),
        run_prefix=run_prefix(run_id or new_run_id()),
    )
    server = None
    if metrics_port is not None:
        try:
            server = metrics.serve_metrics(manager, port=metrics_port)
            report.metrics_url = f"http://127.0.0.1:{server.port}/metrics"
        except OSError as exc:  # the port is taken: the demo still runs
            print(f"metrics not served ({exc}); pass --metrics-port 0 for any port", file=out)
    print(f"connman demo: {report.tier} storage {report.storage}", file=out)
    fate = "kept (--keep)" if keep else "removed at the end, or on Ctrl-C"
    print(f"this run's rows: ids starting {report.run_prefix}, {fate}", file=out)
    if report.metrics_url:
        print(f"metrics: {report.metrics_url} (and /healthz) while it runs", file=out)

    dgent = DgentStore(manager)
    brain = BrainStore(manager)
    engine = create_async_engine(manager)
    schema_ready = False
    try:
        await brain.ensure_schema()  # captures + the SQLAlchemy track's tables
        await dgent.ensure_schema()
        schema_ready = True
        deadline = time.monotonic() + seconds
        sampler = asyncio.create_task(_sample_peak(manager, report))
        try:
            async with asyncio.TaskGroup() as group:
                for i in range(tasks_per_consumer):
                    worker = f"{report.run_prefix}{i}"
                    group.create_task(
                        _guard(report, "dgent", _dgent(dgent, worker, deadline, report))
                    )
                    group.create_task(
                        _guard(report, "brain", _brain(brain, worker, deadline, report))
                    )
                    group.create_task(
                        _guard(report, "sqlalchemy", _orm(engine, worker, deadline, report))
                    )
        finally:
            sampler.cancel()
        from connman.kgents.coherence import check_coherence

        coherence = await check_coherence(manager)
        report.coherent = coherence.coherent
    finally:
        try:
            # Also when the run failed or was cancelled (Ctrl-C cancels this task;
            # awaiting here still works, a second Ctrl-C aborts).
            if schema_ready and not keep:
                await _clean_up(manager, report.run_prefix)
        finally:
            await engine.dispose()
            [stats] = [s for s in manager.stats() if s.name == pool.name]
            report.connections_opened = stats.counters["connections_opened"]
            report.acquired = stats.counters["acquired"]
            report.waited = stats.counters["waited"]
            report.timeouts = stats.counters["timeouts"]
            if server is not None:
                server.close()
            await manager.aclose()
    _print_report(report, keep, out)
    return report


def new_run_id() -> str:
    """A fresh run id (8 hex digits)."""
    return uuid.uuid4().hex[:8]


def run_prefix(run_id: str) -> str:
    """The id prefix of one run's rows."""
    return f"{_PREFIX}{run_id}-"


# -- the three workloads ---------------------------------------------------------------


async def _dgent(store: Any, worker: str, deadline: float, report: DemoReport) -> None:
    from connman.kgents.dgent import Datum

    parent: str | None = None
    n = 0
    while time.monotonic() < deadline:
        datum = Datum(
            id=f"{worker}-{n}",
            content=f"thought {n} of {worker}".encode(),
            causal_parent=parent,
            metadata={"source": "connman demo"},
        )
        parent = await store.put(datum)
        report.operations["dgent"] += 1
        n += 1
        if n % 10 == 0:
            chain = await store.causal_chain(parent)
            assert len(chain) == n, "a causal chain lost a link"
            report.operations["dgent"] += 1


async def _brain(store: Any, worker: str, deadline: float, report: DemoReport) -> None:
    n = 0
    rng = random.Random(worker)
    while time.monotonic() < deadline:
        await store.capture(
            f"observation {n} from {worker}: {rng.random():.6f}",
            embedding=[rng.uniform(-1, 1) for _ in range(128)],
            metadata={"source": "connman demo"},
            tags=("demo", f"worker-{worker}"),
            capture_id=f"{worker}-{n}",
        )
        report.operations["brain"] += 1
        n += 1
        if n % 4 == 0:
            await store.recent(5)
            report.operations["brain"] += 1


async def _orm(engine: Any, worker: str, deadline: float, report: DemoReport) -> None:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from connman.kgents.schema.models import BrainSettings, Crystal

    sessions = async_sessionmaker(engine, expire_on_commit=False)
    settings_id = worker
    mine = worker[: worker.rindex("-") + 1] + "%"  # this run's crystals only
    while time.monotonic() < deadline:
        async with sessions() as session, session.begin():
            newest = (
                await session.scalars(
                    select(Crystal)
                    .where(Crystal.id.like(mine))
                    .order_by(Crystal.created_at.desc())
                    .limit(5)
                )
            ).all()
            for crystal in newest:  # an access, as Brain records it
                crystal.access_count += 1
                crystal.last_accessed = datetime.now(UTC).replace(tzinfo=None)
            settings = await session.get(BrainSettings, settings_id)
            if settings is None:
                session.add(BrainSettings(id=settings_id, config={"demo": True}))
            else:
                settings.config = {"demo": True, "sessions": settings.config.get("sessions", 0) + 1}
        report.operations["sqlalchemy"] += 1


async def _guard(report: DemoReport, consumer: str, work: Any) -> None:
    """Count an error instead of stopping the other workers."""
    try:
        await work
    except Exception as exc:
        report.errors.append(f"{consumer}: {type(exc).__name__}: {redact_text(str(exc))}")


async def _sample_peak(manager: ConnectionManager, report: DemoReport) -> None:
    # A sampler is enough for a demo: peak in-use over the run, every 10 ms.
    while True:
        for stats in manager.stats():
            report.peak_in_use = max(report.peak_in_use, stats.in_use)
        await asyncio.sleep(0.01)


async def _clean_up(manager: ConnectionManager, prefix: str) -> None:
    """Remove one run's rows (ids starting with ``prefix``, which holds no LIKE
    wildcard), in one transaction per database."""
    from connman.kgents.brain import BrainStore

    like = {"p": f"{prefix}%"}
    async with BrainStore(manager, consumer="demo").transaction() as tx:
        for table, column in (
            ("brain_crystal_tags", "crystal_id"),
            ("brain_crystals", "id"),
            ("captures", "id"),
            ("brain_settings", "id"),
        ):
            await tx.execute(f"DELETE FROM {table} WHERE {column} LIKE :p", like)
    # D-gent may live elsewhere (KGENTS_DGENT_BACKEND); its chains go in one statement.
    dgent_db = BrainStore(manager, consumer="demo", url=manager.storage.dgent_url)
    async with dgent_db.transaction() as tx:
        await tx.execute("DELETE FROM data WHERE id LIKE :p", like)


# -- output ----------------------------------------------------------------------------


def _print_report(r: DemoReport, keep: bool, out: TextIO) -> None:
    total = sum(r.operations.values())
    print(f"\n{total} operations in {r.seconds:g} s on one pool ({r.dialect}):", file=out)
    for consumer in _CONSUMERS:
        ops = r.operations[consumer]
        print(f"  {consumer:<11} {ops:>7} ops  {ops / r.seconds:>8.0f}/s", file=out)
    print(f"physical connections opened  {r.connections_opened} (max_size {r.max_size})", file=out)
    print(f"peak leases in use           {r.peak_in_use}", file=out)
    print(f"acquires that waited         {r.waited} of {r.acquired}", file=out)
    print(
        f"  ({r.tasks} tasks share at most {r.max_size} connections on purpose: "
        "waiting in line is normal, timeouts are not)",
        file=out,
    )
    print(f"acquire timeouts             {r.timeouts}", file=out)
    print(f"errors                       {len(r.errors)}", file=out)
    for error in r.errors[:10]:
        print(f"  {error}", file=out)
    coherent = {True: "yes", False: "NO", None: "not checked"}[r.coherent]
    print(f"captures and crystals coherent  {coherent}", file=out)
    print(
        f"this run's rows kept (ids start with {r.run_prefix})"
        if keep
        else f"this run's rows removed (ids starting {r.run_prefix})",
        file=out,
    )


# -- CLI -------------------------------------------------------------------------------


def register_cli(subparsers: Any) -> None:
    """Add ``connman demo`` to the CLI."""
    parser = subparsers.add_parser(
        "demo", help="run the SQLAlchemy, D-gent and Brain adapters on one pool"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="how long (default 5)")
    parser.add_argument(
        "--tasks", type=int, default=4, help="concurrent tasks per subsystem (default 4)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9464,
        help="serve /metrics and /healthz on 127.0.0.1:PORT while running (0: any free port; "
        "-1: off)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo's rows")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    if args.seconds <= 0 or args.tasks < 1:
        print("connman demo: --seconds must be > 0 and --tasks >= 1", file=sys.stderr)
        return 2
    port = None if args.metrics_port < 0 else args.metrics_port
    run_id = new_run_id()
    try:
        report = asyncio.run(
            run_demo(
                seconds=args.seconds,
                tasks_per_consumer=args.tasks,
                metrics_port=port,
                keep=args.keep,
                run_id=run_id,
            )
        )
    except KeyboardInterrupt:
        # asyncio.run cancelled the demo, which removed its rows before this.
        fate = "kept (--keep)" if args.keep else "removed"
        print(
            f"connman demo: interrupted; this run's rows (ids starting {run_prefix(run_id)}) "
            f"{fate}",
            file=sys.stderr,
        )
        return 130
    except ConnmanError as exc:
        print(f"connman demo: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    return 0 if report.ok else 1
