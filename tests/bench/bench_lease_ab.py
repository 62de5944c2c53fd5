"""A/B of the lease path: connman as it is against another revision of it, in one
process, on one server, rounds alternating.

Run::

    uv run python tests/bench/bench_lease_ab.py REV [--rounds 41] [--url URL]
    git show REV:connman/manager.py > /tmp/manager_rev.py
    uv run python tests/bench/bench_lease_ab.py /tmp/manager_rev.py [--rounds 41] [--url URL]

With a git revision, ``REV``'s whole ``connman/`` is exported (``git archive``) and
imported beside this one as the package ``connman_other`` (its imports of ``connman``
rewritten), so pool, drivers and manager all differ. With a file, only manager.py
differs: both ``ConnectionManager`` classes use this pool and driver code. Each
manager has its own pool of 10 connections. Workload: bench_pool.py's
``lease`` (acquire, one ``sleep(0)`` held, release), 40,000 leases per round at each
concurrency. Reported: client CPU (``process_time``) per lease, the median over
rounds, and the median of the per-round ratios. On a shared machine the spread of
bench_pool.py's windows (tens of %) hides a 2 % change; pairing the two versions
within each round in one process is what makes that size visible.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from _common import bench_database

import connman.manager
from connman import PoolConfig

LEASES = 40_000


REPO = Path(__file__).resolve().parents[2]


def load_revision(rev: str, into: Path) -> ModuleType:
    """``rev``'s connman/, exported under ``into`` as the package ``connman_other``;
    its manager module."""
    archive = subprocess.run(
        ["git", "archive", rev, "connman"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    package = into / "connman_other"
    (into / "connman").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bconnman\b", "connman_other", path.read_text()))
    sys.path.insert(0, str(into))
    module = importlib.import_module("connman_other.manager")
    assert module.__file__ is not None and module.__file__.startswith(str(package))
    return module


def load_other(path: str) -> ModuleType:
    """The other manager.py, as a module of its own that imports today's pool."""
    spec = importlib.util.spec_from_file_location("connman_manager_other", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def cpu_per_lease(manager: Any, tasks: int) -> float:
    each = LEASES // tasks

    async def worker() -> None:
        for _ in range(each):
            async with manager.lease("bench"):
                await asyncio.sleep(0)

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (time.process_time() - start) / (each * tasks) * 1e6


async def run(url: str, other: ModuleType, rounds: int, concurrency: list[int]) -> None:
    config = PoolConfig(min_size=10, max_size=10)
    managers = {
        "other": other.ConnectionManager(url, config=config),
        "this": connman.manager.ConnectionManager(url, config=config),
    }
    for manager in managers.values():
        await manager.start()
        await cpu_per_lease(manager, 16)  # warm-up
    try:
        for c in concurrency:
            cpu: dict[str, list[float]] = {name: [] for name in managers}
            for r in range(rounds):
                order = list(managers) if r % 2 == 0 else list(reversed(managers))
                for name in order:
                    cpu[name].append(await cpu_per_lease(managers[name], c))
            a, b = statistics.median(cpu["other"]), statistics.median(cpu["this"])
            pairs = zip(cpu["other"], cpu["this"], strict=True)
            paired = statistics.median(y / x for x, y in pairs)
            print(
                f"c={c}: client CPU µs/lease other {a:.2f}, this {b:.2f} ({(b / a - 1):+.1%}); "
                f"median paired ratio {paired - 1:+.1%}",
                flush=True,
            )
    finally:
        for manager in managers.values():
            await manager.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="a git revision, or another revision's manager.py")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="connman-bench-lease-ab-") as work:
        if os.path.isfile(args.other):
            other = load_other(args.other)
        else:
            other = load_revision(args.other, Path(work))
        with bench_database(args.url) as db:
            concurrency = [int(c) for c in args.concurrency.split(",")]
            asyncio.run(run(db.url, other, args.rounds, concurrency))
    load = os.getloadavg()
    print(f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
