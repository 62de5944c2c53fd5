"""What a second ``connman migrate --execute`` sends: rows inserted on the server by a
rerun on a complete target (must be 0), and its wall time next to the first run's.

Run::

    uv run python tests/bench/bench_migrate_rerun.py [--rows N] [--data N]

The source is bench_migrate.py's membrane.db (``--rows`` captures, ``--data`` D-gent
rows; 1,000,000 and 200,000 by default), the target a throwaway PostgreSQL cluster
(loopback only). Rows sent are the server's count: ``n_tup_ins`` of
``pg_stat_user_tables``, which also counts the tuples of a COPY that failed and
rolled back, read after every session of the migration has ended.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from bench_migrate import connman_command, create_database, generate  # its sibling

from connman.testing.cluster import LocalCluster


async def inserted(dsn: str) -> dict[str, int]:
    """``n_tup_ins`` per table once no other session is left in the database."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(3000):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            if others == 0:
                break
            await asyncio.sleep(0.01)
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch("SELECT relname, n_tup_ins FROM pg_stat_user_tables")
        return {r[0]: int(r[1]) for r in rows}
    finally:
        await conn.close()


def run(source: Path, target: str, cwd: Path) -> tuple[float, str]:
    command = connman_command(source, target)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="captures")
    parser.add_argument("--data", type=int, default=None, help="data rows (rows / 5)")
    args = parser.parse_args()
    data = args.data if args.data is not None else args.rows // 5
    work = Path(tempfile.mkdtemp(prefix="connman-bench-rerun-"))
    try:
        source = work / "membrane.db"
        generate(source, args.rows, data)
        with LocalCluster() as cluster:
            target = asyncio.run(create_database(cluster.dsn, "bench"))
            first, _ = run(source, target, work)
            before = asyncio.run(inserted(target))
            again, out = run(source, target, work)
            after = asyncio.run(inserted(target))
        sent = {table: after[table] - before.get(table, 0) for table in after}
        print(f"source: {args.rows:,} captures + {data:,} data rows")
        print(f"first run: {first:.1f} s; rows inserted {before}")
        print(f"rerun:     {again:.1f} s; rows sent (n_tup_ins delta) {sent}")
        print("rerun says 'already complete':", "already complete" in out)
        return 0 if not any(sent.values()) and "already complete" in out else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
