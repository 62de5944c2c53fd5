"""The migration itself: plan, create, copy every table in dependency order,
verify. Also the dry run (the same reads and conversions, no writes) and the
standalone verify.

Per table: the source is streamed in batches (rows and bytes bounded, one batch read
ahead in a worker thread while the previous one is written), every batch converted
(:mod:`connman.migrate.convert`), written in its own transaction, and counted:
read, written, already present, rejected (each rejected row with its key and
reason, in the rejects file). From SQLite into PostgreSQL, text is read as UTF-8
bytes and the batch is sent in PostgreSQL's binary COPY format, built here
(:mod:`connman.migrate.pgcopy`); the source checksum hashes those same bytes.

Once a table's rows are in, its keys and indexes are built (side by side) and it is
verified, on the server, while the next table copies (``jobs`` tables copy at once;
a table waits for the tables it references). Killed at any point, a run leaves
whole batches only. The next run finds them without sending them again: the source
is read in the same order, and while the target holds what was read so far each
batch's keys are looked up before it is sent (:class:`WriteState`, the target's
high-water mark); a key the target holds is the same row (already present) or
another one (a conflict: reported, never overwritten; compared by
:meth:`RowConverter.identities <connman.migrate.convert.RowConverter.identities>`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from connman.dialect import quote_ident
from connman.migrate.checksum import sql_checksum
from connman.migrate.compare import (
    Comparison,
    Side,
    driver_key,
    find_differences,
    side_checksum,
    target_identities,
    target_sql,
)
from connman.migrate.convert import RowConverter, as_text, combine
from connman.migrate.endpoints import Endpoints, open_endpoints
from connman.migrate.errors import (
    MigrationError,
    SchemaIncompatible,
    SourceError,
    TargetUnavailable,
)
from connman.migrate.kinds import ValueStats
from connman.migrate.model import Catalog, Table
from connman.migrate.pgcopy import CopyRows
from connman.migrate.plan import (
    TablePlan,
    catalog_specs,
    check_compatible,
    order_tables,
    plan_table,
)
from connman.migrate.report import Progress, RejectsFile
from connman.migrate.sides import Target, Written

__all__ = ["MigrateOptions", "Migration", "TableOutcome", "migrate", "verify"]

SAMPLE_REJECTS = 20
"""Rejected rows kept in memory per table for the printed report (all go to the file)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MigrateOptions:
    """What to migrate and how."""

    source: str
    """URL of the source database."""
    target: str
    """URL of the target database."""
    execute: bool = False
    """False: a dry run (reads both sides, writes nothing anywhere)."""
    tables: tuple[str, ...] | None = None
    """Only these tables (default: every table of the source)."""
    batch_rows: int = 5000
    batch_bytes: int = 16 << 20
    """A batch ends at this many bytes of values even below ``batch_rows``."""
    jobs: int = 1
    """Tables copied at once (independent ones only). One by default: the copy is
    bound by this process (one core, the GIL), and while it copies the next table
    the server builds the previous one's keys and indexes and verifies it; two
    copies at once only contend (measured: 39 s against 29 s for the benchmark)."""
    verify: bool = True
    """After ``execute``, verify every table."""
    rejects_path: str | None = None
    """Where rejected rows are written (JSON lines); None: nowhere."""


@dataclass(slots=True)
class TableOutcome:
    """What happened to one table."""

    plan: TablePlan
    source_rows: int = 0
    read: int = 0
    written: int = 0
    present: int = 0
    rejected: int = 0
    seconds: float = 0.0
    """Time spent copying (reading, converting, writing, indexes)."""
    verify_seconds: float = 0.0
    convertible: int = 0
    checksum: int = 0
    rejects: list[tuple[Any, str]] = field(default_factory=list)
    """The first rejected rows (key, reason)."""
    conflicts: int = 0
    """Rejected rows whose key the target holds for another row (see :data:`CONFLICT`)."""
    target_rows: int = 0
    """Rows the target table held before the copy."""
    note: str | None = None
    comparison: Comparison | None = None

    @property
    def name(self) -> str:
        """The table's name."""
        return self.plan.name

    @property
    def merged(self) -> bool:
        """Verified: equal to the source, or holding every source row (but the
        conflicts, reported) besides rows of its own."""
        c = self.comparison
        if c is None:
            return False
        if c.ok:
            return True
        d = c.differences
        return d is not None and d.n_missing == 0 and d.n_differing == self.conflicts

    def reject(self, key: Any, reason: str, file: RejectsFile) -> None:
        """Count and record one rejected row."""
        self.rejected += 1
        if len(self.rejects) < SAMPLE_REJECTS:
            self.rejects.append((key, reason))
        file.write(self.name, key, reason)


