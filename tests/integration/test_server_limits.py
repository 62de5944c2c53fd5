"""A server with max_connections=20, full: the pool keeps a few connects in flight,
not one per waiter; the error says the server is full and does not advise a larger
max_size; the log says it once per backoff cycle, not once per attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anyio
import asyncpg
import pytest

from connman import AcquireTimeout, ConnectionManager, PoolConfig, PoolUnavailable
from connman.testing.cluster import LocalCluster
from connman.testing.plugin import throwaway_cluster
from tests.support.helpers import captured_logs

pytestmark = pytest.mark.postgres

ROLE = "limited"
# max_connections=20 minus superuser_reserved_connections=3: 17 for ordinary roles.
SLOTS = 17


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[LocalCluster]:
    with throwaway_cluster(f"CREATE ROLE {ROLE} LOGIN", max_connections=20) as cluster:
        yield cluster


class ConnectingPeak:
    """The most connects the pool had in flight, read on every loop iteration (a
    connect attempt spans several: it cannot slip between two readings)."""

    def __init__(self, manager: ConnectionManager, url: str) -> None:
        self.manager, self.url, self.peak = manager, url, 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            for stats in self.manager.stats():
                if stats.name.endswith(f"/postgres?application_name={ROLE}"):
                    self.peak = max(self.peak, stats.connecting)
            await asyncio.sleep(0)

    def stop(self) -> None:
        self._stop.set()


async def test_a_full_server_gets_few_connects_one_log_line_per_cycle_and_the_right_hint(
    small_cluster,
):
    url = f"postgresql://{ROLE}@127.0.0.1:{small_cluster.port}/postgres?application_name={ROLE}"
    config = PoolConfig(
        min_size=0,
        max_size=10,
        acquire_timeout=1.5,
        reconnect_initial_delay=0.05,
        reconnect_max_delay=0.2,
    )
    # Every slot an ordinary role may use is taken: each connect gets "sorry, too many
    # clients already" (TooManyConnectionsError).
    blockers = [
        await asyncpg.connect(f"postgresql://{ROLE}@127.0.0.1:{small_cluster.port}/postgres")
        for _ in range(SLOTS)
    ]
    errors: list[BaseException] = []
    served = 0
    # The default pool is the superuser's (reserved slots); ours opens on demand.
    async with ConnectionManager(small_cluster.url, config=config, degrade=False) as manager:
        peak = ConnectingPeak(manager, url)

        async def lease_once(timeout: float) -> None:
            nonlocal served
            try:
                async with manager.lease("limits", url=url, timeout=timeout) as lease:
                    await lease.connection.fetchval("SELECT pg_sleep(0.005)")
                served += 1
            except (AcquireTimeout, PoolUnavailable) as exc:
                errors.append(exc)

        with captured_logs("debug") as records:
            async with anyio.create_task_group() as tg:
                tg.start_soon(peak.run)
                async with anyio.create_task_group() as waiters:
                    for _ in range(20):
                        waiters.start_soon(lease_once, 1.5)
                attempts = manager.stats()[-1].counters["connect_errors"]

                # Five slots free up: the pool gets what there is and serves everyone
                # through it, still without a burst of connects.
                for conn in blockers[:5]:
                    await conn.close()
                async with anyio.create_task_group() as waiters:
                    for _ in range(20):
                        waiters.start_soon(lease_once, 10.0)
                peak.stop()
        for conn in blockers[5:]:
            await conn.close()

    # 20 waiters on a full server: every one failed at its deadline, with the advice
    # for a full server and without the advice that makes it worse.
    assert len(errors) == 20 and served == 20, (len(errors), served)
    text = str(errors[0])
    assert "max_connections" in text and "PgBouncer" in text, text
    assert "Raise max_size" not in text, text
    assert peak.peak <= 3, f"{peak.peak} connects in flight at once"
    warned = [
        r for r in records if r["event"] == "connect_failed" and r.get("pool", "").endswith(ROLE)
    ]
    cycles = [r for r in records if r["event"] == "reconnect_scheduled"]
    # several attempts per cycle, one warning per cycle
    assert attempts >= 2 * len(warned), (attempts, len(warned))
    assert len(warned) <= len(cycles) + 1, (len(warned), len(cycles))
