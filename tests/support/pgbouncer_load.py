"""Load through a pooler from several processes, each with a default ConnectionManager
(no KGENTS_POOL_* variable): every operation's answer is checked.

    uv run python tests/support/pgbouncer_load.py URL [--processes 4] [--tasks 16] [--ops 150]

prints ``{"operations": ..., "errors": {...}, "wrong": ...}`` summed over the
processes. Three statements rotate so that a statement run under another's name shows
as a wrong answer (``SELECT $1::int * 3`` answering the bare parameter) or as an error
(``bind message supplies 2 parameters``), as in issue 11's runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from typing import Any

from connman import ConnectionManager

# (query, arguments for k, expected answer for k)
STATEMENTS = (
    ("SELECT $1::int * 3", lambda k: (k,), lambda k: 3 * k),
    ("SELECT $1::int", lambda k: (k,), lambda k: k),
    ("SELECT $1::int + $2::int", lambda k: (k, 1), lambda k: k + 1),
)


async def one_process(url: str, tasks: int, ops: int, seed: int) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    wrong = done = 0

    async def task(n: int) -> None:
        nonlocal wrong, done
        for i in range(ops):
            k = seed * 1_000_000 + n * 1_000 + i
            query, args, expected = STATEMENTS[(i + n + seed) % len(STATEMENTS)]
            try:
                async with manager.lease(("sqlalchemy", "dgent", "brain")[n % 3]) as lease:
                    value = await lease.connection.fetchval(query, *args(k))
            except Exception as exc:
                errors[type(exc).__name__] += 1
                continue
            done += 1
            if value != expected(k):
                wrong += 1

    async with ConnectionManager(url, degrade=False) as manager:
        await asyncio.gather(*(task(n) for n in range(tasks)))
    return {"operations": tasks * ops, "completed": done, "errors": dict(errors), "wrong": wrong}


def run_load(url: str, *, processes: int, tasks: int, ops: int) -> dict[str, Any]:
    """Start ``processes`` processes at once (default connman settings: no KGENTS_*
    variable reaches them); their figures, summed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KGENTS_", "PG"))}
    argv = ["--tasks", str(tasks), "--ops", str(ops)]
    children = [
        subprocess.Popen(
            [sys.executable, __file__, url, "--child", str(seed), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for seed in range(processes)
    ]
    total: dict[str, Any] = {"operations": 0, "completed": 0, "errors": Counter(), "wrong": 0}
    for child in children:
        out, _ = child.communicate(timeout=300)
        if child.returncode != 0:
            raise RuntimeError(f"a load process exited with {child.returncode}")
        figures = json.loads(out)
        for key in ("operations", "completed", "wrong"):
            total[key] += figures[key]
        total["errors"].update(figures["errors"])
    total["errors"] = dict(total["errors"])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--ops", type=int, default=150)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(one_process(args.url, args.tasks, args.ops, args.child))))
        return
    figures = run_load(args.url, processes=args.processes, tasks=args.tasks, ops=args.ops)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
