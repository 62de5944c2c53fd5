"""Coherence between Brain's ``captures`` and the SQLAlchemy track's ``brain_crystals``.

Every capture has a crystal with the same id, and every crystal a capture.
:meth:`BrainStore.capture` keeps that true by writing both in one transaction;
databases written by older kgents (two stores, two pools, no shared transaction) may
have either without the other. :func:`check_coherence` finds those, and with
``repair=True`` creates the missing counterpart, never deleting anything:

- a capture without a crystal gets one derived from it (``content_hash`` md5 of the
  content, summary from the content, no tags, ``source_type`` ``capture``,
  ``source_ref`` ``coherence-repair``);
- a crystal without a capture gets one whose content is the crystal's summary,
  ``captured_at`` the crystal's ``created_at``, and ``metadata_json`` noting the
  repair (``{"connman_repair": {...}}``).

``connman check-coherence [--repair] [--json]`` runs it on the resolved storage
(exit 0 when coherent or fully repaired, 1 when not, 2 on a configuration error, 3 when
the database cannot be reached; errors go to stderr under a line naming the database).
This module imports SQLAlchemy only when a check runs, so ``connman status`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from connman.errors import ConfigError, ConnmanError
from connman.urls import redact_text

if TYPE_CHECKING:
    from connman.kgents.brain import BrainTransaction
    from connman.manager import ConnectionManager

__all__ = ["CoherenceReport", "check_coherence", "register_cli"]

REPAIR_SOURCE_REF = "coherence-repair"
"""``brain_crystals.source_ref`` of crystals created by a repair."""


@dataclass(frozen=True, slots=True)
class CoherenceReport:
    """What :func:`check_coherence` found (and, with ``repair``, did)."""

    captures: int
    """Rows in ``captures`` when checked."""
    crystals: int
    """Rows in ``brain_crystals`` when checked."""
    captures_without_crystals: tuple[str, ...]
    crystals_without_captures: tuple[str, ...]
    repaired: bool = False
    """True when a repair ran (it may still have left some ids, see ``unrepairable``)."""
    created_crystals: tuple[str, ...] = ()
    created_captures: tuple[str, ...] = ()
    unrepairable: dict[str, str] = field(default_factory=dict)
    """Id -> why no counterpart could be made (e.g. an id longer than 64 characters
    cannot be a ``brain_crystals`` id)."""

    @property
    def coherent(self) -> bool:
        """True when every capture had a crystal and every crystal a capture."""
        return not self.captures_without_crystals and not self.crystals_without_captures

    @property
    def ok(self) -> bool:
        """Coherent now: it was, or the repair fixed everything."""
        return self.coherent or (self.repaired and not self.unrepairable)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``connman check-coherence --json``)."""
        data = asdict(self)
        data.update(coherent=self.coherent, ok=self.ok)
        return data


async def check_coherence(
    manager: ConnectionManager | None = None,
    *,
    repair: bool = False,
    url: str | None = None,
    consumer: str = "brain",
) -> CoherenceReport:
    """Compare ``captures`` with ``brain_crystals``; with ``repair``, create the
    missing counterparts (in one transaction, on one connection).

    Args:
        manager: ``None``: :func:`connman.get_manager`.
        repair: create what is missing (nothing is ever deleted).
        url: the Brain database; ``None``: the manager's default.
        consumer: the consumer name of the lease.

    Creates the Brain tables if they do not exist (then: coherent, empty).
    """
    from connman.kgents.brain import BrainStore

    store = BrainStore(manager, consumer=consumer, url=url)
    # One transaction even for a check: one snapshot, and the repair's inserts go
    # with exactly the rows the check found.
    async with store.transaction() as tx:
        if tx.dialect == "postgresql" and not repair:
            # A check reads three times: let all three see the same snapshot. (A
            # repair stays READ COMMITTED, where its ON CONFLICT DO NOTHING cannot
            # fail on a row committed since its snapshot.)
            await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        counts = await tx.fetch_one(
            "SELECT (SELECT count(*) FROM captures) AS captures, "
            "(SELECT count(*) FROM brain_crystals) AS crystals"
        )
        assert counts is not None
        orphan_captures = await tx.fetch_all(_CAPTURES_WITHOUT_CRYSTALS)
        orphan_crystals = await tx.fetch_all(_CRYSTALS_WITHOUT_CAPTURES)
        report = CoherenceReport(
            captures=int(counts["captures"]),
            crystals=int(counts["crystals"]),
            captures_without_crystals=tuple(row["id"] for row in orphan_captures),
            crystals_without_captures=tuple(row["id"] for row in orphan_crystals),
        )
        if not repair or report.coherent:
            return report
        return await _repair(tx, report, orphan_captures, orphan_crystals)


