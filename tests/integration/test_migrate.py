"""connman migrate / verify on a real PostgreSQL and real SQLite files.

The source is a generated membrane.db holding every track (see membrane_factory):
causal chains, embeddings, JSON tags and timestamps, a table connman has never seen,
unicode, NULLs, and rows that cannot be converted (an orphaned datum, a NUL in a
capture, a crystal whose created_at is 'yesterday'). Every test also checks that the
source file is byte-identical afterwards and that no -wal/-shm appeared beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connman.migrate import MigrateOptions, migrate, verify
from tests.support.membrane_factory import (
    BAD_CRYSTAL_ID,
    BIG_BLOB_ID,
    NUL_CAPTURE_ID,
    ORPHAN_ID,
    UNKNOWN_TABLE,
    Membrane,
    make_membrane,
)
from tests.support.migrate_cli import pg, run_cli, sqlite_file_url, table_counts, tier_cli

pytestmark = pytest.mark.postgres


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_untouched(membrane: Membrane, digest: str) -> None:
    assert sha256_file(membrane.path) == digest
    for suffix in ("-wal", "-shm", "-journal"):
        assert not Path(str(membrane.path) + suffix).exists(), suffix


def sqlite_table(path: Path, ddl: str, rows: list[tuple[Any, ...]]) -> Path:
    """A SQLite file holding one table (``ddl``) with ``rows``."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute(ddl)
    conn.executemany(f"INSERT INTO readings VALUES ({', '.join('?' * len(rows[0]))})", rows)
    conn.commit()
    conn.close()
    return path


async def pg_execute(url: str, sql: str) -> None:
    conn = await pg(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def catalogue(url: str) -> dict[str, Any]:
    """Tables, columns, indexes, constraints and row counts: what a dry run must not change."""
    conn = await pg(url)
    try:
        columns = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY 1, 2"
        )
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        tables = [
            r[0]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        counts = {t: await conn.fetchval(f'SELECT count(*) FROM "{t}"') for t in tables}
        return {
            "columns": [tuple(r) for r in columns],
            "indexes": sorted(r[0] for r in indexes),
            "counts": counts,
        }
    finally:
        await conn.close()


@pytest.fixture
def membrane(tmp_path: Path) -> Membrane:
    return make_membrane(tmp_path / "membrane.db", big_blob=True)


# -- dry run --------------------------------------------------------------------------


async def test_dry_run_writes_nothing(
    membrane: Membrane, postgres_database: str, tmp_path: Path
) -> None:
    digest = sha256_file(membrane.path)
    conn = await pg(postgres_database)
    await conn.execute(
        "CREATE TABLE captures (id TEXT PRIMARY KEY, content TEXT NOT NULL, "
        "content_hash TEXT, embedding_json TEXT, captured_at TEXT NOT NULL, "
        "updated_at TEXT, metadata_json TEXT, access_count INTEGER DEFAULT 0)"
    )
    await conn.execute(
        "INSERT INTO captures (id, content, captured_at) VALUES "
        "('capture-000001', 'capture 1', '2025-01-01')"
    )
    await conn.close()
    before = await catalogue(postgres_database)

    result = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--dry-run",
        cwd=tmp_path,
    )

    assert await catalogue(postgres_database) == before
    assert_untouched(membrane, digest)
    assert list(tmp_path.glob("connman-migrate-rejects-*")) == []  # no files either
    out = result.stdout
    assert result.returncode == 1, result.stderr  # rows that cannot be converted
    # The types chosen, per table, with why.
    assert "tags           JSON          jsonb" in out
    assert "timestamp with time zone" in out
    assert "written  DATETIME     timestamptz       inferred" in out
    assert "pinned   BOOLEAN      boolean" in out
    # Rows already present on the target, and rows to copy.
    line = next(x for x in out.splitlines() if x.startswith("captures "))
    assert line.split() == ["captures", "201", "199", "1", "1"]
    # Each row that cannot be converted: its id and why.
    assert f"{BAD_CRYSTAL_ID!r}: created_at: text 'yesterday' is not an ISO 8601 time" in out
    assert f"{NUL_CAPTURE_ID!r}: content: text contains a NUL" in out
    assert f"{ORPHAN_ID!r}: causal_parent 'deleted-parent' is not in the source" in out
    assert "postgres" not in result.stderr or "password" not in result.stderr


