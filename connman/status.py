"""What ``connman status`` shows besides the probe: the pools and their consumers, the
tables of each storage track with their row counts (the "verify" step of the storage
migration protocol), the server's view of the connections, and the live pools of a
running process read from its ``/metrics`` endpoint.

Every URL here is redacted; nothing returned holds a secret.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from connman.errors import ConnmanError
from connman.schema import TRACKS
from connman.urls import parse_url, redact_text

if TYPE_CHECKING:
    from connman.manager import ConnectionManager
    from connman.resolve import Storage
    from connman.stats import PoolStats

__all__ = ["live_pools", "pool_report", "server_connections", "track_report"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONSUMER = "status"


def pool_report(stats: Iterable[PoolStats]) -> list[dict[str, Any]]:
    """``manager.stats()`` as plain data for the report."""
    return [
        {
            "pool": st.name,
            "dialect": st.dialect,
            "tier": st.tier,
            "degraded": st.degraded,
            "size": st.size,
            "idle": st.idle,
            "in_use": st.in_use,
            "waiting": st.waiting,
            "max_size": st.max_size,
            "consumers": dict(st.consumers),
            "waiting_by_consumer": dict(st.waiting_by_consumer),
        }
        for st in stats
    ]


def track_databases(storage: Storage) -> dict[str, str]:
    """The database URL (password included: never print it) of each track: D-gent's
    follows ``storage.dgent_url`` (``KGENTS_DGENT_BACKEND``), the others the storage."""
    return {track: (storage.dgent_url if track == "dgent" else storage.url) for track in TRACKS}


async def track_report(
    manager: ConnectionManager, storage: Storage, timeout: float | None = None
) -> dict[str, Any]:
    """Per track: the database (redacted) and each table's row count, or ``None``
    when the table is missing. A database that cannot be reached within ``timeout``
    is reported as ``error`` for its tracks."""
    report: dict[str, Any] = {}
    cache: dict[str, dict[str, Any]] = {}
    for track, url in track_databases(storage).items():
        parsed = parse_url(url)
        entry: dict[str, Any] = {"database": parsed.redacted(), "tables": {}, "error": None}
        if parsed.is_memory:
            entry["error"] = "in-memory database: nothing is kept between processes"
            report[track] = entry
            continue
        if parsed.key not in cache:
            cache[parsed.key] = await _count_tables(manager, url, timeout)
        counted = cache[parsed.key]
        if "error" in counted:
            entry["error"] = counted["error"]
        else:
            entry["tables"] = {table: counted["tables"].get(table) for table in TRACKS[track]}
        report[track] = entry
    return report


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