async def _repair(
    tx: BrainTransaction,
    report: CoherenceReport,
    orphan_captures: list[dict[str, Any]],
    orphan_crystals: list[dict[str, Any]],
) -> CoherenceReport:
    from connman.kgents.brain import content_hash, summarize
    from connman.kgents.schema import models

    table = models.CRYSTALS
    now = models.utcnow()
    crystals: list[dict[str, Any]] = []
    unrepairable: dict[str, str] = {}
    for row in orphan_captures:
        if len(row["id"]) > 64:
            unrepairable[row["id"]] = "id longer than 64 characters (brain_crystals.id)"
            continue
        values = {
            "id": row["id"],
            "content_hash": row["content_hash"] or content_hash(row["content"]),
            "summary": summarize(row["content"]),
            "tags": [],
            "source_type": "capture",
            "source_ref": REPAIR_SOURCE_REF,
            "created_at": _parse_iso(row["captured_at"]) or now,
            "updated_at": now,
        }
        crystals.append(models.encode_row(table, tx.dialect, values))
    captures: list[dict[str, Any]] = []
    for row in orphan_crystals:
        crystal = models.decode_row(table, tx.dialect, row)
        created = crystal["created_at"]
        captures.append(
            {
                "id": crystal["id"],
                "content": crystal["summary"],
                "content_hash": content_hash(crystal["summary"]),
                "captured_at": _iso(created if isinstance(created, datetime) else now),
                "metadata_json": json.dumps(
                    {
                        "connman_repair": {
                            "reason": "brain_crystals row without a captures row",
                            "content_from": "brain_crystals.summary",
                            "repaired_at": _iso(now),
                        }
                    }
                ),
            }
        )
    # ON CONFLICT DO NOTHING: a counterpart written since the check is kept as it is.
    await tx.executemany(_INSERT_CRYSTAL, crystals)
    await tx.executemany(_INSERT_CAPTURE, captures)
    return CoherenceReport(
        captures=report.captures,
        crystals=report.crystals,
        captures_without_crystals=report.captures_without_crystals,
        crystals_without_captures=report.crystals_without_captures,
        repaired=True,
        created_crystals=tuple(c["id"] for c in crystals),
        created_captures=tuple(c["id"] for c in captures),
        unrepairable=unrepairable,
    )


_CAPTURES_WITHOUT_CRYSTALS = (
    "SELECT c.id, c.content, c.content_hash, c.captured_at FROM captures c "
    "LEFT JOIN brain_crystals b ON b.id = c.id WHERE b.id IS NULL ORDER BY c.id"
)
_CRYSTALS_WITHOUT_CAPTURES = (
    "SELECT b.id, b.summary, b.created_at FROM brain_crystals b "
    "LEFT JOIN captures c ON c.id = b.id WHERE c.id IS NULL ORDER BY b.id"
)
_INSERT_CRYSTAL = (
    "INSERT INTO brain_crystals (id, content_hash, summary, tags, access_count, source_type, "
    "source_ref, created_at, updated_at) VALUES (:id, :content_hash, :summary, :tags, 0, "
    ":source_type, :source_ref, :created_at, :updated_at) ON CONFLICT (id) DO NOTHING"
)
_INSERT_CAPTURE = (
    "INSERT INTO captures (id, content, content_hash, captured_at, metadata_json, "
    "access_count) VALUES (:id, :content, :content_hash, :captured_at, :metadata_json, 0) "
    "ON CONFLICT (id) DO NOTHING"
)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # SQLite datetimes are naive UTC
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- CLI -------------------------------------------------------------------------------


