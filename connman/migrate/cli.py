"""``connman migrate`` and ``connman verify``.

Exit codes (:mod:`connman.migrate.errors`): 0 everything copied and verified / both
sides equal; 1 rows rejected or a difference found; 2 usage or configuration error;
3 the source cannot be read; 4 the target cannot be reached or written; 5 a target
table's schema is incompatible; 6 the target is full; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connman.migrate.errors import (
    EXIT_DIFFERENCES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    MigrationError,
    SourceError,
    TargetUnavailable,
)
from connman.migrate.report import Progress, format_table
from connman.resolve import DEFAULT_UNIFIED_URL, portable_url
from connman.urls import parse_url, redact_text

if TYPE_CHECKING:  # the engine (asyncpg, anyio...) loads when a command runs
    from connman.migrate.compare import Comparison
    from connman.migrate.copy import Migration

__all__ = ["default_source", "default_target", "register_cli"]


def default_source() -> str:
    """The protocol's source: the portable SQLite file (XDG_DATA_HOME, else ~/.local/share)."""
    return portable_url().key


def default_target() -> str:
    """The protocol's target: ``KGENTS_DATABASE_URL`` when it is PostgreSQL, else
    ``KGENTS_POSTGRES_URL``, else the docker-compose database."""
    return _default_target()[0]


COMPOSE_DEFAULT = (
    "the docker-compose default: nothing names a PostgreSQL database "
    "(pass --to URL or set KGENTS_DATABASE_URL)"
)
"""Where the target came from when neither --to nor a variable named it."""


def _default_target() -> tuple[str, str]:
    """:func:`default_target` and where it came from (a variable's name, or
    :data:`COMPOSE_DEFAULT`)."""
    for name in ("KGENTS_DATABASE_URL", "KGENTS_POSTGRES_URL"):
        value = os.environ.get(name, "").strip()
        if value and parse_url(value, source=name).dialect == "postgresql":
            return value, name
    return DEFAULT_UNIFIED_URL, COMPOSE_DEFAULT


def register_cli(subparsers: Any) -> None:
    """Add ``migrate`` and ``verify`` to the ``connman`` command."""
    m = subparsers.add_parser(
        "migrate",
        help="copy kgents storage between SQLite and PostgreSQL (dry run, execute, resume)",
        description="Copy every table from --from to --to: schema, rows (converted to the "
        "target's types), then verify. Resumable: run it again after any interruption; a "
        "rerun sends only the rows the target lacks, and never overwrites a row the target "
        "has (a different row under the same key is reported as a conflict). The source "
        "is opened read-only and never changed.",
        epilog=_EPILOG,
    )
    _endpoints(m)
    mode = m.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true", help="plan and check, write nothing")
    mode.add_argument("--execute", action="store_true", help="create the schema, copy, verify")
    m.add_argument("--batch-size", type=_positive, default=5000, metavar="N", help="rows per batch")
    m.add_argument(
        "--batch-mb",
        type=_positive,
        default=16,
        metavar="MB",
        help="a batch also ends at this many MB of values",
    )
    m.add_argument("--jobs", type=_positive, default=1, help="tables copied at once")
    m.add_argument("--no-verify", action="store_true", help="skip the verify after --execute")
    m.add_argument(
        "--rejects-file",
        metavar="PATH",
        default=None,
        help="where rejected rows are listed (JSON lines; default "
        "./connman-migrate-rejects-<time>.jsonl, created only if a row is rejected)",
    )
    m.set_defaults(run=_run_migrate)

    v = subparsers.add_parser(
        "verify",
        help="compare row counts and content checksums of two databases, table by table",
        description="Compare every table of --from with --to: row counts and a checksum of "
        "the content after conversion into the target's types. When a table differs, the "
        "first differing keys are named. Writes nothing.",
        epilog=_EPILOG,
    )
    _endpoints(v)
    v.set_defaults(run=_run_verify)