@dataclass(slots=True)
class Migration:
    """The outcome of :func:`migrate`."""

    source: str
    """Redacted URL."""
    target: str
    plans: list[TablePlan]
    outcomes: list[TableOutcome]
    skipped: dict[str, str]
    executed: bool
    verified: bool = False
    rejects_path: str | None = None
    seconds: float = 0.0

    @property
    def rejected(self) -> int:
        """Rows rejected in all tables."""
        return sum(o.rejected for o in self.outcomes)

    @property
    def verify_ok(self) -> bool:
        """Every table verified: equal, or (rows the target holds of its own, written
        there while the source was written elsewhere) every source row is on the
        target but the conflicts reported."""
        return self.verified and all(o.merged for o in self.outcomes)

    @property
    def already_complete(self) -> bool:
        """Nothing was sent: the target held every row it could take already."""
        return self.executed and all(
            o.written == 0
            and o.conflicts == 0
            and (o.present == o.convertible or not o.plan.primary_key)
            for o in self.outcomes
        )


async def migrate(
    options: MigrateOptions,
    *,
    progress: Progress | None = None,
    on_plan: Callable[[Migration], None] | None = None,
) -> Migration:
    """Run a migration (or its dry run); see the module docstring. ``on_plan`` is
    called with the plans (no outcome yet) before anything is written."""
    started = time.perf_counter()
    ends = await open_endpoints(options.source, options.target, dry_run=not options.execute)
    rejects = RejectsFile(options.rejects_path if options.execute else None)
    try:
        plans, skipped = await _plan(ends, options.tables)
        outcomes = [TableOutcome(plan) for plan in plans]
        result = Migration(
            source=ends.source_url.redacted(),
            target=ends.target_url.redacted(),
            plans=plans,
            outcomes=outcomes,
            skipped=skipped,
            executed=options.execute,
            verified=options.execute and options.verify,
        )
        if on_plan is not None:
            on_plan(result)
        if options.execute:
            for plan in plans:
                if plan.create:
                    await ends.target.create(plan.create)
        await _run_all(ends, outcomes, options, progress or Progress(), rejects)
        if rejects.count and options.execute:
            result.rejects_path = options.rejects_path
    finally:
        rejects.close()
        await ends.aclose()
    result.seconds = time.perf_counter() - started
    return result


async def verify(
    source: str,
    target: str,
    *,
    tables: Sequence[str] | None = None,
    batch_rows: int = 5000,
    batch_bytes: int = 32 << 20,
) -> list[Comparison]:
    """Compare every table (or ``tables``) of ``source`` with ``target``."""
    ends = await open_endpoints(source, target, dry_run=True)
    try:
        plans, _ = await _plan(ends, tuple(tables) if tables else None, for_verify=True)
        comparisons = []
        target_catalog = await ends.target.catalog()
        for plan in plans:
            source_side = await _source_side(ends, plan, batch_rows, batch_bytes)
            if plan.name not in target_catalog.tables:
                comparisons.append(Comparison(plan.name, source_side, None))
                continue
            compared = await _compare(ends, plan, source_side, batch_rows, batch_bytes)
            comparisons.append(await _explain(ends, plan, compared, batch_rows, batch_bytes))
        return comparisons
    finally:
        await ends.aclose()


# -- planning ----------------------------------------------------------------------------


async def _plan(
    ends: Endpoints, wanted: tuple[str, ...] | None, *, for_verify: bool = False
) -> tuple[list[TablePlan], dict[str, str]]:
    source = await ends.source.catalog()
    target = await ends.target.catalog()
    tables = _select(source, wanted)
    specs = catalog_specs(source)
    plans: list[TablePlan] = []
    problems: list[str] = []
    for table in order_tables(tables, specs):
        existing = target.tables.get(table.name)
        stats = await _stats(ends, table, existing, specs.get(table.name))
        plan = plan_table(
            table,
            source_dialect=ends.source_url.dialect,
            target_dialect=ends.target_dialect,
            target=existing,
            spec=specs.get(table.name),
            stats=stats,
        )
        fk = plan.self_fk
        if fk is not None and table.rowid:
            plan.parents_by_rowid = await ends.source.parents_precede(
                table.name, fk.referenced, fk.column
            )
        try:
            check_compatible(plan, existing, name=ends.target_url.redacted())
        except SchemaIncompatible as exc:
            if not for_verify:
                problems.append(str(exc))
        plans.append(plan)
    if problems:
        raise SchemaIncompatible("\n".join(problems))
    return plans, dict(source.skipped)