async def test_dry_run_to_sqlite_creates_no_file(postgres_database: str, tmp_path: Path) -> None:
    target = tmp_path / "home" / "membrane.db"
    conn = await pg(postgres_database)
    await conn.execute("CREATE TABLE things (id INT PRIMARY KEY, seen TIMESTAMPTZ)")
    await conn.execute("INSERT INTO things VALUES (1, now())")
    await conn.close()
    result = tier_cli("migrate", postgres_database, sqlite_file_url(target), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert not target.parent.exists()


# -- execute, verify, again ----------------------------------------------------------------


async def test_execute_verify_and_again_writes_nothing(
    membrane: Membrane, postgres_database: str, tmp_path: Path
) -> None:
    digest = sha256_file(membrane.path)
    rejects = tmp_path / "rejects.jsonl"
    first = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--execute",
        "--rejects-file",
        str(rejects),
        "--batch-size",
        "64",
    )
    assert first.returncode == 1, first.stdout + first.stderr  # 3 rows rejected
    assert "3 row(s) could not be migrated" in first.stdout
    assert "safe" not in first.stdout and "rm " not in first.stdout  # keep the source
    recorded = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert {(r["table"], r["key"]) for r in recorded} == {
        ("brain_crystals", BAD_CRYSTAL_ID),
        ("captures", NUL_CAPTURE_ID),
        ("data", ORPHAN_ID),
    }
    assert all(r["reason"] for r in recorded)

    checked = tier_cli("verify", sqlite_file_url(membrane.path), postgres_database)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "verify passed" in checked.stdout

    conn = await pg(postgres_database)
    try:
        for table, rows in membrane.rows.items():
            bad = len(membrane.bad.get(table, ()))
            assert await conn.fetchval(f'SELECT count(*) FROM "{table}"') == rows - bad, table
        # Types converted as the target says.
        crystal = await conn.fetchrow("SELECT * FROM brain_crystals WHERE id = 'crystal-0002'")
        assert crystal["tags"] == "[]"
        assert crystal["created_at"] == datetime(2025, 3, 3, 12, 0, 0, 2, tzinfo=UTC)
        # '2025-03-12T12:00:00+02:00' is 10:00 UTC.
        assert crystal["updated_at"] == datetime(2025, 3, 12, 10, 0, tzinfo=UTC)
        assert json.loads(
            await conn.fetchval("SELECT tags FROM brain_crystals WHERE id = 'crystal-0001'")
        ) == ["memory", "t1", "ünïcode"]
        settings = await conn.fetchrow("SELECT * FROM brain_settings")
        assert json.loads(settings["config"]) == {"theme": "dark", "nested": {"k": [1, 2.5, None]}}
        note = await conn.fetchrow(f"SELECT * FROM {UNKNOWN_TABLE} WHERE id = 2")
        assert note["written"] == datetime(2024, 12, 2, 9, 30, tzinfo=UTC)
        assert note["pinned"] is True and note["raw"] == b"\x01"
        assert json.loads(note["extra"]) == {"tags": [1, "x"], "ok": True}
        assert await conn.fetchval(f"SELECT body FROM {UNKNOWN_TABLE} WHERE id = 1") is None
        blob = await conn.fetchval("SELECT content FROM data WHERE id = $1", BIG_BLOB_ID)
        source_blob = _sqlite_value(
            membrane.path, "SELECT content FROM data WHERE id = ?", BIG_BLOB_ID
        )
        assert len(blob) == 10 * 1024 * 1024 and blob == source_blob
        # Every causal parent exists (the foreign key holds).
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM data c LEFT JOIN data p ON p.id = c.causal_parent "
                "WHERE c.causal_parent IS NOT NULL AND p.id IS NULL"
            )
            == 0
        )
        # The indexes built after the copy, and the serial moved past the copied ids.
        indexes = {r[0] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        assert {"idx_data_parent", "idx_brain_crystals_tags", "idx_captures_captured_at"} <= indexes
        top = await conn.fetchval("SELECT max(id) FROM brain_crystal_tags")
        new = await conn.fetchval(
            "INSERT INTO brain_crystal_tags (crystal_id, tag) "
            "VALUES ('crystal-0001', 'new') RETURNING id"
        )
        assert new > top
        await conn.execute("DELETE FROM brain_crystal_tags WHERE id = $1", new)
    finally:
        await conn.close()

    again = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--execute",
        "--rejects-file",
        str(tmp_path / "again.jsonl"),
    )
    assert again.returncode == 1
    summary = table_counts(again.stdout)
    for table, rows in membrane.rows.items():
        bad = len(membrane.bad.get(table, ()))
        assert summary[table] == {
            "read": rows,
            "written": 0,
            "present": rows - bad,
            "rejected": bad,
        }
    assert_untouched(membrane, digest)


