"""The ``connman`` command: ``status``, ``demo``, ``check-coherence``, ``migrate``,
``verify`` (each subcommand is registered by the module it drives).

Exit codes: 0 success, 1 the database does not answer (or a check failed), 2 usage or
configuration error (each subcommand documents its own beyond these). Output never
contains a password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from connman import __version__
from connman.config import PoolConfig
from connman.errors import ConfigError, ConnmanError
from connman.manager import ConnectionManager
from connman.resolve import Storage, resolve_storage
from connman.status import live_pools, pool_report, server_connections, track_report
from connman.urls import redact_text

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``connman`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"connman: configuration error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="connman",
        description="kgents' connection manager: storage status and tools.",
        epilog=STORAGE_HELP,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = sub.add_parser(
        "status",
        help="resolved storage, whether it answers, pool settings",
        description="Show which database kgents' storage resolves to and why, whether it "
        "answers, the pool settings, and each track's tables and row counts. Writes nothing.",
        epilog=STORAGE_HELP,
        formatter_class=HelpFormatter,
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the database (default: KGENTS_POOL_CONNECT_TIMEOUT, "
        f"else {PoolConfig().connect_timeout:g})",
    )
    status.add_argument(
        "--metrics",
        metavar="URL",
        default=None,
        help="also show the live pools of a running process from its metrics endpoint "
        "(e.g. http://127.0.0.1:9464)",
    )
    status.set_defaults(run=_status)
    # Other subcommands live with the code they drive; each module adds its parser.
    for register in _subcommands():
        register(sub)
    for name, command in sub.choices.items():
        # One look for every --help: defaults shown, and a description even where a
        # module gave only the one-line help.
        command.formatter_class = HelpFormatter
        if not command.description:
            command.description = _help_of(sub, name)
    return parser


STORAGE_HELP = (
    "storage: KGENTS_DATABASE_URL (postgresql://... or sqlite:///path) names the database; "
    "unset, the portable SQLite file $XDG_DATA_HOME/kgents/membrane.db "
    "(~/.local/share/kgents/membrane.db). "
    "Pool settings: KGENTS_POOL_* (e.g. KGENTS_POOL_CONNECT_TIMEOUT, "
    "KGENTS_POOL_ACQUIRE_TIMEOUT)."
)
"""The epilog of ``connman --help`` and of the commands that use the resolved storage."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default (``(default: 5000)``) unless its help says it
    already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in ("?", "*"):
            return text + " (default: %(default)s)"
        return text


def _help_of(sub: Any, name: str) -> str:
    for action in sub._choices_actions:  # argparse keeps each subcommand's help here
        if action.dest == name and action.help:
            text = str(action.help)
            return text[:1].upper() + text[1:] + "."
    return ""


def _subcommands() -> list[Callable[[Any], None]]:
    """``register(subparsers)`` functions of the modules that add subcommands."""
    # Light imports: SQLAlchemy and the adapters load only when a command runs.
    from connman import coherence, demo
    from connman.migrate import cli as migrate_cli

    return [demo.register_cli, coherence.register_cli, migrate_cli.register_cli]


# -- status ------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    storage = resolve_storage()
    overrides = {} if args.timeout is None else {"connect_timeout": args.timeout}
    config = PoolConfig.from_env(**overrides)
    report = asyncio.run(_probe(storage, config))
    if args.metrics:
        report["live"] = _live(args.metrics, config.connect_timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 0 if report["answers"] else 1


async def _probe(storage: Storage, config: PoolConfig) -> dict[str, Any]:
    report: dict[str, Any] = {
        "tier": storage.tier.value,
        "dialect": storage.dialect,
        "source": storage.source,
        "url": storage.redacted_url,
        "warnings": list(storage.warnings),
        "strict": storage.strict,
        "answers": False,
        "latency_ms": None,
        "error": None,
        "degraded": False,
        "effective_url": None,
        "server_version": None,
        "pool": _config_report(config),
    }
    manager = ConnectionManager(storage, config=config)
    try:
        started = time.perf_counter()
        await manager.start()
        async with manager.lease("status") as lease:
            # Connect time is in the pool's own metrics; this is one round trip.
            t0 = time.perf_counter()
            version = await _select_version(lease.dialect, lease.connection)
            report["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        report["connect_ms"] = round((t0 - started) * 1000, 3)
        report["answers"] = True
        report["server_version"] = version
        pool = manager.default_pool
        if pool is not None and pool.degraded_from is not None:
            report["degraded"] = True
            report["effective_url"] = pool.url.redacted()
            report["effective_tier"] = pool.tier
        # The verify step after a migration: each track's tables and row counts.
        report["tracks"] = await track_report(manager, storage, config.connect_timeout)
        report["server_connections"] = await server_connections(manager)
    except ConnmanError as exc:
        report["error"] = redact_text(str(exc))
    finally:
        report["pools"] = pool_report(manager.stats())
        await manager.aclose()
    return report


def _live(url: str, timeout: float) -> dict[str, Any]:
    try:
        return {"source": redact_text(url), "pools": live_pools(url, timeout), "error": None}
    except ConnmanError as exc:
        return {"source": redact_text(url), "pools": [], "error": str(exc)}


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


def _print_status(r: dict[str, Any]) -> None:
    rows = [
        ("storage", f"{r['tier']} ({r['dialect']}) from {r['source']}"),
        ("url", r["url"]),
    ]
    if r["answers"]:
        rows.append(("answers", f"yes: {r['server_version']}, SELECT in {r['latency_ms']} ms"))
    else:
        rows.append(("answers", f"NO: {r['error']}"))
    if r["degraded"]:
        rows.append(("degraded", f"to {r['effective_tier']}: {r['effective_url']}"))
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
        print("\ntracks (tables: rows)")
        tw = max(len(t) for t in r["tracks"])
        for track, t in r["tracks"].items():
            if t["error"]:
                detail = f"ERROR {t['error']}"
            else:
                detail = ", ".join(
                    f"{table} {'missing' if n is None else n}" for table, n in t["tables"].items()
                )
            print(f"  {track:<{tw}}  {detail}  [{t['database']}]")
    live = r.get("live")
    if live is not None:
        if live["error"]:
            print(f"\nlive pools from {live['source']}: ERROR {live['error']}")
        else:
            _print_pools(f"live pools from {live['source']}", live["pools"])


def _print_pools(title: str, pools: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    if not pools:
        print("  none")
    for p in pools:
        up = "" if p.get("up", True) is not False else "  DOWN"
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