_EPILOG = (
    "The default target is KGENTS_DATABASE_URL when it is PostgreSQL, else "
    "KGENTS_POSTGRES_URL, else the docker-compose database "
    "(postgresql://kgents:***@localhost:5432/kgents). Connecting waits up to "
    "KGENTS_POOL_CONNECT_TIMEOUT seconds (default 10). Exit codes: 0 done (every row "
    "on the target / both sides equal), 1 rows rejected or differences, 2 usage or "
    "configuration error, 3 the source cannot be read, 4 the target cannot be reached or "
    "written, 5 an incompatible target table, 6 the target is full, 130 interrupted "
    "(rerun the same command to resume)."
)


def _endpoints(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        default=None,
        help="source database (default: the portable SQLite file)",
    )
    parser.add_argument(
        "--to",
        dest="target",
        metavar="URL",
        default=None,
        help="target database (default: KGENTS_DATABASE_URL, KGENTS_POSTGRES_URL, or the "
        "docker-compose PostgreSQL; the portable file when --from is PostgreSQL)",
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        metavar="TABLE",
        default=None,
        help="only these tables (names separated by spaces or commas)",
    )


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


@dataclass(frozen=True, slots=True)
class _Ends:
    """The two URLs of a command, and where each came from (shown with it: a URL
    the user never typed must say why it is there)."""

    source: str
    source_origin: str
    target: str
    target_origin: str


def _urls(args: argparse.Namespace) -> _Ends:
    if args.source:
        source, source_origin = args.source, "--from"
    else:
        source, source_origin = default_source(), "the portable SQLite file (default --from)"
    if args.target:
        return _Ends(source, source_origin, args.target, "--to")
    if parse_url(source, source="--from").dialect == "postgresql":
        target, origin = default_source(), "the portable SQLite file (default --to)"
    else:
        target, origin = _default_target()
    return _Ends(source, source_origin, target, origin)


def _failed(command: str, exc: MigrationError, ends: _Ends) -> int:
    print(f"connman {command}: {redact_text(str(exc))}", file=sys.stderr)
    if isinstance(exc, TargetUnavailable) and ends.target_origin != "--to":
        print(f"  the target came from {ends.target_origin}", file=sys.stderr)
    if isinstance(exc, SourceError) and ends.source_origin != "--from":
        print(f"  the source came from {ends.source_origin}", file=sys.stderr)
    return exc.exit_code


def _interrupted(command: str, progress: Progress, *, executed: bool) -> int:
    progress.clear()
    sys.stdout.flush()
    if executed:
        print(
            f"\nconnman {command}: interrupted after {progress.rows_written:,} rows; "
            "rerun the same command to resume",
            file=sys.stderr,
        )
    else:
        print(f"\nconnman {command}: interrupted (nothing was written)", file=sys.stderr)
    return EXIT_INTERRUPTED


def _tables(args: argparse.Namespace) -> tuple[str, ...] | None:
    if not args.tables:
        return None
    return tuple(n.strip() for part in args.tables for n in part.split(",") if n.strip())


def _quiet() -> None:
    # Failed connects are reported once, as the command's error: not also as pool
    # warnings (a migration never degrades, so those have nothing to add).
    from connman import logging as cm_logging

    cm_logging.configure(level="error")


def _run_migrate(args: argparse.Namespace) -> int:
    from connman.migrate.copy import MigrateOptions, migrate

    _quiet()
    ends = _urls(args)
    rejects = args.rejects_file
    if args.execute and rejects is None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        rejects = os.path.abspath(f"connman-migrate-rejects-{stamp}.jsonl")
    options = MigrateOptions(
        source=ends.source,
        target=ends.target,
        execute=args.execute,
        tables=_tables(args),
        batch_rows=args.batch_size,
        batch_bytes=args.batch_mb << 20,
        jobs=args.jobs,
        verify=not args.no_verify,
        rejects_path=rejects,
    )
    progress = Progress(sys.stderr)

    def header(plan: Migration) -> None:
        # Before the first row moves: what will happen, and to where.
        _print_plan(plan, ends)
        sys.stdout.flush()

    try:
        result = asyncio.run(migrate(options, progress=progress, on_plan=header))
    except MigrationError as exc:
        progress.clear()
        return _failed("migrate", exc, ends)
    except KeyboardInterrupt:
        return _interrupted("migrate", progress, executed=args.execute)
    _print_migration(result)
    if result.rejected:
        return EXIT_DIFFERENCES
    if result.verified and not result.verify_ok:
        return EXIT_DIFFERENCES
    return EXIT_OK