def _select(catalog: Catalog, wanted: tuple[str, ...] | None) -> list[Table]:
    if not wanted:
        return list(catalog.tables.values())
    unknown = [name for name in wanted if name not in catalog.tables]
    if unknown:
        have = ", ".join(sorted(catalog.tables)) or "none"
        raise SourceError(f"no table(s) {', '.join(unknown)} in the source (it has: {have})")
    return [catalog.tables[name] for name in wanted]


async def _stats(
    ends: Endpoints, table: Table, existing: Table | None, spec: Any
) -> dict[str, ValueStats] | None:
    """Value statistics for the columns whose type must be inferred (SQLite source
    columns neither connman's schema nor an existing target table describes)."""
    if ends.target_dialect != "postgresql":
        return None
    unknown = [
        c.name
        for c in table.columns
        if not c.generated
        and (existing is None or existing.column(c.name) is None)
        and (spec is None or c.name not in spec.column_names)
    ]
    if not unknown:
        return None
    return await ends.source.value_stats(table.name, unknown)


# -- running ---------------------------------------------------------------------------


async def _run_all(
    ends: Endpoints,
    outcomes: list[TableOutcome],
    options: MigrateOptions,
    progress: Progress,
    rejects: RejectsFile,
) -> None:
    done = {o.name: asyncio.Event() for o in outcomes}
    names = set(done)
    slots = asyncio.Semaphore(max(1, options.jobs))

    async def one(outcome: TableOutcome) -> None:
        plan = outcome.plan
        deps = set(plan.depends) & names
        for dep in deps:
            await done[dep].wait()
        try:
            await _run_table(ends, outcome, options, progress, rejects, slots, done[outcome.name])
        finally:
            done[outcome.name].set()

    try:
        async with anyio.create_task_group() as group:
            for outcome in outcomes:
                group.start_soon(one, outcome)
    except BaseExceptionGroup as failed:
        # One table's failure stops the others: report that failure, not the group.
        raise _first(failed) from None


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, MigrationError)), leaves[0])


async def _run_table(
    ends: Endpoints,
    outcome: TableOutcome,
    options: MigrateOptions,
    progress: Progress,
    rejects: RejectsFile,
    slots: asyncio.Semaphore,
    finished: asyncio.Event,
) -> None:
    """Copy one table while holding one of ``slots``, then (slot released: the next
    table's copy overlaps with this one's server-side work) build its keys and
    indexes, set ``finished``, and verify it."""
    async with slots:
        started = await _copy_table(ends, outcome, options, progress, rejects)

    async def finish() -> None:
        if options.execute:
            plan = outcome.plan
            await ends.target.finish(
                plan.name,
                plan.after,
                plan.serial,
                constraints=plan.constraints,
                key_build=plan.key_build,
            )
        outcome.seconds = time.perf_counter() - started
        finished.set()

    async def check() -> None:
        begun = time.perf_counter()
        source_side = Side(
            outcome.convertible, outcome.checksum, outcome.rejected - outcome.conflicts
        )
        compared = await _compare(
            ends, outcome.plan, source_side, options.batch_rows, options.batch_bytes
        )
        outcome.comparison = await _explain(
            ends, outcome.plan, compared, options.batch_rows, options.batch_bytes
        )
        outcome.verify_seconds = time.perf_counter() - begun

    if not (options.execute and options.verify):
        await finish()
    elif ends.target.verifies_while_building:
        # The verify's scan and the index builds read the table at once: PostgreSQL
        # synchronizes their scans, and the cores are shared between them.
        async with anyio.create_task_group() as group:
            group.start_soon(finish)
            group.start_soon(check)
    else:
        await finish()
        await check()


