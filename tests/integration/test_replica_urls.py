"""Multi-host replica URLs on a real primary with a streaming standby (loopback,
throwaway clusters): ``KGENTS_DATABASE_REPLICA_URLS`` keeps a multi-host URL whole, and
a replica pool on several hosts lands on the standby (``prefer-standby``), while the
default pool on the same hosts lands on the primary (``read-write``)."""

from __future__ import annotations

import pytest

from connman import ConnectionManager, ReplicaPolicy, resolve_storage
from tests.faults.test_replicas import replicated, where

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
