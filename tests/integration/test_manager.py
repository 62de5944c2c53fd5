"""The manager: degradation along the tiers, strict mode, fail-fast errors, the
process-wide instance."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import anyio
import pytest

import connman
from connman import (
    ConnectionManager,
    ConnmanError,
    PoolConfig,
    PoolUnavailable,
    Tier,
    resolve_storage,
)
from tests.support.helpers import captured_logs
from tests.support.pg_access import admin_execute, create_role, drop_role, with_role


def closed_port() -> int:
    """A loopback port with nobody listening (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_DATA_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home"), **extra}


async def test_production_degrades_to_unified_when_unreachable(
    tmp_path: Path, postgres_url: str
) -> None:
    env = env_for(
        tmp_path,
        KGENTS_DATABASE_URL=f"postgresql://kgents:hunter2hunter2@127.0.0.1:{closed_port()}/kgents",
        KGENTS_STORAGE_TIER="production",
        KGENTS_UNIFIED_URL=postgres_url,
    )
    storage = resolve_storage(env)
    assert storage.tier is Tier.PRODUCTION
    with captured_logs("warning") as records:
        async with ConnectionManager(storage, config=PoolConfig(connect_timeout=2)) as manager:
            assert manager.degraded
            [stats] = manager.stats()
            async with manager.lease("dgent") as lease:
                assert lease.dialect == "postgresql"
    assert stats.degraded and stats.tier == "unified"
    assert stats.requested_url is not None and "127.0.0.1" in stats.requested_url
    degraded = next(r for r in records if r["event"] == "storage_degraded")
    assert degraded["wanted_tier"] == "production" and degraded["got_tier"] == "unified"
    assert "hunter2hunter2" not in repr(records) + repr(stats)


async def test_degradation_reaches_the_portable_file(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        KGENTS_DATABASE_URL=f"postgresql://kgents@127.0.0.1:{closed_port()}/kgents",
        KGENTS_STORAGE_TIER="production",
        KGENTS_UNIFIED_URL=f"postgresql://kgents@127.0.0.1:{closed_port()}/kgents",
    )
    async with ConnectionManager(resolve_storage(env)) as manager:
        [stats] = manager.stats()
        assert stats.dialect == "sqlite" and stats.tier == "portable" and stats.degraded
        async with manager.lease("brain") as lease:
            await lease.connection.execute("CREATE TABLE t (x)")
    assert (tmp_path / "xdg" / "kgents" / "membrane.db").exists()


async def test_strict_mode_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        KGENTS_DATABASE_URL=f"postgresql://kgents:pw-in-url-123@127.0.0.1:{closed_port()}/kgents",
        KGENTS_STORAGE_STRICT="1",
    )
    manager = ConnectionManager(resolve_storage(env), config=PoolConfig(connect_timeout=2))
    started = time.monotonic()
    with pytest.raises(PoolUnavailable) as caught:
        await manager.start()
    assert time.monotonic() - started < 2.5
    assert "KGENTS_STORAGE_STRICT" in str(caught.value)
    assert "pw-in-url-123" not in str(caught.value)
    assert not (tmp_path / "xdg").exists()


async def test_degrade_false_is_strict_too(tmp_path: Path) -> None:
    env = env_for(tmp_path, KGENTS_DATABASE_URL=f"postgresql://k@127.0.0.1:{closed_port()}/k")
    with pytest.raises(PoolUnavailable):
        await ConnectionManager(resolve_storage(env), degrade=False).start()


@pytest.mark.postgres
async def test_missing_database_fails_waiters_at_once(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/no_such_database_here"
    manager = ConnectionManager(url, degrade=False)
    with pytest.raises(PoolUnavailable, match="no_such_database_here"):
        await manager.start()
    # A pool created lazily by lease(url=...) fails its first waiter fast, too.
    async with ConnectionManager(postgres_url, degrade=False) as other:
        started = time.monotonic()
        with pytest.raises(PoolUnavailable, match="does not exist"):
            async with other.lease("brain", url=url, timeout=20):
                pass
        assert time.monotonic() - started < 5


async def test_get_manager_is_one_instance_per_process_and_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KGENTS_DATABASE_URL", f"sqlite:///{tmp_path}/m.db")
    first = connman.get_manager()
    assert connman.get_manager() is first
    async with first.lease("dgent") as lease:  # started by its first lease
        assert lease.dialect == "sqlite"
    assert first.stats()[0].url.endswith("/m.db")

    def other_loop() -> None:
        async def use() -> None:
            with pytest.raises(ConnmanError, match="another event loop"):
                async with first.lease("dgent"):
                    pass
            # A fresh asyncio.run gets its own manager once this loop closed.

        asyncio.run(use())

    await anyio.to_thread.run_sync(other_loop)
    await first.aclose()
    assert connman.get_manager() is not first


@pytest.mark.postgres
async def test_pools_differing_only_in_password_keep_apart_names(postgres_database: str) -> None:
    # A role of the test's own whose password rotates between the two leases, so that
    # both URLs log in on a server that checks passwords as on one that trusts.
    role = await create_role(postgres_database, "first-secret")
    try:
        async with ConnectionManager(postgres_database, degrade=False) as manager:
            for pw in ("first-secret", "second-secret"):
                await admin_execute(postgres_database, f"ALTER ROLE {role} PASSWORD '{pw}'")
                async with manager.lease("t", url=with_role(postgres_database, role, pw)):
                    pass
            names = [s.name for s in manager.stats()]
    finally:
        await drop_role(postgres_database, role)
    assert len(names) == len(set(names)) == 3
    assert not any("secret" in name for name in names)


async def test_an_unreachable_store_s_error_carries_its_parts_as_fields() -> None:
    # Code that words its own message (connman migrate) reads these; it never
    # parses the text.
    url = f"postgresql://k:pw-in-url-456@127.0.0.1:{closed_port()}/k"
    manager = ConnectionManager(url, degrade=False, config=PoolConfig(connect_timeout=2))
    with pytest.raises(PoolUnavailable) as caught:
        await manager.start()
    exc = caught.value
    assert exc.reason is connman.UnavailableReason.UNREACHABLE and exc.unreachable
    assert exc.host == f"127.0.0.1:{connman.parse_url(url).port}"
    assert exc.hint is not None and exc.hint in str(exc)
    parts = (exc.reason.value, exc.hint, exc.host, str(exc))
    assert not any("pw-in-url-456" in (part or "") for part in parts)