async def _copy_table(
    ends: Endpoints,
    outcome: TableOutcome,
    options: MigrateOptions,
    progress: Progress,
    rejects: RejectsFile,
) -> float:
    """The copy itself (or the dry run's reads); when it started."""
    plan = outcome.plan
    started = time.perf_counter()
    outcome.source_rows = await ends.source.count(plan.name)
    # Text read as UTF-8 bytes and sent as such in a binary COPY, where the table
    # allows it; a dry run reads (and checks) the same way.
    raw = plan.binary_copy(ends.source_url.dialect, ends.target_dialect)
    converter = plan.converter(ends.target_dialect, raw_text=raw, copy=raw and options.execute)
    flagged = plan.self_fk is not None
    key_index = plan.key_index
    keyed = bool(plan.primary_key)
    target = ends.target

    copy_rows = options.execute
    if options.execute and plan.loading:  # left without its keys by a killed bulk load
        await target.create(plan.constraints)
        plan.constraints, plan.key_build = (), None
    state = WriteState()
    if options.execute and plan.target_exists:
        outcome.target_rows = await target.count(plan.name)
        # Rows there already: look each batch's keys up before sending it, from the
        # first batch on (a COPY into a complete table would fail and roll back).
        state.probe = outcome.target_rows > 0
    if options.execute and not keyed and plan.target_exists and outcome.target_rows > 0:
        copy_rows = False
        outcome.note = (
            "the target table already has rows and no primary key: nothing copied; "
            "verify compares them"
        )

    def prepare(batch: list[tuple[Any, ...]]) -> _Batch:
        refused: list[tuple[Any, str]] = []
        if flagged:
            kept = []
            for row in batch:
                if row[-1] and plan.reject_orphans:
                    assert plan.self_fk is not None
                    refused.append(
                        (
                            _report_key(row, key_index),
                            f"{plan.self_fk.column} {_parent(plan, row)!r} is not in the source "
                            "table (a parent deleted without its children)",
                        )
                    )
                else:
                    kept.append(row[:-1])
            batch_rows = kept
        else:
            batch_rows = batch
        prepared = converter.prepare(batch_rows)
        for index, reason in prepared.rejects:
            refused.append((_report_key(batch_rows[index], key_index), reason))
        return _Batch(
            len(batch),
            prepared.rows,
            prepared.checksum,
            refused,
            prepared.encoded,
            prepared.canon,
        )

    progress.start(plan.name, outcome.source_rows)
    sql = plan.source_sql(ends.source_url.dialect)
    # A parents-first table keeps one batch in flight, in order.
    depth = 1 if flagged else target.writes_in_flight
    inflight: set[asyncio.Task[None]] = set()

    async def settle(limit: int) -> None:
        while len(inflight) > limit:
            done, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            inflight.difference_update(done)
            for task in done:
                task.result()  # a failed write stops the table

    try:
        async for batch in ends.source.batches(
            sql,
            batch_rows=options.batch_rows,
            batch_bytes=options.batch_bytes,
            prepare=prepare,
            raw_text=raw,
        ):
            outcome.read += batch.read
            outcome.convertible += len(batch.rows)
            outcome.checksum = combine(outcome.checksum, batch.checksum)
            for key, reason in batch.refused:
                outcome.reject(key, reason, rejects)
            if batch.rows:
                if copy_rows:
                    await settle(depth - 1)
                    write = _write(ends, plan, outcome, batch, state, rejects, converter, progress)
                    inflight.add(asyncio.ensure_future(write))
                    if depth == 1:
                        await settle(0)
                elif not options.execute and plan.target_exists and keyed:
                    outcome.present += await _present(target, plan, batch.rows)
            progress.advance(plan.name, batch.read)
        await settle(0)
        if flagged and outcome.read < outcome.source_rows:
            await _unreached(ends, outcome, rejects)
    finally:
        for task in inflight:
            task.cancel()
        if inflight:
            await asyncio.wait(inflight)
        progress.finish(plan.name)
    return started


@dataclass(slots=True)
class _Batch:
    read: int
    rows: list[tuple[Any, ...]]
    checksum: int
    refused: list[tuple[Any, str]]
    encoded: CopyRows | None = None
    """``rows`` in binary COPY form (see :mod:`connman.migrate.pgcopy`)."""
    canon: Sequence[Sequence[Any]] = ()
    """``rows``' canonical values, column by column (their identities)."""


HOLES = 2
"""Batches found absent in a row before a resumed copy stops looking keys up first:
a killed run may have committed a batch after one it never finished (two are in
flight at once)."""


@dataclass(slots=True)
class WriteState:
    """Per-table memory of the writer: look the next batch's keys up before sending
    it? Yes while the target holds the rows read so far (a resumed or repeated run
    walks through what is there sending keys only, never rows); no once :data:`HOLES`
    batches in a row were found absent (the target's high-water mark is passed: plain
    COPY from there on)."""

    probe: bool = False
    absent: int = 0

    def looked_up(self, found: int) -> None:
        """A lookup found ``found`` of a batch's keys on the target."""
        self.absent = 0 if found else self.absent + 1
        self.probe = self.absent < HOLES


