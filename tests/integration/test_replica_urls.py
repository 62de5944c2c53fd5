"""Multi-host replica URLs on a real primary with a streaming standby (loopback,
throwaway clusters): ``KGENTS_DATABASE_REPLICA_URLS`` keeps a multi-host URL whole, and
a replica pool on several hosts lands on the standby (``prefer-standby``), while the
default pool on the same hosts lands on the primary (``read-write``)."""

from __future__ import annotations

import anyio
import pytest

from connman import ConnectionManager, PoolConfig, ReplicaPolicy, resolve_storage
from tests.faults.test_replicas import in_rotation, replica_stats, replicated, where
from tests.support.faultkit import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]
__all__ = ["replicated"]  # the fixture: a primary and a started streaming standby


async def test_a_multi_host_replica_url_reads_from_the_standby(replicated) -> None:
    """The primary listed first in both URLs: the writable default would read from the
    primary; the replica's prefer-standby reads from the standby. A second multi-host
    URL after a comma is a replica of its own, not extra hosts of the first."""
    primary, standby = replicated
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    both = f"postgresql://postgres@{hosts}/postgres"
    reversed_ = f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
    storage = resolve_storage(
        {
            "KGENTS_DATABASE_URL": both,
            "KGENTS_DATABASE_REPLICA_URLS": f"{both},{reversed_}",
        }
    )
    manager = ConnectionManager(
        storage, replica_policy=ReplicaPolicy(check_interval=0.1), degrade=False
    )
    async with manager:
        assert len(manager.replicas) == 2
        assert await where(manager, readonly=False) == (primary.port, False)
        for _ in range(4):
            assert await where(manager, readonly=True) == (standby.port, True)
        roles = sorted(
            (st.role, bool(st.replica and st.replica.in_rotation)) for st in manager.stats()
        )
        assert roles == [("primary", False), ("replica", True), ("replica", True)]


async def test_a_multi_host_replica_pool_finds_the_standby_again(replicated) -> None:
    """While the standby is down, prefer-standby connects the replica pool to the
    primary (out of rotation: reads on the primary). Once the standby is back, the
    check closes the connection it found on the primary, the pool reconnects to the
    standby, every connection opened meanwhile is replaced, and reads go there again,
    well before any connection lifetime ends."""
    primary, standby = replicated
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    both = f"postgresql://postgres@{hosts}/postgres"
    manager = ConnectionManager(
        both,
        replicas=[both],
        config=PoolConfig(min_size=3),
        replica_policy=ReplicaPolicy(check_interval=0.1, check_timeout=2.0),
        degrade=False,
    )
    async with manager:
        assert await where(manager, readonly=True) == (standby.port, True)

        await anyio.to_thread.run_sync(standby.stop)
        await wait_until(
            lambda: not in_rotation(manager), what="the replica pool left the rotation"
        )
        # The pool reconnects, to the primary (no standby answers): still out.
        await wait_until(
            lambda: (
                (status := replica_stats(manager).replica) is not None
                and status.reason is not None
                and "not in recovery" in status.reason
            ),
            what="the replica pool on the primary",
        )
        assert await where(manager, readonly=True) == (primary.port, False)

        await anyio.to_thread.run_sync(standby.start)
        await wait_until(lambda: in_rotation(manager), what="the replica pool back on the standby")
        # Every connection of the pool, not only the one the check took: three read
        # leases at once (min_size 3) all on the standby.
        leases = [await manager.acquire("app", readonly=True) for _ in range(3)]
        try:
            ports = {
                await lease.connection.fetchval("SELECT inet_server_port()") for lease in leases
            }
        finally:
            for lease in leases:
                await lease.release()
        assert ports == {standby.port}


async def _backend(manager: ConnectionManager, *, readonly: bool) -> int:
    async with manager.lease("app", readonly=readonly) as lease:
        return int(await lease.connection.fetchval("SELECT pg_backend_pid()"))


async def test_expire_connections_by_url_reaches_its_replica_pool(replicated) -> None:
    """After a credential rotation, ``expire_connections(url=...)`` with the URL the
    replicas were configured with replaces the replica pool's connections too, although
    that pool connects with ``prefer-standby`` added to the URL."""
    primary, standby = replicated
    both = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
    manager = ConnectionManager(
        both,
        replicas=[both],
        # One check at start only: no check holds a replica connection meanwhile.
        replica_policy=ReplicaPolicy(check_interval=3600),
        degrade=False,
    )
    async with manager:
        before = {ro: await _backend(manager, readonly=ro) for ro in (False, True)}
        assert before == {ro: await _backend(manager, readonly=ro) for ro in (False, True)}
        await manager.expire_connections(url=both)
        after = {ro: await _backend(manager, readonly=ro) for ro in (False, True)}
        assert after[False] != before[False], "the default pool kept its connection"
        assert after[True] != before[True], "the replica pool kept its connection"
