"""The ``connman`` command: ``status``, ``demo``, ``check-coherence``, ``migrate``,
``verify`` (each subcommand is registered by the module it drives).

Exit codes: 0 success, 1 the database does not answer (or a check failed), 2 usage or
configuration error, 3 (status) only a fallback answers (each subcommand documents its
own beyond these). Output never contains a password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from connman import __version__, status
from connman.config import PoolConfig
from connman.errors import ConfigError
from connman.resolve import resolve_storage
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
    from connman.kgents import coherence, demo
    from connman.migrate import cli as migrate_cli

    return [demo.register_cli, coherence.register_cli, migrate_cli.register_cli]


# -- status ------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    storage = resolve_storage()
    overrides = {} if args.timeout is None else {"connect_timeout": args.timeout}
    config = PoolConfig.from_env(**overrides)
    report = asyncio.run(status.probe(storage, config))
    if args.metrics:
        report["live"] = status.live(args.metrics, config.connect_timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        status.print_report(report)
    code: int = report["exit_code"]
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
