"""``connman status``: the tables of each storage track with their row counts (the
protocol's "verify" step), the pools, the server's connections, and the live pools of
another running process read from its metrics endpoint."""

from __future__ import annotations

import asyncio
import json
import threading

import asyncpg
import pytest

from connman import ConnectionManager
from connman import metrics as cm_metrics
from connman.cli import main
from connman.urls import parse_url

_ENV = (
    "KGENTS_DATABASE_URL",
    "KGENTS_POSTGRES_URL",
    "KGENTS_STORAGE_TIER",
    "KGENTS_STORAGE_STRICT",
    "KGENTS_UNIFIED_URL",
    "KGENTS_DGENT_BACKEND",
    "XDG_DATA_HOME",
)


@pytest.fixture
def env(monkeypatch, tmp_path) -> pytest.MonkeyPatch:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
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
        "dgent": {"database": redacted, "tables": {"data": 3}, "error": None},
        "brain": {"database": redacted, "tables": {"captures": None}, "error": None},
        "sqlalchemy": {
            "database": redacted,
            "tables": {"brain_crystals": 2, "brain_crystal_tags": None, "brain_settings": None},
            "error": None,
        },
    }
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
        assert report["tracks"]["dgent"]["error"].startswith("in-memory database")
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