async def test_chains_already_in_parent_first_order_are_read_as_they_lie(
    tmp_path: Path, postgres_database: str
) -> None:
    """An append-only D-gent table (each parent written before its children) is read
    in rowid order, not sorted by chain depth first; a missing parent is still
    refused and every copied parent exists."""
    membrane = make_membrane(tmp_path / "membrane.db", children_first=False)
    source = sqlite_file_url(membrane.path)
    dry = tier_cli("migrate", source, postgres_database, "--dry-run", "--tables", "data")
    assert "order: parents first (causal_parent -> id; rowid order is)" in dry.stdout, dry.stdout

    done = tier_cli(
        "migrate", source, postgres_database, "--execute", "--tables", "data", cwd=tmp_path
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the orphan
    assert f"{ORPHAN_ID!r}: causal_parent 'deleted-parent' is not in the source" in done.stdout
    checked = tier_cli("verify", source, postgres_database, "--tables", "data")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    conn = await pg(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM data") == membrane.rows["data"] - 1
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM data c LEFT JOIN data p ON p.id = c.causal_parent "
                "WHERE c.causal_parent IS NOT NULL AND p.id IS NULL"
            )
            == 0
        )
    finally:
        await conn.close()


async def test_verify_reports_differences(membrane: Membrane, postgres_database: str) -> None:
    result = await migrate(
        MigrateOptions(
            source=sqlite_file_url(membrane.path),
            target=postgres_database,
            execute=True,
            tables=("captures", "field_notes"),
        )
    )
    assert result.verify_ok
    conn = await pg(postgres_database)
    await conn.execute("UPDATE captures SET content = 'changed' WHERE id = 'capture-000003'")
    await conn.execute(f"DELETE FROM {UNKNOWN_TABLE} WHERE id = 7")
    await conn.close()
    checked = tier_cli(
        "verify",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--tables",
        "captures,field_notes",
    )
    assert checked.returncode == 1
    lines = {x.split()[0]: x for x in checked.stdout.splitlines() if x[:1].isalpha()}
    assert lines["captures"].endswith("content differs")
    assert lines[UNKNOWN_TABLE].endswith("rows differ")
    assert "DIFFERENCES in 2 table(s)" in checked.stdout


def _sqlite_value(path: Path, sql: str, *args: Any) -> Any:
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


# -- killed and resumed ---------------------------------------------------------------------


