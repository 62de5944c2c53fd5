"""What ``connman status`` finds and shows: which store was wanted and which one
answers (probed read-only: a status command writes nothing, not even an empty SQLite
file), the pools and their consumers, the tables of each storage track with their row
counts (the "verify" step of the storage migration protocol), the server's view of the
connections, and the live pools of a running process read from its ``/metrics``.

Exit codes (:data:`EXIT_CODES`): 0 the store answers as configured; 1 nothing answers
(or a server refused us); 2 a configuration error; 3 only a fallback answers (degraded).

Every URL here is redacted; nothing returned holds a secret.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from connman.diagnose import diagnose
from connman.errors import ConnmanError, PoolUnavailable, UnavailableReason
from connman.kgents.schema import TRACKS
from connman.urls import DatabaseURL, parse_url, redact_text

if TYPE_CHECKING:
    from connman.config import PoolConfig
    from connman.manager import ConnectionManager
    from connman.resolve import Storage
    from connman.stats import PoolStats

__all__ = [
    "EXIT_ANSWERS",
    "EXIT_CONFIG",
    "EXIT_DEGRADED",
    "EXIT_NO_ANSWER",
    "live_pools",
    "pool_report",
    "print_report",
    "probe",
    "server_connections",
    "track_report",
]

EXIT_ANSWERS = 0
"""The configured store answers."""
EXIT_NO_ANSWER = 1
"""Nothing answers, or a server answered and refused (password, database, TLS...)."""
EXIT_CONFIG = 2
"""A configuration error (bad URL, bad setting, unusable connection parameters)."""
EXIT_DEGRADED = 3
"""Only a fallback answers: the process would run degraded, writing elsewhere."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSUMER = "status"


def pool_report(stats: Iterable[PoolStats]) -> list[dict[str, Any]]:
    """``manager.stats()`` as plain data for the report."""
    return [
        st.as_dict(*_REPORT_KEYS)
        | {
            "in_rotation": None if st.replica is None else st.replica.in_rotation,
            "replica_reason": None if st.replica is None else st.replica.reason,
        }
        for st in stats
    ]


_REPORT_KEYS: Final = (
    "pool",
    "dialect",
    "tier",
    "degraded",
    "size",
    "idle",
    "in_use",
    "waiting",
    "max_size",
    "consumers",
    "waiting_by_consumer",
    "role",
    "reads",
)
"""The fields of each pool in the report (its JSON keys, in this order)."""


def track_databases(storage: Storage) -> dict[str, str]:
    """The database URL (password included: never print it) of each track: D-gent's
    follows ``storage.dgent_url`` (``KGENTS_DGENT_BACKEND``), the others the storage."""
    return {track: (storage.dgent_url if track == "dgent" else storage.url) for track in TRACKS}


async def track_report(
    manager: ConnectionManager, storage: Storage, timeout: float | None = None
) -> dict[str, Any]:
    """Per track: the database it read (redacted) and each table's row count, or
    ``None`` when the table is missing. SQLite files are read read-only, and one that
    does not exist is reported (``note``), not created. A database that cannot be
    reached within ``timeout`` is reported as ``error`` for its tracks."""
    report: dict[str, Any] = {}
    cache: dict[str, dict[str, Any]] = {}
    for track, url in track_databases(storage).items():
        parsed = parse_url(url)
        entry: dict[str, Any] = {
            "database": parsed.redacted(),
            "tables": {},
            "error": None,
            "note": None,
        }
        report[track] = entry
        if parsed.is_memory:
            entry["note"] = "in-memory (KGENTS_DGENT_BACKEND=MEMORY): nothing is kept"
            continue
        if _missing_file(parsed):
            entry["note"] = "the file does not exist yet (status creates nothing)"
            continue
        if parsed.key not in cache:
            cache[parsed.key] = await _count_tables(manager, read_only(parsed).key, timeout)
        counted = cache[parsed.key]
        if "error" in counted:
            entry["error"] = counted["error"]
        else:
            entry["tables"] = {table: counted["tables"].get(table) for table in TRACKS[track]}
    return report


def read_only(url: DatabaseURL) -> DatabaseURL:
    """``url`` opened read-only when it is a SQLite file (``mode=ro``: no file, no
    directory, no journal created); PostgreSQL URLs unchanged."""
    if url.dialect != "sqlite" or url.is_memory:
        return url
    query = tuple(sorted({**dict(url.query), "mode": "ro"}.items()))
    return dataclasses.replace(url, query=query)


