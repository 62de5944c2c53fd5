"""``connman status``: the tables of each storage track with their row counts (the
protocol's "verify" step), the pools, the server's connections, and the live pools of
another running process read from its metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import threading

import asyncpg
import pytest

from connman import ConnectionManager
from connman import metrics as cm_metrics
from connman.cli import main
from connman.urls import parse_url


@pytest.fixture
def env(monkeypatch, tmp_path) -> pytest.MonkeyPatch:
    # Storage settings of the environment, not the test plugin's CONNMAN_ ones.
    for name in [k for k in os.environ if k.startswith(("KGENTS_", "XDG_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "kgents").mkdir(parents=True)
    return monkeypatch


def _status_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["status", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.postgres
def test_tracks_tables_and_row_counts_on_postgres(env, postgres_database, capsys):
    async def fill() -> None:
        conn = await asyncpg.connect(parse_url(postgres_database).connect_dsn())
        try:
            await conn.execute("CREATE TABLE data (id text PRIMARY KEY)")
            await conn.executemany("INSERT INTO data VALUES ($1)", [("a",), ("b",), ("c",)])
            await conn.execute("CREATE TABLE brain_crystals (id int PRIMARY KEY)")
            await conn.execute("INSERT INTO brain_crystals VALUES (1), (2)")
        finally:
            await conn.close()

    asyncio.run(fill())
    env.setenv("KGENTS_DATABASE_URL", postgres_database)
    report = _status_json(capsys)
    assert report["answers"] is True
    redacted = parse_url(postgres_database).redacted()
    assert report["tracks"] == {
        "dgent": {"database": redacted, "tables": {"data": 3}, "error": None, "note": None},
        "brain": {
            "database": redacted,
            "tables": {"captures": None},
            "error": None,
            "note": None,
        },
        "sqlalchemy": {
            "database": redacted,
            "tables": {"brain_crystals": 2, "brain_crystal_tags": None, "brain_settings": None},
            "error": None,
            "note": None,
        },
    }
    assert report["exit_code"] == 0 and report["got"] == report["wanted"]
    (pool,) = report["pools"]
    assert pool["pool"] == redacted and pool["dialect"] == "postgresql"
    assert pool["in_use"] == 0 and pool["waiting"] == 0 and pool["size"] >= 1
    apps = {c["application_name"] for c in report["server_connections"]}
    assert "connman" in apps

    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "tracks (tables: rows)" in text
    assert "data 3" in text and "captures missing" in text and "brain_crystals 2" in text
    assert "server connections to this database" in text


def test_live_pools_of_another_process_from_its_metrics(env, tmp_path, capsys):
    """A manager on another event loop (standing in for the application) serves its
    metrics; status reads its pools and consumers from there."""
    env.setenv("KGENTS_DGENT_BACKEND", "MEMORY")
    # status writes nothing: the file must exist for it to answer
    sqlite3.connect(tmp_path / "xdg" / "kgents" / "membrane.db").close()
    registry_metrics = cm_metrics.Metrics(None)
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(registry_metrics)
    registry_metrics.registry = registry
    app = ConnectionManager(f"sqlite+aiosqlite:///{tmp_path}/app.db")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_app(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(10)

    server = None
    try:
        on_app(app.start())
        held = [on_app(app.acquire("brain")), on_app(app.acquire("brain"))]
        held.append(on_app(app.acquire("dgent")))
        server = cm_metrics.serve_metrics(app, port=0, metrics=registry_metrics)

        report = _status_json(capsys, "--metrics", server.url)
        assert report["tier"] == "portable"
        assert report["tracks"]["dgent"]["error"] is None
        assert report["tracks"]["dgent"]["note"].startswith("in-memory")
        assert report["tracks"]["brain"]["tables"] == {"captures": None}
        live = report["live"]
        assert live["error"] is None
        (pool,) = live["pools"]
        assert pool["pool"] == app.stats()[0].name
        assert pool["in_use"] == 3 and pool["up"] is True and pool["max_size"] == 10
        assert pool["consumers"] == {"brain": 2, "dgent": 1}

        assert main(["status", "--metrics", server.url]) == 0
        text = capsys.readouterr().out
        assert f"live pools from {server.url}" in text
        assert "brain: 2 in use" in text and "dgent: 1 in use" in text

        for lease in held:
            on_app(lease.release())
    finally:
        if server is not None:
            server.close()
        on_app(app.aclose())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    # nothing listens there any more: status says so and still exits 0 (the database
    # answers), with the error in the report
    report = _status_json(capsys, "--metrics", server.url)
    assert report["live"]["pools"] == [] and "cannot read" in report["live"]["error"]


# -- what status answers, and that it writes nothing ---------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("where", ["typo/dir/membrane.db", "/etc/passwd/x.db"])
def test_status_on_a_mistyped_sqlite_path_writes_nothing(env, tmp_path, capsys, where):
    path = where if where.startswith("/") else f"{tmp_path}/{where}"
    env.setenv("KGENTS_DATABASE_URL", f"sqlite:///{path}")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, text = _run(capsys)
    assert code == 1, text
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no directory, no file
    assert not (tmp_path / "typo").exists()
    lines = text.splitlines()
    assert lines[0].startswith("wanted") and f"sqlite+aiosqlite:///{path}" in lines[0]
    assert lines[1].startswith("got") and "NOTHING" in lines[1] and "does not exist" in text
    # SQLite advice, not the PostgreSQL one
    assert "SQLite file" in text and "docker compose" not in text


def test_status_with_the_dgent_backend_in_memory_reports_no_error(env, tmp_path, capsys):
    database = tmp_path / "m.db"
    sqlite3.connect(database).close()
    env.setenv("KGENTS_DATABASE_URL", f"sqlite:///{database}")
    env.setenv("KGENTS_DGENT_BACKEND", "MEMORY")
    code, text = _run(capsys)
    assert code == 0, text
    assert "ERROR" not in text
    (dgent,) = [line for line in text.splitlines() if line.strip().startswith("dgent ")]
    assert "in-memory (KGENTS_DGENT_BACKEND=MEMORY)" in dgent


def test_status_degraded_exits_3_and_labels_counts_with_the_fallback(env, tmp_path, capsys):
    """PostgreSQL unreachable, the portable file holds data: status says what it
    wanted and what it got first, exits 3, and the counts name the file they came from."""
    portable = tmp_path / "xdg" / "kgents" / "membrane.db"
    conn = sqlite3.connect(portable)
    conn.execute("CREATE TABLE data (id TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO data VALUES (?)", [("a",), ("b",)])
    conn.commit()
    conn.close()
    wanted = f"postgresql://u:Degraded-Pw-9@127.0.0.1:{_closed_port()}/db"
    env.setenv("KGENTS_DATABASE_URL", wanted)
    env.setenv("KGENTS_POOL_CONNECT_TIMEOUT", "2")
    files = sorted(p.name for p in portable.parent.iterdir())

    code, text = _run(capsys)
    assert code == 3, text
    lines = text.splitlines()
    assert lines[0].startswith("wanted") and "postgresql+asyncpg://u:***@127.0.0.1" in lines[0]
    assert lines[1].startswith("got") and f"sqlite+aiosqlite:///{portable}" in lines[1]
    assert lines[2].startswith("DEGRADED") and "ConnectionRefusedError" in lines[2]
    (dgent,) = [line for line in lines if line.strip().startswith("dgent ")]
    assert "data 2" in dgent and dgent.endswith(f"[sqlite+aiosqlite:///{portable}]")
    assert "Degraded-Pw-9" not in text

    capsys.readouterr()
    code = main(["status", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 3 and report["exit_code"] == 3 and report["degraded"] is True
    assert report["got"]["tier"] == "portable" and report["wanted"]["tier"] == "unified"
    assert report["tracks"]["dgent"]["tables"] == {"data": 2}
    assert sorted(p.name for p in portable.parent.iterdir()) == files  # read-only


def test_status_strict_and_unreachable_exits_1(env, capsys):
    env.setenv("KGENTS_DATABASE_URL", f"postgresql://u@127.0.0.1:{_closed_port()}/db")
    env.setenv("KGENTS_STORAGE_STRICT", "1")
    code, text = _run(capsys)
    assert code == 1, text
    assert "got     NOTHING" in text and "KGENTS_STORAGE_STRICT" in text


def test_status_configuration_error_exits_2(env, capsys):
    env.setenv("KGENTS_DATABASE_URL", "postgresql://u:Conf-Pw-1/x@127.0.0.1:1/db")
    code, text = _run(capsys)
    assert code == 2, text
    assert "Conf-Pw-1" not in text and "u:***@127.0.0.1:1/db" in text