async def test_killed_half_way_then_resumed(tmp_path: Path, postgres_database: str) -> None:
    import signal

    import anyio

    membrane = make_membrane(
        tmp_path / "big.db", captures=40_000, data=6_000, crystals=0, notes=0, bad_rows=False
    )
    digest = sha256_file(membrane.path)
    args = [
        "-m",
        "connman.cli",
        "migrate",
        "--from",
        sqlite_file_url(membrane.path),
        "--to",
        postgres_database,
        "--execute",
        "--batch-size",
        "500",
        "--jobs",
        "1",
        "--tables",
        "data",
        "captures",
        "--no-verify",
    ]
    # Started, not waited for: the test polls the target while it runs.
    process = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    conn = await pg(postgres_database)
    try:
        copied = 0
        with anyio.fail_after(60):
            while True:  # poll the target until part of captures is in
                exists = await conn.fetchval("SELECT to_regclass('captures') IS NOT NULL")
                copied = await conn.fetchval("SELECT count(*) FROM captures") if exists else 0
                if copied >= 2_000:
                    break
                assert process.poll() is None, "finished before it could be killed"
                await anyio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert copied < 40_000
    finally:
        await conn.close()

    resumed = run_cli(*args[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = table_counts(resumed.stdout)
    assert summary["captures"]["present"] >= copied
    assert summary["captures"]["present"] + summary["captures"]["written"] == 40_000
    assert summary["data"]["present"] + summary["data"]["written"] == 6_000
    checked = tier_cli(
        "verify",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--tables",
        "data,captures",
    )
    assert checked.returncode == 0, checked.stdout
    assert_untouched(membrane, digest)


# -- back to SQLite ------------------------------------------------------------------------


async def test_reverse_direction_round_trips(
    membrane: Membrane, postgres_database: str, tmp_path: Path
) -> None:
    digest = sha256_file(membrane.path)
    there = await migrate(
        MigrateOptions(
            source=sqlite_file_url(membrane.path), target=postgres_database, execute=True
        )
    )
    assert there.verify_ok
    # Written to PostgreSQL after the migration: the rollback must take it home.
    conn = await pg(postgres_database)
    await conn.execute(
        "INSERT INTO data (id, content, created_at, metadata) "
        "VALUES ('written-on-pg', '\\x00ff'::bytea, 1.5, '{\"a\": 1}')"
    )
    await conn.close()

    home = tmp_path / "back" / "membrane.db"
    back = tier_cli("migrate", postgres_database, sqlite_file_url(home), "--execute")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "verify passed" in back.stdout
    checked = tier_cli("verify", postgres_database, sqlite_file_url(home))
    assert checked.returncode == 0, checked.stdout

    import sqlite3

    original = sqlite3.connect(f"file:{membrane.path}?mode=ro&immutable=1", uri=True)
    copy = sqlite3.connect(home)
    try:
        for table in ("data", "captures", UNKNOWN_TABLE, "brain_crystal_tags"):
            bad = membrane.bad.get(table, set())
            a = {r for r in original.execute(f"SELECT * FROM {table}") if r[0] not in bad}
            b = set(copy.execute(f"SELECT * FROM {table}"))
            if table == "data":
                a = {(*r[:4], _json(r[4])) for r in a}
                b = {(*r[:4], _json(r[4])) for r in b}
                row = next(r for r in b if r[0] == "written-on-pg")
                assert row[1] == b"\x00\xff" and row[4] == '{"a": 1}'
                b.discard(row)
            if table == UNKNOWN_TABLE:
                a = {_note(r) for r in a}
                b = {_note(r) for r in b}
            assert a == b, table
        # The SQLAlchemy track reads back through the ORM's own format.
        created = copy.execute(
            "SELECT created_at FROM brain_crystals WHERE id = 'crystal-0001'"
        ).fetchone()[0]
        assert created == "2025-03-02 12:00:00.000001"
    finally:
        original.close()
        copy.close()
    assert_untouched(membrane, digest)


def _json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True)


def _note(row: tuple[Any, ...]) -> tuple[Any, ...]:
    ident, title, body, written, score, pinned, extra, raw = row
    moment = datetime.fromisoformat(written.replace("Z", "+00:00"))
    return (
        ident,
        title,
        body,
        moment,
        score,
        bool(pinned),
        json.dumps(json.loads(extra), sort_keys=True),
        raw,
    )


# -- errors a user will hit ------------------------------------------------------------------


def test_neither_flag_is_a_usage_error(tmp_path: Path) -> None:
    result = tier_cli(
        "migrate", sqlite_file_url(tmp_path / "x.db"), "postgresql://u@127.0.0.1:1/db"
    )
    assert result.returncode == 2
    assert "--dry-run" in result.stderr and "--execute" in result.stderr


def test_missing_source_file(tmp_path: Path) -> None:
    result = tier_cli(
        "migrate",
        sqlite_file_url(tmp_path / "nope.db"),
        "postgresql://u:secretpw@127.0.0.1:1/db",
        "--dry-run",
    )
    assert result.returncode == 3, result.stderr
    assert "no such SQLite file" in result.stderr and "secretpw" not in result.stderr


def test_unreachable_target(membrane: Membrane) -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        f"postgresql://kgents:hunter2pw@127.0.0.1:{port}/kgents",
        "--execute",
        env={"KGENTS_POOL_CONNECT_TIMEOUT": "2"},
    )
    assert result.returncode == 4, result.stderr
    assert "cannot connect to the target" in result.stderr
    assert "hunter2pw" not in result.stdout + result.stderr


