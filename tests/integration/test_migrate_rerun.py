"""connman migrate run again: on a complete target, after an interruption, on a
target that already holds part of the rows or rows of its own (writes made while
kgents ran degraded on the fallback file), and what verify says about differences.

"Rows sent" is measured by the server: ``n_tup_ins`` of ``pg_stat_user_tables`` counts
every tuple a COPY inserted, also those of a COPY that failed and rolled back.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from connman import ConnectionManager
from connman.kgents.dgent import Datum, DgentStore
from connman.testing.cluster import LocalCluster
from tests.support.faultkit import wait_until
from tests.support.membrane_factory import make_membrane
from tests.support.migrate_cli import pg, run_cli, sqlite_file_url, table_counts, tier_cli

pytestmark = pytest.mark.postgres


async def inserted(url: str) -> dict[str, int]:
    """``n_tup_ins`` per table once every other session of the database has ended
    (a backend flushes its statistics before it leaves pg_stat_activity)."""
    conn = await pg(url)
    try:

        async def alone() -> bool:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return bool(others == 0)

        await wait_until(alone, timeout=30, what="the migration's sessions to end")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch("SELECT relname, n_tup_ins FROM pg_stat_user_tables")
        return {r[0]: int(r[1]) for r in rows}
    finally:
        await conn.close()


def sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {table: after[table] - before.get(table, 0) for table in after}


async def test_rerun_on_a_complete_target_sends_nothing(
    tmp_path: Path, postgres_database: str
) -> None:
    membrane = make_membrane(tmp_path / "membrane.db")
    source = sqlite_file_url(membrane.path)
    first = tier_cli(
        "migrate", source, postgres_database, "--execute", "--batch-size", "64", cwd=tmp_path
    )
    assert first.returncode == 1, first.stdout + first.stderr  # 3 unconvertible rows
    assert "already complete" not in first.stdout
    before = await inserted(postgres_database)

    again = tier_cli(
        "migrate", source, postgres_database, "--execute", "--batch-size", "64", cwd=tmp_path
    )

    assert again.returncode == 1, again.stdout + again.stderr  # the same 3 rows
    assert sent(before, await inserted(postgres_database)) == dict.fromkeys(before, 0)
    assert "already complete: the target holds every row of the source; nothing was sent" in (
        again.stdout
    )
    assert all(row["written"] == 0 for row in table_counts(again.stdout).values())
    assert "verify passed" not in again.stdout or "DIFFERENCES" not in again.stdout


def _first_rows(source: Path, copy: Path, keep: dict[str, int]) -> None:
    """``copy``: ``source`` holding only the first ``keep[table]`` rows (rowid order)."""
    shutil.copyfile(source, copy)
    conn = sqlite3.connect(copy)
    for table, rows in keep.items():
        conn.execute(
            f'DELETE FROM "{table}" WHERE rowid NOT IN '
            f'(SELECT rowid FROM "{table}" ORDER BY rowid LIMIT {rows})'
        )
    conn.commit()
    conn.close()


async def test_a_target_holding_the_first_part_gets_only_the_rest(
    tmp_path: Path, postgres_database: str
) -> None:
    membrane = make_membrane(
        tmp_path / "membrane.db",
        captures=6_000,
        data=3_000,
        crystals=0,
        notes=0,
        bad_rows=False,
        children_first=False,  # an append-only store: read in rowid order
    )
    keep = {"captures": 3_500, "data": 1_250}
    part = tmp_path / "first-part.db"
    _first_rows(membrane.path, part, keep)
    tables = ("--tables", "captures", "data", "--batch-size", "500")
    done = tier_cli(
        "migrate", sqlite_file_url(part), postgres_database, "--execute", *tables, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    before = await inserted(postgres_database)

    rest = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--execute",
        *tables,
        cwd=tmp_path,
    )

    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "verify passed" in rest.stdout
    summary = table_counts(rest.stdout)
    for table, rows in membrane.rows.items():
        if table not in keep:
            continue
        assert summary[table]["present"] == keep[table], table
        assert summary[table]["written"] == rows - keep[table], table
    # Exactly the missing rows went over: no COPY of rows already there, failed or not.
    assert sent(before, await inserted(postgres_database)) == {
        "captures": 6_000 - 3_500,
        "data": 3_000 - 1_250,
    }


async def test_ctrl_c_says_how_far_it_got_and_the_rerun_resumes(
    tmp_path: Path, postgres_database: str
) -> None:
    membrane = make_membrane(
        tmp_path / "big.db", captures=40_000, data=0, crystals=0, notes=0, bad_rows=False
    )
    args = [
        "migrate",
        "--from",
        sqlite_file_url(membrane.path),
        "--to",
        postgres_database,
        "--execute",
        "--tables",
        "captures",
        "--batch-size",
        "500",
        "--no-verify",
    ]
    process = subprocess.Popen(  # noqa: ASYNC220 - the test polls the target while it runs
        [sys.executable, "-m", "connman.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    conn = await pg(postgres_database)
    try:

        async def some_copied() -> bool:
            assert process.poll() is None, "finished before it could be interrupted"
            if not await conn.fetchval("SELECT to_regclass('captures') IS NOT NULL"):
                return False
            return bool(await conn.fetchval("SELECT count(*) >= 2000 FROM captures"))

        await wait_until(some_copied, timeout=60, what="part of captures to be copied")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        await conn.close()

    assert process.returncode == 130, out + err
    # The header and the plan came before the copy, the news of the interruption last.
    assert out.startswith("source  "), out
    assert "table captures: connman schema (brain), created" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("connman migrate: interrupted after "), err
    assert last.endswith(" rows; rerun the same command to resume"), err
    reported = int(last.split("interrupted after ")[1].split(" rows")[0].replace(",", ""))
    conn = await pg(postgres_database)
    try:
        there = int(await conn.fetchval("SELECT count(*) FROM captures"))
    finally:
        await conn.close()
    # The count is of batches the migration saw committed: a batch whose commit
    # reached the server while the signal cancelled the wait for its answer is on
    # the target but not in the count (the resume finds it present).
    assert reported <= there and 2_000 <= there < 40_000
    before = await inserted(postgres_database)

    resumed = run_cli(*args, cwd=tmp_path)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = table_counts(resumed.stdout)["captures"]
    assert summary == {"read": 40_000, "written": 40_000 - there, "present": there, "rejected": 0}
    assert sent(before, await inserted(postgres_database)) == {"captures": 40_000 - there}


async def test_verify_names_the_rows_that_differ(tmp_path: Path, postgres_database: str) -> None:
    membrane = make_membrane(tmp_path / "membrane.db", bad_rows=False)
    source = sqlite_file_url(membrane.path)
    tables = ("--tables", "captures")
    done = tier_cli("migrate", source, postgres_database, "--execute", *tables, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    conn = await pg(postgres_database)
    try:
        for n in range(3, 15):  # more than are named
            await conn.execute(
                "UPDATE captures SET content = 'edited' WHERE id = $1", f"capture-{n:06d}"
            )
        await conn.execute("DELETE FROM captures WHERE id = 'capture-000100'")
        await conn.execute(
            "INSERT INTO captures (id, content, captured_at) "
            "VALUES ('written-later', 'x', '2025-01-01')"
        )
    finally:
        await conn.close()

    checked = tier_cli("verify", source, postgres_database, *tables)

    assert checked.returncode == 1
    out = checked.stdout
    named = ", ".join(repr(f"capture-{n:06d}") for n in range(3, 13))
    assert (
        f"captures: 12 row(s) on both sides with different content: {named} ... (2 more)" in out
    ), out
    assert "captures: 1 row(s) only in the source: 'capture-000100'" in out
    assert "captures: 1 row(s) only on the target: 'written-later'" in out
    assert "What to do:" in out
    assert "delete the target's row and run migrate again" in out


def test_a_default_target_says_where_it_came_from(tmp_path: Path) -> None:
    """Nothing configured: the target is the docker-compose database, and the user,
    who never typed that URL, is told so."""
    home = tmp_path / "data"
    (home / "kgents").mkdir(parents=True)
    make_membrane(home / "kgents" / "membrane.db", bad_rows=False)
    env = {
        "XDG_DATA_HOME": str(home),
        "KGENTS_DATABASE_URL": "",
        "KGENTS_POSTGRES_URL": "",
        "KGENTS_POOL_CONNECT_TIMEOUT": "3",
    }
    done = run_cli("migrate", "--dry-run", env=env, cwd=tmp_path)
    both = done.stdout + done.stderr
    assert "localhost:5432/kgents" in both
    assert "docker-compose default: nothing names a PostgreSQL database" in both, both
    assert "KGENTS_DATABASE_URL" in both
    if done.returncode == 4:  # nothing answers as kgents there: the error says it too
        assert "the target came from the docker-compose default" in done.stderr


# -- writes made while degraded go home ------------------------------------------------


def _datum(ident: str, content: bytes, parent: str | None = None) -> Datum:
    return Datum(
        id=ident, content=content, created_at=1.7e9, causal_parent=parent, metadata={"k": "v"}
    )


async def test_writes_made_while_degraded_go_home(
    tmp_path: Path, postgres_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kgents writes to PostgreSQL, PostgreSQL stops, kgents goes on writing to the
    fallback file, PostgreSQL comes back: ``connman migrate --from`` the file ``--to``
    the database carries the degraded writes over. Nothing lost, nothing duplicated;
    a key written on both sides with different rows is a conflict: reported by key,
    the database's row left as it is."""
    monkeypatch.setenv("KGENTS_DATABASE_URL", postgres_cluster.url)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    for name in ("KGENTS_POSTGRES_URL", "KGENTS_STORAGE_TIER", "KGENTS_STORAGE_STRICT"):
        monkeypatch.delenv(name, raising=False)
    fallback = tmp_path / "kgents" / "membrane.db"
    before = [_datum(f"pg-{i}", b"before the outage") for i in range(5)]
    both_same = _datum("both-same", b"identical on both sides")
    home_version = _datum("both-different", b"the database's version")
    async with ConnectionManager() as manager:
        assert not manager.degraded
        store = DgentStore(manager)
        for datum in [*before, both_same, home_version]:
            await store.put(datum)

    postgres_cluster.stop()
    during = [_datum("degraded-0", b"root written while degraded")]
    during += [_datum(f"degraded-{i}", b"child", f"degraded-{i - 1}") for i in range(1, 6)]
    fallback_version = _datum("both-different", b"the fallback's version")
    async with ConnectionManager() as manager:
        await manager.start()
        assert manager.degraded
        store = DgentStore(manager)
        for datum in [*during, both_same, fallback_version]:
            await store.put(datum)
    postgres_cluster.start()

    def home() -> subprocess.CompletedProcess[str]:
        return tier_cli(
            "migrate", sqlite_file_url(fallback), postgres_cluster.url, "--execute", cwd=tmp_path
        )

    done = home()

    assert done.returncode == 1, done.stdout + done.stderr  # the conflict
    assert table_counts(done.stdout)["data"] == {
        "read": 8,
        "written": 6,
        "present": 1,
        "rejected": 1,
    }
    assert "rejected data 'both-different': primary key conflict" in done.stdout
    assert "1 row(s) conflict" in done.stdout
    assert "the target also holds 5 row(s) of its own (kept)" in done.stdout
    assert "verify FAILED" not in done.stdout
    conn = await pg(postgres_cluster.url)
    try:
        rows: dict[str, Any] = {
            r["id"]: bytes(r["content"]) for r in await conn.fetch("SELECT id, content FROM data")
        }
    finally:
        await conn.close()
    expected = {d.id: d.content for d in [*before, both_same, home_version, *during]}
    assert rows == expected  # every degraded write home, no duplicate, nothing overwritten

    again = home()  # the same command again: nothing to send, the same conflict
    assert again.returncode == 1
    assert table_counts(again.stdout)["data"]["written"] == 0
    assert "rejected data 'both-different': primary key conflict" in again.stdout