def _run_verify(args: argparse.Namespace) -> int:
    from connman.migrate.copy import verify

    _quiet()
    ends = _urls(args)
    print(f"source  {_shown(ends.source, ends.source_origin)}")
    print(f"target  {_shown(ends.target, ends.target_origin)}\n", flush=True)
    try:
        comparisons = asyncio.run(verify(ends.source, ends.target, tables=_tables(args)))
    except MigrationError as exc:
        return _failed("verify", exc, ends)
    print(_verify_table(comparisons))
    bad = [c for c in comparisons if not c.ok]
    unconvertible = sum(c.source.unconvertible for c in comparisons)
    if unconvertible:
        print(
            f"\n{unconvertible:,} source row(s) cannot be converted to the target's types "
            "(listed by `connman migrate --dry-run`): they exist only in the source."
        )
    if bad:
        print(f"\nDIFFERENCES in {len(bad)} table(s): " + ", ".join(c.table for c in bad))
        _print_differences(bad)
        return EXIT_DIFFERENCES
    print("\nverify passed: every table has the same rows on both sides")
    return EXIT_OK


def _shown(url: str, origin: str) -> str:
    redacted = parse_url(url).redacted()
    return redacted if origin in ("--from", "--to") else f"{redacted} (from {origin})"


def _print_differences(comparisons: Sequence[Comparison], *, conflicts: bool = False) -> None:
    """The first differing keys of each table, then what to do about them."""
    kinds = {"missing": False, "differing": False, "extra": False}
    for c in comparisons:
        d = c.differences
        if d is None:
            if c.target is not None:
                print(f"  {c.table}: no primary key, so no row can be named")
            continue
        for kind, shown, count, what in (
            ("missing", d.missing, d.n_missing, "only in the source"),
            ("differing", d.differing, d.n_differing, "on both sides with different content"),
            ("extra", d.extra, d.n_extra, "only on the target"),
        ):
            if not count:
                continue
            kinds[kind] = True
            keys = ", ".join(repr(k) for k in shown)
            more = f" ... ({count - len(shown):,} more)" if count > len(shown) else ""
            print(f"  {c.table}: {count:,} row(s) {what}: {keys}{more}")
    if not any(kinds.values()):
        print("\nWhat to do: keep the source; `connman verify` compares the tables again.")
        return
    print("\nWhat to do:")
    if kinds["missing"]:
        print(
            "  - rows only in the source: run `connman migrate` with the same --from and --to "
            "and --execute; it copies them and overwrites nothing."
        )
    if kinds["differing"]:
        print(
            "  - rows with different content: changed on one side after the copy"
            + (" or written on both sides" if conflicts else "")
            + ". Decide which side is right; to take the source's, delete the target's row "
            "and run migrate again (it never overwrites a row)."
        )
    if kinds["extra"]:
        print(
            "  - rows only on the target: written there since (or deleted from the source); "
            "keep them, or delete them on the target if they are not wanted."
        )


def _verify_table(comparisons: Sequence[Comparison]) -> str:
    rows = []
    for c in comparisons:
        rows.append(
            [
                c.table,
                c.source.rows,
                c.target.rows if c.target is not None else "-",
                c.source.unconvertible,
                f"{c.source.checksum:016x}",
                f"{c.target.checksum:016x}" if c.target is not None else "-",
                c.status,
            ]
        )
    return format_table(
        [
            "table",
            "source rows",
            "target rows",
            "unconvertible",
            "source checksum",
            "target checksum",
            "status",
        ],
        rows,
    )


