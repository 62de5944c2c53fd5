"""A/B of ``connman migrate``: the code as it is against another git revision, same
source, rounds alternating.

Run::

    uv run python tests/bench/bench_migrate_ab.py REV [--rows N] [--data N] [--rounds 9]

``REV``'s ``connman/`` is exported with ``git archive`` into a temporary directory and
run by the same interpreter with that directory first on ``PYTHONPATH`` (the same
dependencies, only connman's code differs). Each round runs ``connman migrate --execute``
(copy + verify) once for each side, the order alternating from round to round (AB, BA,
...), each on a fresh throwaway cluster, timed whole as a child process (start-up
included). Reported: wall seconds per run, the median of each side, and the median of
the per-round ratios (this code's seconds / REV's; below 1 is faster). On a machine whose
speed drifts within minutes, only the paired ratio shows a change of a few percent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench_migrate import connman_command, count_rows, create_database, generate, median, timed

from connman.testing.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]


def export_revision(rev: str, into: Path) -> str:
    """``rev``'s ``connman/`` under ``into``; the full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "connman"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return commit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rev", help="the other revision (a commit, tag or branch)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="captures (1,000,000)")
    parser.add_argument("--data", type=int, default=None, help="data rows (rows / 5)")
    parser.add_argument("--rounds", type=int, default=9, help="rounds, each side once (9)")
    args = parser.parse_args()
    data = args.data if args.data is not None else args.rows // 5
    total = args.rows + data
    expected = {"captures": args.rows, "data": data}
    work = Path(tempfile.mkdtemp(prefix="connman-bench-migrate-ab-"))
    os.chmod(work, 0o755)
    try:
        other = work / "other"
        other.mkdir()
        commit = export_revision(args.rev, other)
        where = subprocess.run(
            [sys.executable, "-c", "import connman; print(connman.__file__)"],
            env=dict(os.environ, PYTHONPATH=str(other)),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(other)):  # the A/B would compare this code with itself
            raise SystemExit(f"{args.rev}'s connman did not load from {other}: {where}")
        source = work / "membrane.db"
        generate(source, args.rows, data)
        pythonpath = os.environ.get("PYTHONPATH")
        seconds: dict[str, list[float]] = {"this": [], "other": []}
        for number in range(1, args.rounds + 1):
            order = ("this", "other") if number % 2 else ("other", "this")
            for side in order:
                with LocalCluster() as cluster:
                    target = asyncio.run(create_database(cluster.dsn, "bench"))
                    # timed() runs the child with this process's environment.
                    if side == "other":
                        os.environ["PYTHONPATH"] = os.pathsep.join(
                            p for p in (str(other), pythonpath) if p
                        )
                    try:
                        run, out = timed(side, total, connman_command(source, target), cwd=work)
                    finally:
                        os.environ.pop("PYTHONPATH", None)
                        if pythonpath is not None:
                            os.environ["PYTHONPATH"] = pythonpath
                    copied = asyncio.run(count_rows(target)) if run.ok else {}
                    if not (run.ok and "verify passed" in out and copied == expected):
                        print(out[-3000:])
                        raise SystemExit(f"round {number}: {side} failed")
                seconds[side].append(run.seconds)
                print(f"round {number}: {side}: {run.seconds:.1f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratios = [a / b for a, b in zip(seconds["this"], seconds["other"], strict=True)]
    load = os.getloadavg()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"\n{when}, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at the end; "
        f"{total:,} rows, copy + verify, {args.rounds} rounds\n"
        f"this code: median {median(seconds['this']):.1f} s "
        f"({', '.join(f'{s:.1f}' for s in seconds['this'])})\n"
        f"{args.rev} ({commit[:7]}): median {median(seconds['other']):.1f} s "
        f"({', '.join(f'{s:.1f}' for s in seconds['other'])})\n"
        f"paired ratio this/{args.rev}: median {median(ratios):.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