def _missing_file(url: DatabaseURL) -> bool:
    return url.dialect == "sqlite" and not url.is_memory and not os.path.exists(url.database or "")


async def _count_tables(
    manager: ConnectionManager, url: str, timeout: float | None
) -> dict[str, Any]:
    tables = sorted({t for names in TRACKS.values() for t in names})
    counts: dict[str, int | None] = {}
    try:
        async with manager.lease(_CONSUMER, url=url, timeout=timeout) as lease:
            conn = lease.connection
            for table in tables:
                if not _IDENT.match(table):  # TRACKS is ours; never quote-inject anyway
                    raise ConnmanError(f"unexpected table name {table!r}")
                if lease.dialect == "postgresql":
                    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
                    counts[table] = (
                        int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))
                        if exists
                        else None
                    )
                else:
                    cursor = await conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                    )
                    exists = await cursor.fetchone() is not None
                    await cursor.close()
                    if exists:
                        cursor = await conn.execute(f'SELECT count(*) FROM "{table}"')
                        row = await cursor.fetchone()
                        await cursor.close()
                        counts[table] = int(row[0])
                    else:
                        counts[table] = None
    except Exception as exc:
        return {"error": redact_text(f"{type(exc).__name__}: {exc}")}
    return {"tables": counts}


async def server_connections(manager: ConnectionManager) -> list[dict[str, Any]] | None:
    """PostgreSQL's view of the connections to the default database, by
    ``application_name`` and state (``pg_stat_activity``); None on SQLite."""
    async with manager.lease(_CONSUMER) as lease:
        if lease.dialect != "postgresql":
            return None
        rows = await lease.connection.fetch(
            "SELECT coalesce(application_name, '') AS application_name, "
            "coalesce(state, 'unknown') AS state, count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend' "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        )
    return [
        {"application_name": r["application_name"], "state": r["state"], "count": int(r["n"])}
        for r in rows
    ]