async def test_a_conflict_into_sqlite_is_reported_and_left_alone(
    tmp_path: Path, postgres_database: str
) -> None:
    conn = await pg(postgres_database)
    try:
        await conn.execute("CREATE TABLE things (id int PRIMARY KEY, v text NOT NULL)")
        await conn.execute("INSERT INTO things VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    finally:
        await conn.close()
    target = tmp_path / "home.db"
    done = tier_cli(
        "migrate", postgres_database, sqlite_file_url(target), "--execute", cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(target) as home:
        home.execute("UPDATE things SET v = 'changed at home' WHERE id = 2")
        home.execute("DELETE FROM things WHERE id = 3")
    home.close()

    again = tier_cli(
        "migrate", postgres_database, sqlite_file_url(target), "--execute", cwd=tmp_path
    )

    assert again.returncode == 1, again.stdout + again.stderr
    assert table_counts(again.stdout)["things"] == {
        "read": 3,
        "written": 1,
        "present": 1,
        "rejected": 1,
    }
    assert "rejected things 2: primary key conflict" in again.stdout
    with sqlite3.connect(target) as home:
        rows = home.execute("SELECT id, v FROM things ORDER BY id").fetchall()
    home.close()
    assert rows == [(1, "a"), (2, "changed at home"), (3, "c")]
