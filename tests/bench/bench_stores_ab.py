"""A/B of the D-gent and Brain stores: this code against another git revision, on
PostgreSQL and SQLite, rounds alternating.

Run::

    uv run python tests/bench/bench_stores_ab.py REV [--rounds 7] [--ops 200] [--url URL]

``REV``'s ``connman/`` is exported with ``git archive`` into a temporary directory. Two
child processes, the same interpreter, run the same workload: one imports this code,
the other has the export first on ``PYTHONPATH`` (the same dependencies, only connman's
code differs). Each side has its own database on one server (a throwaway
``LocalCluster`` unless ``--url``/``$CONNMAN_BENCH_URL``) and its own SQLite file.
A round runs the workload once on each side, per dialect, the order alternating from
round to round (AB, BA, ...). Workload (``--ops`` n): D-gent n ``put`` (in causal
chains of 10), n ``get``, n ``exists``, n/4 ``list(prefix)``, n/4
``causal_chain``; Brain n/2 ``capture`` (2 tags), n ``get_capture``, n ``fetch_one``,
n/4 ``recent(10)``. Reported per dialect: the child's wall seconds and CPU seconds
(``process_time``: the client's own work, where SQL rendering lives) per round, the
medians, and the median of the per-round ratios (this / REV; below 1 is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DIALECTS = ("postgresql", "sqlite")


# -- the child: one side, the workload on request ------------------------------------


async def workload(url: str, ops: int, round_no: int) -> dict[str, float]:
    # The old module paths: present in both revisions.
    from connman import ConnectionManager
    from connman.adapters.brain import BrainStore
    from connman.adapters.dgent import Datum, DgentStore

    async with ConnectionManager(url, degrade=False) as manager:
        dgent = DgentStore(manager)
        brain = BrainStore(manager)
        await dgent.ensure_schema()
        await brain.fetch_one("SELECT 1 AS one")  # creates Brain's tables
        tag = f"r{round_no}-"
        wall, cpu = time.perf_counter(), time.process_time()
        parent: str | None = None
        ids = []
        for i in range(ops):
            datum = Datum.create(
                b"x" * 64, id=f"{tag}{i:06d}", causal_parent=parent if i % 10 else None
            )
            await dgent.put(datum)
            parent = datum.id
            ids.append(datum.id)
        for i in ids:
            await dgent.get(i)
        for i in ids:
            await dgent.exists(i)
        for _ in range(ops // 4):
            await dgent.list(prefix=tag + "0001", limit=20)
        for i in ids[1 : ops // 4 * 2 : 2]:
            await dgent.causal_chain(i)
        captures = [
            await brain.capture(f"capture {tag}{i}", tags=("a", "b")) for i in range(ops // 2)
        ]
        for i in range(ops):
            await brain.get_capture(captures[i % len(captures)])
        for i in range(ops):
            await brain.fetch_one(
                "SELECT id, content FROM captures WHERE id = :id",
                {"id": captures[i % len(captures)]},
            )
        for _ in range(ops // 4):
            await brain.recent(10)
        result = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
        # The work was done (outside the timing).
        assert len(await dgent.causal_chain(ids[9])) == 10
        assert await dgent.count() == ops * round_no
        row = await brain.fetch_one("SELECT count(*) AS n FROM captures")
        assert row is not None and row["n"] == ops // 2 * round_no
        return result


def child() -> None:
    """Read ``url ops round`` lines on stdin; answer each with one JSON line."""
    import connman

    print(json.dumps({"file": connman.__file__}), flush=True)
    for line in sys.stdin:
        url, ops, round_no = json.loads(line)
        print(json.dumps(asyncio.run(workload(url, ops, round_no))), flush=True)


# -- the parent -----------------------------------------------------------------------


class Side:
    def __init__(self, name: str, pythonpath: str | None) -> None:
        env = dict(os.environ)
        if pythonpath is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (pythonpath, os.environ.get("PYTHONPATH")) if p
            )
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),  # not the repo: PYTHONPATH decides which connman
        )
        self.file = self._answer()["file"]

    def _answer(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the child ended")
        return json.loads(line)

    def run(self, url: str, ops: int, round_no: int) -> dict[str, float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([url, ops, round_no]) + "\n")
        self.proc.stdin.flush()
        result: dict[str, float] = self._answer()
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


async def create_databases(dsn: str, names: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the other revision (a commit, tag or branch)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (7)")
    parser.add_argument("--ops", type=int, default=200, help="operations per kind (200)")
    parser.add_argument("--url", default=None, help="PostgreSQL (loopback); default: throwaway")
    args = parser.parse_args()
    # Here, not at the top: the child (maybe the other revision's connman) needs neither.
    from _common import bench_database
    from bench_migrate_ab import export_revision

    work = Path(tempfile.mkdtemp(prefix="connman-bench-stores-ab-"))
    sides: list[Side] = []
    try:
        (work / "other").mkdir()
        commit = export_revision(args.rev, work / "other")
        this, other = Side("this", None), Side(args.rev, str(work / "other"))
        sides = [this, other]
        if not other.file.startswith(str(work / "other")) or this.file == other.file:
            raise SystemExit(f"the A/B would compare one code with itself: {other.file}")
        with bench_database(args.url) as db:
            asyncio.run(create_databases(db.dsn, ["bench_this", "bench_other"]))
            urls = {
                ("postgresql", this): with_database(db.url, "bench_this"),
                ("postgresql", other): with_database(db.url, "bench_other"),
                ("sqlite", this): f"sqlite:///{work / 'this.db'}",
                ("sqlite", other): f"sqlite:///{work / 'other.db'}",
            }
            results: dict[tuple[str, str], list[dict[str, float]]] = {}
            for number in range(1, args.rounds + 1):
                order = (this, other) if number % 2 else (other, this)
                for dialect in DIALECTS:
                    for side in order:
                        got = side.run(urls[dialect, side], args.ops, number)
                        results.setdefault((dialect, side.name), []).append(got)
                        print(
                            f"round {number} {dialect} {side.name}: wall {got['wall']:.3f} s, "
                            f"cpu {got['cpu']:.3f} s",
                            flush=True,
                        )
            source = db.source
    finally:
        for side in sides:
            side.close()
        shutil.rmtree(work, ignore_errors=True)

    load = os.getloadavg()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n{when}, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
        f"{args.rounds} rounds, --ops {args.ops}, PostgreSQL: {source}; "
        f"other = {args.rev} ({commit[:7]})"
    )
    for dialect in DIALECTS:
        a, b = results[dialect, "this"], results[dialect, args.rev]
        for key in ("wall", "cpu"):
            ratios = [x[key] / y[key] for x, y in zip(a, b, strict=True)]
            print(
                f"{dialect:10} {key:4}: this median {statistics.median(x[key] for x in a):.3f} s, "
                f"{args.rev} median {statistics.median(y[key] for y in b):.3f} s, paired ratio "
                f"this/{args.rev} median {statistics.median(ratios):.3f} "
                f"(range {min(ratios):.3f}-{max(ratios):.3f})"
            )
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        child()
    else:
        sys.exit(main())