def live_pools(url: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The pools of a running process, read from its metrics endpoint (``url``:
    ``http://127.0.0.1:9464`` or ``.../metrics``).

    Raises:
        ConnmanError: the endpoint does not answer, or exports no connman pools.
    """
    from prometheus_client.parser import text_string_to_metric_families

    if not url.startswith(("http://", "https://")):
        raise ConnmanError(f"--metrics wants an http:// URL, got {redact_text(url)!r}")
    target = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConnmanError(f"cannot read {redact_text(target)}: {exc}") from None
    pools: dict[str, dict[str, Any]] = {}

    def pool(name: str) -> dict[str, Any]:
        return pools.setdefault(
            name,
            {
                "pool": name,
                "up": None,
                "idle": 0,
                "in_use": 0,
                "waiting": 0,
                "max_size": None,
                "consumers": {},
                "waiting_by_consumer": {},
            },
        )

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels: Mapping[str, str] = sample.labels
            name = labels.get("pool")
            if name is None:
                continue
            value = sample.value
            if sample.name == "connman_pool_connections":
                key = "idle" if labels.get("state") == "idle" else "in_use"
                pool(name)[key] = int(value)
            elif sample.name == "connman_pool_connections_max":
                pool(name)["max_size"] = int(value)
            elif sample.name == "connman_pool_pending_requests":
                pool(name)["waiting"] = int(value)
            elif sample.name == "connman_pool_up":
                pool(name)["up"] = bool(value)
            elif sample.name == "connman_consumer_leases":
                pool(name)["consumers"][labels["consumer"]] = int(value)
            elif sample.name == "connman_consumer_pending_requests" and value:
                pool(name)["waiting_by_consumer"][labels["consumer"]] = int(value)
    if not pools:
        raise ConnmanError(f"{redact_text(target)} exports no connman pools")
    return [pools[name] for name in sorted(pools)]


# ====================================================================== the probe


async def probe(storage: Storage, config: PoolConfig) -> dict[str, Any]:
    """Find out what a process with this storage and config would get, writing
    nothing: the wanted store first, then (unless strict) its fallbacks in order, by
    the manager's own rule (degrade only when nothing answers).

    The report says what was wanted, what answered (``got``), the row counts of each
    track labelled with the store they were read from, and ``exit_code``.
    """
    from connman.manager import ConnectionManager

    report: dict[str, Any] = {
        "wanted": _describe_store(storage),
        "got": None,
        "tier": storage.tier.value,
        "dialect": storage.dialect,
        "source": storage.source,
        "url": storage.redacted_url,
        "warnings": list(storage.warnings),
        "strict": storage.strict,
        "answers": False,
        "latency_ms": None,
        "error": None,
        "reason": None,
        "hint": None,
        "degraded": False,
        "degraded_reason": None,
        "effective_url": None,
        "server_version": None,
        "pool": _config_report(config),
        "pools": [],
        "exit_code": EXIT_NO_ANSWER,
    }
    candidates = [storage, *(() if storage.strict else storage.fallbacks)]
    failures: list[str] = []
    for candidate in candidates:
        url = parse_url(candidate.url, source=candidate.source)
        if _missing_file(url):
            if candidate is storage:
                found = diagnose(FileNotFoundError(), url)
                report.update(
                    error=f"the SQLite file {url.database} does not exist (connman status "
                    "creates nothing; the first process that writes creates it)",
                    reason=found.reason.value,
                    hint=found.hint,
                )
                return report
            # A fallback file not made yet: a process would create it and degrade.
            _answered(report, storage, candidate, failures, version=None)
            report["tracks"] = await _tracks_without_manager(candidate)
            return report
        probe_storage = dataclasses.replace(
            candidate, url=read_only(url).key, dgent_url=candidate.dgent_url, fallbacks=()
        )
        manager = ConnectionManager(probe_storage, config=config, degrade=False)
        try:
            started = time.perf_counter()
            try:
                await manager.start()
            except PoolUnavailable as exc:
                failures.append(redact_text(str(exc)))
                if exc.unreachable and candidate is not candidates[-1]:
                    continue
                report.update(
                    error=redact_text(str(exc)),
                    reason=exc.reason.value if exc.reason else None,
                    hint=exc.hint,
                    exit_code=EXIT_CONFIG
                    if exc.reason is UnavailableReason.CONFIGURATION
                    else EXIT_NO_ANSWER,
                )
                if candidate is not storage:
                    report["error"] = "; ".join(failures)
                return report
            async with manager.lease("status") as lease:
                t0 = time.perf_counter()
                version = await _select_version(lease.dialect, lease.connection)
                report["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            report["connect_ms"] = round((t0 - started) * 1000, 3)
            _answered(report, storage, candidate, failures, version=version)
            # The verify step after a migration: each track's tables and row counts,
            # read from (and labelled with) the store that answered.
            report["tracks"] = await track_report(manager, candidate, config.connect_timeout)
            report["server_connections"] = await server_connections(manager)
        except ConnmanError as exc:
            report["error"] = redact_text(str(exc))
        finally:
            report["pools"] = pool_report(manager.stats())
            await manager.aclose()
        return report
    return report  # pragma: no cover - the loop returns


def _answered(
    report: dict[str, Any],
    wanted: Storage,
    got: Storage,
    failures: list[str],
    *,
    version: str | None,
) -> None:
    report["answers"] = True
    report["got"] = _describe_store(got)
    report["server_version"] = version
    if got is wanted:
        report["exit_code"] = EXIT_ANSWERS
        return
    report.update(
        degraded=True,
        degraded_reason="; ".join(failures),
        effective_url=got.redacted_url,
        effective_tier=got.tier.value,
        exit_code=EXIT_DEGRADED,
    )


async def _tracks_without_manager(storage: Storage) -> dict[str, Any]:
    """Tracks of a store whose file does not exist: nothing to count, nothing opened."""
    return {
        track: {
            "database": parse_url(url).redacted(),
            "tables": {},
            "error": None,
            "note": "the file does not exist yet (status creates nothing)",
        }
        for track, url in track_databases(storage).items()
    }


def _describe_store(storage: Storage) -> dict[str, Any]:
    return {
        "tier": storage.tier.value,
        "dialect": storage.dialect,
        "url": storage.redacted_url,
        "source": storage.source,
    }


async def _select_version(dialect: str, conn: Any) -> str:
    if dialect == "postgresql":
        return str(await conn.fetchval("SHOW server_version"))
    cursor = await conn.execute("SELECT sqlite_version()")
    row = await cursor.fetchone()
    await cursor.close()
    return f"SQLite {row[0]}"


def _config_report(config: PoolConfig) -> dict[str, Any]:
    return {
        "min_size": config.min_size,
        "max_size": config.max_size,
        "acquire_timeout": config.acquire_timeout,
        "connect_timeout": config.connect_timeout,
        "max_lifetime": config.max_lifetime,
        "max_idle": config.max_idle,
        "leak_threshold": config.leak_threshold,
        "consumer_limits": dict(config.consumer_limits),
    }


def live(url: str, timeout: float) -> dict[str, Any]:
    """:func:`live_pools` for the report: the error in it rather than raised."""
    try:
        return {"source": redact_text(url), "pools": live_pools(url, timeout), "error": None}
    except ConnmanError as exc:
        return {"source": redact_text(url), "pools": [], "error": str(exc)}


# ====================================================================== printing


def print_report(r: dict[str, Any]) -> None:
    """The report as text: what was wanted and what answered first."""
    w = r["wanted"]
    rows = [("wanted", f"{w['tier']} ({w['dialect']}) {w['url']}  from {w['source']}")]
    if r["answers"]:
        g = r["got"]
        answer = f"{g['tier']} ({g['dialect']}) {g['url']}"
        if r["server_version"]:
            answer += f": {r['server_version']}, SELECT in {r['latency_ms']} ms"
        else:
            answer += ": the file does not exist yet; a process would create it"
        rows.append(("got", answer))
        if r["degraded"]:
            rows.append(
                (
                    "DEGRADED",
                    "only a fallback answers: a process would write there, not to the "
                    f"store wanted ({r['degraded_reason']})",
                )
            )
    else:
        rows.append(("got", f"NOTHING: {r['error']}"))
        if r.get("hint") and r["hint"] not in (r["error"] or ""):
            rows.append(("hint", r["hint"]))
    if r["answers"] and r.get("error"):
        rows.append(("error", r["error"]))
    p = r["pool"]
    limits = ", ".join(f"{k}={v}" for k, v in p["consumer_limits"].items()) or "none"
    leak = "off" if p["leak_threshold"] is None else f"{p['leak_threshold']}s"
    rows.append(
        (
            "pool",
            f"min {p['min_size']}, max {p['max_size']}, acquire timeout {p['acquire_timeout']}s, "
            f"max lifetime {p['max_lifetime']}s, max idle {p['max_idle']}s, leak threshold {leak}",
        )
    )
    rows.append(("limits", limits))
    for warning in r["warnings"]:
        rows.append(("warning", warning))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    _print_pools("pools (this command)", r.get("pools") or [])
    if r.get("server_connections"):
        print("\nserver connections to this database (pg_stat_activity)")
        for c in r["server_connections"]:
            print(f"  {c['application_name'] or '-'}: {c['count']} {c['state']}")
    if r.get("tracks"):
        print("\ntracks (tables: rows) [the store they were read from]")
        tw = max(len(t) for t in r["tracks"])
        for track, t in r["tracks"].items():
            if t["error"]:
                detail = f"ERROR {t['error']}"
            elif t.get("note"):
                detail = t["note"]
            else:
                detail = ", ".join(
                    f"{table} {'missing' if n is None else n}" for table, n in t["tables"].items()
                )
            print(f"  {track:<{tw}}  {detail}  [{t['database']}]")
    live_report = r.get("live")
    if live_report is not None:
        if live_report["error"]:
            print(f"\nlive pools from {live_report['source']}: ERROR {live_report['error']}")
        else:
            _print_pools(f"live pools from {live_report['source']}", live_report["pools"])


def _print_pools(title: str, pools: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    if not pools:
        print("  none")
    for p in pools:
        up = "" if p.get("up", True) is not False else "  DOWN"
        if p.get("role") == "replica":  # absent from a live report of an older process
            reason = p.get("replica_reason")
            up += f"  replica, {p.get('reads', 0)} reads" + (f", out: {reason}" if reason else "")
        print(
            f"  {p['pool']}: {p['in_use']} in use, {p['idle']} idle, {p['waiting']} waiting, "
            f"max {p['max_size']}{up}"
        )
        consumers = sorted(set(p["consumers"]) | set(p["waiting_by_consumer"]))
        for consumer in consumers:
            waiting = p["waiting_by_consumer"].get(consumer, 0)
            print(
                f"    {consumer}: {p['consumers'].get(consumer, 0)} in use"
                + (f", {waiting} waiting" if waiting else "")
            )
