"""Migration benchmark: ``connman migrate`` against pgloader, same source, same run.

Run::

    uv run python tests/bench/bench_migrate.py [--rows N] [--data N] [--append]

The source is a generated membrane.db: ``--rows`` Brain captures (200-byte content,
a 1.5 kB JSON embedding, ISO timestamps, JSON metadata) and ``--data`` D-gent rows
(200-byte blobs, epoch floats, causal chains of 10, JSON metadata), 1,000,000 and
200,000 by default. The target is a throwaway PostgreSQL cluster
(:class:`connman.testing.cluster.LocalCluster`, loopback only), one fresh database per
run. Measured, each as a child process timed by GNU time (wall clock, peak RSS):

- ``connman copy+verify``: ``connman migrate --execute`` (schema, copy with type
  conversion, indexes, then verify of every table: counts and content checksums);
- ``connman copy``: the same with ``--no-verify``;
- ``pgloader``: ``/usr/bin/pgloader`` with ``prefetch rows = 10000, batch rows = 5000``
  (what fits its memory here), its default ``include drop, create tables, create
  indexes, reset sequences``: it creates its own tables with its own type mapping
  (TEXT -> text, REAL -> double precision or real, BLOB -> bytea: JSON stays text, no
  timestamp parsing) and copies; no verify.
- ``connman copy+verify`` again on a source a tenth the size: peak RSS must not grow
  with the table size.

rows/s = source rows / wall seconds of the whole command (start-up included).
PASS when connman copy+verify >= 4 x pgloader's rows/s. ``--append`` adds the result
to tests/bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from connman.schema import table_specs
from connman.testing.cluster import LocalCluster

RESULTS = Path(__file__).with_name("RESULTS.md")
TARGET_RATIO = 4.0


@dataclass
class Run:
    name: str
    rows: int
    seconds: float
    peak_rss_kb: int
    ok: bool
    detail: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def generate(path: Path, captures: int, data: int, seed: int = 1) -> None:
    """The benchmark's membrane.db (kgents' SQLite schema, as an old kgents wrote it)."""
    path.unlink(missing_ok=True)
    rnd = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    for spec in table_specs("brain") + table_specs("dgent"):
        for statement in spec.ddl_for("sqlite"):
            conn.execute(statement)
    embedding = json.dumps([round(rnd.uniform(-1, 1), 8) for _ in range(128)])
    assert 1400 <= len(embedding) <= 1700, len(embedding)
    filler = "".join(rnd.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(400))

    def capture_rows():
        for i in range(captures):
            content = f"capture {i} {filler}"[:200]
            yield (
                uuid.UUID(int=rnd.getrandbits(128)).hex,
                content,
                hashlib.md5(content.encode()).hexdigest(),
                embedding,
                f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00+00:00",
                None,
                '{"source": "bench"}',
                i % 7,
            )

    conn.executemany("INSERT INTO captures VALUES (?, ?, ?, ?, ?, ?, ?, ?)", capture_rows())

    def data_rows():
        parent = None
        for i in range(data):
            ident = uuid.UUID(int=rnd.getrandbits(128)).hex
            yield (ident, rnd.randbytes(200), 1.7e9 + i, parent if i % 10 else None, '{"k": "v"}')
            parent = ident

    conn.executemany("INSERT INTO data VALUES (?, ?, ?, ?, ?)", data_rows())
    conn.commit()
    conn.close()


def timed(name: str, rows: int, command: list[str], *, cwd: Path) -> tuple[Run, str]:
    """Run ``command`` under GNU time; the run and its output."""
    report = cwd / (re.sub(r"[^a-z0-9]+", "_", name) + ".time")
    started = time.perf_counter()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(report), *command],
        capture_output=True,
        text=True,
        cwd=cwd,
    )
    seconds = time.perf_counter() - started
    peak = int(report.read_text().strip().splitlines()[-1])
    output = result.stdout + result.stderr
    return Run(name, rows, seconds, peak, result.returncode == 0), output


async def create_database(dsn: str, name: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


async def count_rows(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("captures", "data")}
    finally:
        await conn.close()


async def column_types(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND table_name IN ('captures', 'data') ORDER BY 1"
        )
        return {r[0]: r[1] for r in rows}
    finally:
        await conn.close()


def connman_command(source: Path, target: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "connman.cli",
        "migrate",
        "--from",
        f"sqlite:///{source}",
        "--to",
        target,
        "--execute",
        *extra,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="captures (1,000,000)")
    parser.add_argument("--data", type=int, default=None, help="data rows (rows / 5)")
    parser.add_argument("--append", action="store_true", help="append to tests/bench/RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    data = args.data if args.data is not None else args.rows // 5
    total = args.rows + data
    pgloader = shutil.which("pgloader") or "/usr/bin/pgloader"
    work = Path(tempfile.mkdtemp(prefix="connman-bench-migrate-"))
    os.chmod(work, 0o755)  # pgloader runs as this user; the cluster as postgres
    try:
        source = work / "membrane.db"
        small = work / "small.db"
        t0 = time.perf_counter()
        generate(source, args.rows, data)
        generate(small, max(1, args.rows // 10), max(1, data // 10), seed=2)
        print(
            f"generated {total:,} rows ({source.stat().st_size / 1e6:,.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        # Each run on a cluster of its own: checkpoints after one tool's gigabytes of
        # WAL must not slow the next tool down.
        runs: list[Run] = []
        with LocalCluster() as cluster:
            target = asyncio.run(create_database(cluster.dsn, "connman_full"))
            run, out = timed(
                "connman copy+verify", total, connman_command(source, target), cwd=work
            )
            copied = asyncio.run(count_rows(target))
            run.ok = (
                run.ok
                and "verify passed" in out
                and copied == {"captures": args.rows, "data": data}
            )
            if not run.ok:
                print(out[-3000:])
            connman_types = asyncio.run(column_types(target))
            runs.append(run)
            print(f"{run.name}: {run.seconds:.1f} s, {run.rate:,.0f} rows/s", flush=True)
        with LocalCluster() as cluster:
            target = asyncio.run(create_database(cluster.dsn, "connman_copy"))
            run, out = timed(
                "connman copy", total, connman_command(source, target, "--no-verify"), cwd=work
            )
            runs.append(run)
            print(f"{run.name}: {run.seconds:.1f} s, {run.rate:,.0f} rows/s", flush=True)
        with LocalCluster() as cluster:
            target = asyncio.run(create_database(cluster.dsn, "pgloader"))
            load = work / "load.cmd"
            load.write_text(
                f"LOAD DATABASE\n  FROM sqlite://{source}\n  INTO {target}\n"
                "  WITH include drop, create tables, create indexes, reset sequences,\n"
                "       prefetch rows = 10000, batch rows = 5000\n;\n"
            )
            run, out = timed("pgloader", total, [pgloader, str(load)], cwd=work)
            loaded = asyncio.run(count_rows(target)) if run.ok else {}
            run.ok = run.ok and loaded == {"captures": args.rows, "data": data}
            if not run.ok:
                print(out[-3000:])
            pgloader_types = asyncio.run(column_types(target)) if run.ok else {}
            runs.append(run)
            print(f"{run.name}: {run.seconds:.1f} s, {run.rate:,.0f} rows/s", flush=True)
        with LocalCluster() as cluster:
            small_total = max(1, args.rows // 10) + max(1, data // 10)
            target = asyncio.run(create_database(cluster.dsn, "connman_small"))
            run, out = timed(
                "connman copy+verify, 1/10 size",
                small_total,
                connman_command(small, target),
                cwd=work,
            )
            runs.append(run)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    full, _, loader, _ = runs
    ratio = full.rate / loader.rate if loader.rate else 0.0
    passed = full.ok and loader.ok and ratio >= TARGET_RATIO
    differing = sorted(
        f"{k}: connman {connman_types.get(k)}, pgloader {pgloader_types.get(k)}"
        for k in sorted(set(connman_types) | set(pgloader_types))
        if connman_types.get(k) != pgloader_types.get(k)
    )
    report = render(args, total, runs, ratio, passed, differing)
    print(report)
    if args.append:
        with RESULTS.open("a", encoding="utf-8") as handle:
            handle.write("\n" + report)
    return 0 if passed else 1


def render(
    args: argparse.Namespace,
    total: int,
    runs: list[Run],
    ratio: float,
    passed: bool,
    differing: list[str],
) -> str:
    full, _, _, tenth = runs
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    lines = [
        "## Migration: connman vs pgloader",
        "",
        f"`uv run python tests/bench/bench_migrate.py --rows {args.rows}"
        + (f" --data {args.data}" if args.data is not None else "")
        + "`",
        "",
        f"{when}, Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} at the end, PostgreSQL: a throwaway local cluster on loopback "
        "(fsync off). Source: generated membrane.db, "
        f"{args.rows:,} captures (200-byte content, 1.5 kB JSON embedding) and "
        f"{total - args.rows:,} D-gent data rows (200-byte blobs, causal chains). "
        "Each tool a child process, timed whole (start-up included), peak RSS by GNU time.",
        "",
        "| run | rows | seconds | rows/s | peak RSS MB | ok |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run.name} | {run.rows:,} | {run.seconds:.1f} | {run.rate:,.0f} | "
            f"{run.peak_rss_kb / 1024:,.0f} | {'yes' if run.ok else 'NO'} |"
        )
    lines += [
        "",
        f"{'PASS' if passed else 'FAIL'}: connman copy+verify = {ratio:.2f} x pgloader's rows/s "
        f"(target >= {TARGET_RATIO:.0f} x).",
        "",
        "What each did: connman created connman's schema (`data.metadata` JSONB, "
        "`content` BYTEA, the foreign key on `causal_parent`, every index), converted "
        "JSON text to JSONB, copied parents before children, and verified counts and "
        "content checksums of both tables; pgloader created its own tables from SQLite's "
        "declared types and copied, without verification. Column types that differ:",
        "",
        *(f"- {d}" for d in differing),
        "",
        f"Peak RSS at full size {full.peak_rss_kb / 1024:,.0f} MB, at a tenth of the size "
        f"{tenth.peak_rss_kb / 1024:,.0f} MB: memory is bounded by the batch, not the table.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