async def test_wrong_password_is_not_printed(membrane: Membrane, postgres_cluster: Any) -> None:
    conn = await asyncpg.connect(postgres_cluster.dsn)
    await conn.execute("CREATE ROLE kgents LOGIN PASSWORD 'right-password'")
    await conn.execute("CREATE DATABASE kgents OWNER kgents")
    await conn.close()
    postgres_cluster.require_password()
    url = f"postgresql://kgents:wrong-password-42@127.0.0.1:{postgres_cluster.port}/kgents"
    result = tier_cli("migrate", sqlite_file_url(membrane.path), url, "--execute")
    assert result.returncode == 4, result.stderr
    # The reason and its hint come from PoolUnavailable's fields, not from its text.
    assert ": authentication (The server at 127.0.0.1:" in result.stderr
    assert "rejected kgents: fix the user or password" in result.stderr
    assert "wrong-password-42" not in result.stdout + result.stderr


async def test_incompatible_target_table(membrane: Membrane, postgres_database: str) -> None:
    conn = await pg(postgres_database)
    await conn.execute("CREATE TABLE captures (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    await conn.close()
    before = await catalogue(postgres_database)
    result = tier_cli("migrate", sqlite_file_url(membrane.path), postgres_database, "--execute")
    assert result.returncode == 5, result.stderr
    assert "table captures" in result.stderr and "lacks the column(s) content" in result.stderr
    assert "body" in result.stderr  # the NOT NULL column the source cannot fill
    assert await catalogue(postgres_database) == before  # refused before any DDL


async def test_disk_full_on_sqlite_target(
    membrane: Membrane, postgres_database: str, tmp_path: Path
) -> None:
    import resource

    there = await migrate(
        MigrateOptions(
            source=sqlite_file_url(membrane.path),
            target=postgres_database,
            execute=True,
            verify=False,
        )
    )
    assert there.rejected == 3
    home = tmp_path / "small-disk" / "membrane.db"

    def limit() -> None:  # a file-size limit: writes past 2 MB fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000 + 123, 2_000_000 + 123))

    result = tier_cli(
        "migrate",
        postgres_database,
        sqlite_file_url(home),
        "--execute",
        "--rejects-file",
        str(tmp_path / "r.jsonl"),
        preexec_fn=limit,
    )
    assert result.returncode == 6, result.stdout + result.stderr
    assert "full" in result.stderr and "run the same command again" in result.stderr
    # Space back: the same command finishes the job.
    again = tier_cli("migrate", postgres_database, sqlite_file_url(home), "--execute")
    assert again.returncode == 0, again.stdout + again.stderr


def test_memory_url_refused() -> None:
    result = tier_cli("migrate", "sqlite:///:memory:", "postgresql://u@127.0.0.1/x", "--dry-run")
    assert result.returncode == 3
    assert dataclasses.is_dataclass(MigrateOptions)


# -- a target table that exists already, with its own types ------------------------------


async def test_existing_target_types_decide(tmp_path: Path, postgres_database: str) -> None:
    source = sqlite_table(
        tmp_path / "typed.db",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, small INTEGER, ratio REAL, day TEXT, "
        "amount TEXT, seen TEXT, code TEXT, ok INTEGER)",
        [
            (1, 7, 0.1, "2025-01-02", "1.50", "2025-01-02T03:04:05+01:00", "abc", 1),
            (2, None, None, None, None, None, None, None),
            (3, 70000, 2.5, "2025-02-03", "10", "2025-02-03 00:00:00", "abcdef", 0),
            (4, -3, -1e10, "1969-12-31", "-0.001", "1970-01-01T00:00:00Z", "é", 0),
        ],
    )
    await pg_execute(
        postgres_database,
        "CREATE TABLE readings (id BIGINT PRIMARY KEY, small SMALLINT, ratio REAL, day DATE, "
        "amount NUMERIC(10, 3), seen TIMESTAMP, code VARCHAR(5), ok BOOLEAN)",
    )

    result = await migrate(
        MigrateOptions(source=sqlite_file_url(source), target=postgres_database, execute=True)
    )
    [outcome] = result.outcomes
    assert outcome.written == 3 and outcome.rejected == 1
    reasons = dict(outcome.rejects)
    assert "16-bit" in reasons[3] or "varchar(5)" in reasons[3]
    assert outcome.comparison is not None and outcome.comparison.ok, outcome.comparison
    pgconn = await pg(postgres_database)
    row = await pgconn.fetchrow("SELECT * FROM readings WHERE id = 1")
    await pgconn.close()
    assert row["seen"] == datetime(2025, 1, 2, 2, 4, 5)  # naive column: UTC digits
    assert row["day"].isoformat() == "2025-01-02" and row["ok"] is True
    assert str(row["amount"]) == "1.500"
    [again] = await verify(sqlite_file_url(source), postgres_database)
    assert again.ok and again.source.unconvertible == 1


async def test_unknown_table_name_is_an_error(membrane: Membrane, postgres_database: str) -> None:
    result = tier_cli(
        "migrate",
        sqlite_file_url(membrane.path),
        postgres_database,
        "--dry-run",
        "--tables",
        "captures,nope",
    )
    assert result.returncode == 3
    assert "no table(s) nope in the source" in result.stderr


async def test_binary_copy_of_existing_types_refusals_and_rerun(
    tmp_path: Path, postgres_database: str
) -> None:
    """The binary COPY path (no numeric column): every type arrives, a row the server
    refuses (a CHECK the source knows nothing of) is found by bisection and reported,
    bad UTF-8 is rejected before sending, and a second run writes nothing."""
    rows = [
        (1, 7, 0.1, "2025-01-02", "2025-01-02T03:04:05+01:00", "abc", 1),
        (2, None, None, None, None, None, None),
        (3, -3, -1e10, "1969-12-31", b"1970-01-01T00:00:00Z", "éèê", 0),  # a blob time
        (4, 5, 1.0, "2025-01-01", "2025-01-01", "bad", 1),  # refused by the CHECK
        (5, 6, 2.0, "2025-01-01", "2025-01-01", b"\xff\xfe", 1),  # not UTF-8
    ]
    rows += [
        (i, i % 100, i / 3, "2025-03-04", "2025-03-04 05:06:07", f"r{i}", i % 2)
        for i in range(6, 3000)
    ]
    source = sqlite_table(
        tmp_path / "binary.db",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, small INTEGER, ratio REAL, day TEXT, "
        "seen TEXT, code TEXT, ok INTEGER)",
        rows,
    )
    await pg_execute(
        postgres_database,
        "CREATE TABLE readings (id BIGINT PRIMARY KEY, small SMALLINT, ratio REAL, day DATE, "
        "seen TIMESTAMPTZ, code VARCHAR(5) CHECK (code <> 'bad'), ok BOOLEAN)",
    )
    options = MigrateOptions(
        source=sqlite_file_url(source), target=postgres_database, execute=True, batch_rows=1000
    )

    result = await migrate(options)
    [outcome] = result.outcomes
    reasons = dict(outcome.rejects)
    assert outcome.written == 2997 and outcome.rejected == 2, reasons
    assert "refused by the target" in reasons[4] and "check" in reasons[4].lower()
    assert "not UTF-8" in reasons[5]
    # The server refused a row the source side counted: verify shows that gap.
    assert outcome.comparison is not None and not outcome.comparison.ok
    pgconn = await pg(postgres_database)
    got = {r["id"]: r for r in await pgconn.fetch("SELECT * FROM readings WHERE id <= 3")}
    await pgconn.close()
    assert got[1]["seen"] == datetime(2025, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert got[3]["seen"] == datetime(1970, 1, 1, tzinfo=UTC) and got[3]["code"] == "éèê"
    assert got[2]["small"] is None and got[1]["ok"] is True and got[3]["ratio"] == -1e10

    again = await migrate(options)
    [second] = again.outcomes
    assert second.written == 0 and second.present == 2997