EXIT_COHERENT = 0
"""Coherent (or ``--repair`` made it so)."""
EXIT_INCOHERENT = 1
"""Captures without crystals or crystals without captures remain."""
EXIT_CONFIG = 2
"""The configuration is wrong (a bad ``KGENTS_DATABASE_URL``, ``KGENTS_POOL_*``...)."""
EXIT_UNREACHABLE = 3
"""The database cannot be reached or read: nothing was checked."""


def register_cli(subparsers: Any) -> None:
    """Add ``check-coherence`` to the ``connman`` command's subparsers."""
    parser = subparsers.add_parser(
        "check-coherence",
        help="compare Brain captures with brain_crystals; --repair creates what is missing",
        description="Check that every Brain capture has a brain_crystals row with the same "
        "id and every crystal a capture, on the database kgents' storage resolves to "
        "(KGENTS_DATABASE_URL, else the portable SQLite file; never a fallback). With "
        "--repair, create the missing counterparts (nothing is ever deleted). Exit codes: "
        f"{EXIT_COHERENT} coherent, {EXIT_INCOHERENT} incoherent, {EXIT_CONFIG} configuration "
        f"error, {EXIT_UNREACHABLE} the database cannot be reached.",
    )
    parser.add_argument(
        "--repair", action="store_true", help="create missing counterparts (never deletes)"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from connman.manager import ConnectionManager
    from connman.resolve import resolve_storage

    storage = resolve_storage()  # a ConfigError goes to main(): exit code 2
    database = f"{storage.redacted_url} (from {storage.source})"

    async def check() -> CoherenceReport:
        # No degradation: checking the portable file when the configured PostgreSQL
        # is down would report on the wrong database.
        async with ConnectionManager(storage, degrade=False) as manager:
            return await check_coherence(manager, repair=args.repair)

    try:
        report = asyncio.run(check())
    except ConfigError:
        raise  # main() reports it, exit code 2
    except ConnmanError as exc:
        message = redact_text(str(exc))
        if args.json:
            failed = {"ok": False, "database": storage.redacted_url, "error": message}
            print(json.dumps(failed, indent=2))
        # Stderr, whatever the format: the error is not a result to pipe on.
        print(
            f"connman check-coherence: cannot check {database}: {message}",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps({"database": storage.redacted_url, **report.to_dict()}, indent=2))
    else:
        print(f"database                   {database}")
        _print(report)
    return EXIT_COHERENT if report.ok else EXIT_INCOHERENT


def _print(report: CoherenceReport) -> None:
    print(f"captures                   {report.captures}")
    print(f"brain_crystals             {report.crystals}")
    _print_ids("captures without crystal", report.captures_without_crystals)
    _print_ids("crystals without capture", report.crystals_without_captures)
    if report.repaired:
        print(f"created crystals           {len(report.created_crystals)}")
        print(f"created captures           {len(report.created_captures)}")
        for key, why in report.unrepairable.items():
            print(f"not repaired               {key}: {why}")
    if report.coherent:
        verdict = "coherent"
    elif report.ok:
        verdict = "repaired: coherent now"
    else:
        verdict = "INCOHERENT" + ("" if report.repaired else " (run with --repair to fix)")
    print(f"result                     {verdict}")


def _print_ids(label: str, ids: tuple[str, ...], shown: int = 10) -> None:
    listed = ", ".join(ids[:shown]) + (
        f", ... ({len(ids) - shown} more)" if len(ids) > shown else ""
    )
    print(f"{label:<27}{len(ids)}" + (f"  {listed}" if ids else ""))