def _key(row: tuple[Any, ...], key_index: Sequence[int]) -> Any:
    if not key_index:
        return None
    if len(key_index) == 1:
        return row[key_index[0]]
    return [row[i] for i in key_index]


def _report_key(row: tuple[Any, ...], key_index: Sequence[int]) -> Any:
    """The key of a rejected row, for the report."""
    key = _key(row, key_index)
    return [_shown(k) for k in key] if isinstance(key, list) else _shown(key)


def _shown(value: Any) -> Any:
    # Text keys read as UTF-8 bytes (binary COPY) are reported as the text they are.
    return as_text(value)


def _parent(plan: TablePlan, row: tuple[Any, ...]) -> Any:
    assert plan.self_fk is not None
    return _shown(row[plan.column_names.index(plan.self_fk.column)])


async def _write(
    ends: Endpoints,
    plan: TablePlan,
    outcome: TableOutcome,
    batch: _Batch,
    state: WriteState,
    rejects: RejectsFile,
    converter: RowConverter,
    progress: Progress,
) -> None:
    key_index = plan.key_index
    rows = batch.rows
    if ends.target.skips_existing:
        written, present, refused = await _write_skipping(
            ends, plan, outcome, batch, rejects, converter
        )
    else:
        written, present, refused = await _write_probing(
            ends, plan, outcome, batch, state, rejects, converter
        )
    outcome.written += written
    outcome.present += present
    progress.written(written)
    for index, reason in refused:
        # Still counted as convertible on the source side: verify shows the gap.
        outcome.reject(_report_key(rows[index], key_index), reason, rejects)


async def _write_skipping(
    ends: Endpoints,
    plan: TablePlan,
    outcome: TableOutcome,
    batch: _Batch,
    rejects: RejectsFile,
    converter: RowConverter,
) -> Written:
    """One batch into a target that skips rows whose key it holds (see
    :attr:`Target.skips_existing <connman.migrate.sides.Target.skips_existing>`):
    when it skipped some, they are looked up, a conflict reported as into
    PostgreSQL (the target's row is kept, never overwritten)."""
    rows = batch.rows
    done = await ends.target.write(plan.name, plan.column_names, rows, keyed=bool(plan.primary_key))
    assert done is not None  # such a target skips the rows, never the whole batch
    written, present, refused = done
    if present and plan.key_index:
        skip = {i for i, _ in refused}
        kept = [i for i in range(len(rows)) if i not in skip]
        _, _, conflicts = await _sort_out(ends, plan, outcome, batch, kept, rejects, converter)
        present -= conflicts
    return written, present, refused


async def _write_probing(
    ends: Endpoints,
    plan: TablePlan,
    outcome: TableOutcome,
    batch: _Batch,
    state: WriteState,
    rejects: RejectsFile,
    converter: RowConverter,
) -> Written:
    """(written, already present, refused) of one batch into a target whose write
    fails whole on an existing key (PostgreSQL's COPY): its keys looked up first
    while ``state`` says so; rows whose key is there are left out, counted as
    present when they are the same row, rejected as a conflict when the target holds
    another row under that key (never overwritten)."""
    target = ends.target
    key_index = plan.key_index
    rows = batch.rows
    todo = list(range(len(rows)))
    present = 0
    for _attempt in range(3):
        if key_index and state.probe:
            left, same, _ = await _sort_out(ends, plan, outcome, batch, todo, rejects, converter)
            present += same
            state.looked_up(len(todo) - len(left))
            todo = left
        if not todo:
            return 0, present, []
        whole = len(todo) == len(rows)
        part = rows if whole else [rows[i] for i in todo]
        data = batch.encoded if whole or batch.encoded is None else batch.encoded.subset(todo)
        done = await target.write(
            plan.name, plan.column_names, part, encoded=data, keyed=bool(key_index)
        )
        if done is not None:
            written, dup, refused = done
            return written, present + dup, [(todo[i], why) for i, why in refused]
        if not key_index:
            raise TargetUnavailable(f"{plan.name}: a unique key refused rows of a keyless table")
        state.probe = True  # rows are there after all (written meanwhile): look them up
    raise TargetUnavailable(f"{plan.name}: rows keep conflicting with concurrent writes")


