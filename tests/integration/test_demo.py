"""``connman demo`` as users run it, in processes of their own: a run touches only its
own rows (``demo-<run id>-``), so demos at once both pass and a ``--keep`` run's rows
survive later runs; Ctrl-C removes the run's rows and exits 130 with one line."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from connman import ConnectionManager
from connman.kgents.brain import BrainStore
from tests.support.faultkit import wait_until
from tests.support.userproc import fresh_env

pytestmark = pytest.mark.anyio

_RUN_LINE = re.compile(r"this run's rows: ids starting (demo-[0-9a-f]+-)")
# Every table the demo writes, and its id column.
_TABLES = {
    "captures": "id",
    "brain_crystals": "id",
    "brain_crystal_tags": "crystal_id",
    "brain_settings": "id",
    "data": "id",
}


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres_database"))
    return f"sqlite:///{tmp_path}/membrane.db"


@pytest.fixture
async def rows(url: str) -> AsyncIterator[RowCounter]:
    async with ConnectionManager(url, degrade=False) as manager:
        yield RowCounter(BrainStore(manager, consumer="test"))


@dataclass
class RowCounter:
    store: BrainStore

    async def __call__(self, prefix: str) -> int:
        """Rows whose id starts with ``prefix``, over every table the demo writes
        (0 before the demo created them)."""
        total = 0
        for table, column in _TABLES.items():
            try:
                found = await self.store.fetch_one(
                    f"SELECT count(*) AS n FROM {table} WHERE {column} LIKE :p",
                    {"p": prefix + "%"},
                )
            except Exception:  # the demo has not created its tables yet
                return 0
            assert found is not None
            total += int(found["n"])
        return total


def _start(url: str, home: Path, *args: str) -> asyncio.Future[asyncio.subprocess.Process]:
    env = fresh_env(home, KGENTS_DATABASE_URL=url, KGENTS_STORAGE_STRICT="1", PYTHONUNBUFFERED="1")
    return asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "connman.cli",
            "demo",
            "--tasks",
            "2",
            "--metrics-port",
            "-1",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Ctrl-C as in a terminal, even if this test runs where SIGINT is ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    )


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    with anyio.fail_after(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _assert_passed(rc: int, out: str, err: str) -> None:
    assert rc == 0, f"rc={rc}\n{out}\n{err}"
    assert "errors                       0" in out, out
    assert "captures and crystals coherent  yes" in out, out


def _prefix(out: str) -> str:
    """The id prefix of a run's rows, as the demo announces it."""
    match = _RUN_LINE.search(out)
    assert match, out
    return match.group(1)


async def _demo(url: str, home: Path, *args: str) -> str:
    """Run a demo to its end; it must pass. Its row prefix."""
    rc, out, err = await _finish(await _start(url, home, *args))
    _assert_passed(rc, out, err)
    return _prefix(out)


async def test_two_demos_at_once_both_pass(url: str, tmp_path: Path, rows: RowCounter) -> None:
    # Different lengths: the first one cleans up while the second still writes.
    short, long = await asyncio.gather(
        _start(url, tmp_path / "a", "--seconds", "1"),
        _start(url, tmp_path / "b", "--seconds", "3"),
    )
    results = await asyncio.gather(_finish(short), _finish(long))
    for result in results:
        _assert_passed(*result)
    assert _prefix(results[0][1]) != _prefix(results[1][1])
    assert await rows("demo-") == 0


async def test_a_kept_run_survives_a_later_run(url: str, tmp_path: Path, rows: RowCounter) -> None:
    kept = await _demo(url, tmp_path, "--seconds", "1", "--keep")
    n = await rows(kept)
    assert n > 0
    later = await _demo(url, tmp_path, "--seconds", "1")
    assert later != kept
    assert await rows(kept) == n
    assert await rows(later) == 0


async def test_ctrl_c_removes_the_runs_rows_and_exits_130(
    url: str, tmp_path: Path, rows: RowCounter
) -> None:
    proc = await _start(url, tmp_path, "--seconds", "60")
    assert proc.stdout is not None
    prefix = None
    with anyio.fail_after(60):
        while prefix is None:
            line = (await proc.stdout.readline()).decode()
            assert line, "the demo ended before naming its rows"
            match = _RUN_LINE.search(line)
            prefix = match.group(1) if match else None
    await wait_until(lambda: rows(prefix), timeout=60, what="the demo's first rows")
    proc.send_signal(signal.SIGINT)
    rc, _, err = await _finish(proc)
    assert rc == 130, err
    assert err.splitlines() == [
        f"connman demo: interrupted; this run's rows (ids starting {prefix}) removed"
    ]
    assert await rows(prefix) == 0