def _print_plan(result: Migration, ends: _Ends) -> None:
    """The header and each table's plan (printed before anything is copied)."""
    mode = "execute" if result.executed else "dry run (nothing is written)"
    print(f"source  {_shown(ends.source, ends.source_origin)} (read-only)")
    print(f"target  {_shown(ends.target, ends.target_origin)}")
    print(f"mode    {mode}\n")
    for plan in result.plans:
        print(
            f"table {plan.name}: {plan.origin}"
            + ("" if plan.target_exists else (", created" if result.executed else ", to create"))
        )
        print(
            _indent(
                format_table(
                    ["column", "source type", "target type", "why"],
                    [[c.name, c.source, c.target.describe(), c.why] for c in plan.columns],
                )
            )
        )
        for note in plan.notes:
            print(f"  note: {note}")
        if plan.self_fk is not None:
            how = "rowid order is" if plan.parents_by_rowid else "by chain depth"
            fk = plan.self_fk
            print(f"  order: parents first ({fk.column} -> {fk.referenced}; {how})")
        print()
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")


def _print_migration(result: Migration) -> None:
    """The outcome of each table, the verify, and the verdict."""
    rows = []
    for o in result.outcomes:
        if result.executed:
            rows.append([o.name, o.read, o.written, o.present, o.rejected, round(o.seconds, 1)])
        else:
            rows.append([o.name, o.read, max(0, o.convertible - o.present), o.present, o.rejected])
    if result.executed:
        print(
            format_table(
                ["table", "read", "written", "already present", "rejected", "seconds"], rows
            )
        )
    else:
        print(format_table(["table", "rows", "to copy", "already present", "cannot convert"], rows))
    for o in result.outcomes:
        if o.note:
            print(f"  {o.name}: {o.note}")
        for key, reason in o.rejects:
            print(f"  rejected {o.name} {key!r}: {reason}")
        if o.rejected > len(o.rejects):
            print(f"  ... and {o.rejected - len(o.rejects):,} more in {o.name}")
    total = sum(o.read for o in result.outcomes)
    rate = total / result.seconds if result.seconds else 0.0
    print(f"\n{total:,} rows in {result.seconds:.1f} s ({rate:,.0f} rows/s)")
    if result.rejects_path:
        print(f"rejected rows, with reasons: {result.rejects_path}")
    if not result.executed:
        return
    if result.already_complete:
        unconverted = " (rows that cannot be converted stay only in the source)"
        print(
            "\nalready complete: the target holds every row of the source; nothing was sent"
            + (unconverted if result.rejected else "")
        )
    if result.verified:
        print()
        print(_verify_table([o.comparison for o in result.outcomes if o.comparison is not None]))
        for o in result.outcomes:
            c = o.comparison
            if o.merged and c is not None and c.differences is not None and c.differences.n_extra:
                extra = c.differences.n_extra
                print(f"  {o.name}: the target also holds {extra:,} row(s) of its own (kept)")
    conflicts = sum(o.conflicts for o in result.outcomes)
    if conflicts:
        print(
            f"\n{conflicts:,} row(s) conflict: the target holds another row under the same "
            "primary key. Neither was changed; the keys are listed above (and in the "
            "rejects file). Decide which is right; to take the source's, delete the "
            "target's row and run the same command again."
        )
    if result.rejected > conflicts:
        print(
            f"\n{result.rejected - conflicts:,} row(s) could not be migrated and exist only "
            "in the source: keep the source file."
        )
    elif result.rejected:
        print("Keep the source file until the conflicts are settled.")
    elif result.verified and result.verify_ok:
        where = result.source.split(":///", 1)[-1] if result.source.startswith("sqlite") else None
        print("\nverify passed: every row is on the target.")
        if where:
            print(f"The source file is no longer needed; deleting it is your decision: rm {where}")
    if result.verified and not result.verify_ok:
        print("\nverify FAILED: keep the source.")
        bad = [o.comparison for o in result.outcomes if not o.merged and o.comparison]
        _print_differences(bad, conflicts=bool(conflicts))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())