async def _sort_out(
    ends: Endpoints,
    plan: TablePlan,
    outcome: TableOutcome,
    batch: _Batch,
    indices: list[int],
    rejects: RejectsFile,
    converter: RowConverter,
) -> tuple[list[int], int, int]:
    """Look the rows of ``batch`` at ``indices`` up on the target by key: (those it
    lacks, how many it holds as they are, how many it holds another row for). The
    last are conflicts: rejected with :data:`CONFLICT`, never overwritten."""
    rows = batch.rows
    keys = [driver_key(rows[i], plan.key_index) for i in indices]
    there = await target_identities(ends, plan, keys)
    mine = converter.identities(batch.canon, indices)
    absent: list[int] = []
    same = conflicts = 0
    for i, (key, easy, hard) in zip(indices, mine, strict=True):
        other = there.get(key)
        if other is None:
            absent.append(i)
        elif other == (easy, hard):
            same += 1
        else:
            conflicts += 1
            outcome.conflicts += 1
            outcome.reject(_report_key(rows[i], plan.key_index), CONFLICT, rejects)
    return absent, same, conflicts


CONFLICT = (
    "primary key conflict: the target holds a different row under this key; it was "
    "left as it is (not overwritten)"
)
"""The reject reason of a source row whose key the target uses for another row."""


async def _present(target: Target, plan: TablePlan, rows: list[tuple[Any, ...]]) -> int:
    keys = [_key(r, plan.key_index) for r in rows]
    if len(plan.key_index) > 1:
        keys = [tuple(k) for k in keys]
    found = await target.present_keys(plan.name, plan.primary_key, plan.key_types, keys)
    return len(found)


async def _unreached(ends: Endpoints, outcome: TableOutcome, rejects: RejectsFile) -> None:
    sql = outcome.plan.unreached_sql()
    if sql is None:
        return
    for (key,) in await ends.source.fetch_all(sql):
        outcome.read += 1
        outcome.reject(key, "part of a causal_parent cycle: no parent-first order exists", rejects)


async def _source_side(ends: Endpoints, plan: TablePlan, batch_rows: int, batch_bytes: int) -> Side:
    flagged = plan.self_fk is not None
    # Read as the copy reads (text as bytes where it would be): the same checks.
    raw = plan.binary_copy(ends.source_url.dialect, ends.target_dialect)
    side = await side_checksum(
        ends.source,
        plan.source_sql(ends.source_url.dialect),
        plan.converter(ends.target_dialect, raw_text=raw),
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        strip_flag=flagged,
        orphans_unconvertible=plan.reject_orphans,
        raw_text=raw,
    )
    if flagged:
        total = await ends.source.count(plan.name)
        missing = total - side.rows - side.unconvertible
        if missing > 0:
            side = Side(side.rows, side.checksum, side.unconvertible + missing)
    return side


async def _compare(
    ends: Endpoints, plan: TablePlan, source_side: Side, batch_rows: int, batch_bytes: int
) -> Comparison:
    converter = plan.converter(ends.target_dialect)
    layout = converter.layout
    target = ends.target
    if target.sums_on_server:
        # The server sums what it can (no row leaves it); JSON and numeric columns
        # are read back with their key and summed here.
        names = [quote_ident(c.name) for c in plan.columns]
        rows, checksum = await target.aggregate(sql_checksum(quote_ident(plan.name), names, layout))
        if layout.hard:
            positions = list(layout.key + layout.hard)
            hard = await side_checksum(
                target.reader(),
                target_sql(plan, positions),
                converter.subset(positions),
                batch_rows=batch_rows,
                batch_bytes=batch_bytes,
                part="hard",
            )
            checksum = combine(checksum, hard.checksum)
        return Comparison(plan.name, source_side, Side(rows, checksum))
    target_side = await side_checksum(
        target.reader(),
        target_sql(plan),
        converter,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
    )
    return Comparison(plan.name, source_side, target_side)


async def _explain(
    ends: Endpoints, plan: TablePlan, compared: Comparison, batch_rows: int, batch_bytes: int
) -> Comparison:
    """``compared``, with the rows that differ found by key when the table differs."""
    if compared.ok or compared.target is None or not plan.primary_key:
        return compared
    differences = await find_differences(
        ends, plan, compared.target.rows, batch_rows=batch_rows, batch_bytes=batch_bytes
    )
    return dataclasses.replace(compared, differences=differences)
