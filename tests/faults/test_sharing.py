"""One pool per database: every consumer, whatever spelling of the URL it uses, shares
one set of at most max_size server connections (the reason connman exists: nine pools
and 60+ connections for one process in today's kgents)."""

from __future__ import annotations

import asyncio
from collections import Counter

import anyio
import pytest

from connman import parse_url
from tests.support.faultkit import PeakMonitor, app_name, counters, wait_until
from tests.support.pg_access import userinfo

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

MAX_SIZE = 10


def _spellings(url: str) -> list[str]:
    """Three ways kgents code writes the same database URL."""
    u = parse_url(url)
    auth = userinfo(u)  # user, and the password when the server wants one
    return [
        f"postgresql+asyncpg://{auth}{u.host}:{u.port}/{u.database}",
        f"postgres://{auth}{u.host}:{u.port}/{u.database}",
        f"postgresql+psycopg://{auth}{u.host.upper()}/{u.database}?port={u.port}",
    ]


async def test_three_consumers_share_max_size_connections(postgres_database, make_manager):
    """3 consumers x 16 tasks, each consumer with its own spelling of the URL, on
    max_size=10: all 48 tasks finish, one pool serves them all, and the server never
    sees more than 10 connections of ours."""
    app = app_name("share")
    manager = await make_manager(
        postgres_database, application_name=app, min_size=1, max_size=MAX_SIZE
    )
    spellings = _spellings(postgres_database)
    consumers = ("sqlalchemy", "dgent", "brain")
    done: Counter[str] = Counter()

    async def task(consumer: str, url: str, i: int) -> None:
        for round_ in range(8):
            async with manager.lease(consumer, url=url, timeout=20) as lease:
                value = await lease.connection.fetchval(
                    "SELECT $1::int FROM pg_sleep(0.004)", i * 100 + round_
                )
                assert value == i * 100 + round_
        done[consumer] += 1

    async with PeakMonitor(postgres_database, app) as monitor:
        with anyio.fail_after(60):
            await asyncio.gather(
                *(
                    task(consumer, url, i)
                    for consumer, url in zip(consumers, spellings, strict=True)
                    for i in range(16)
                )
            )
            # Let the monitor see the pool at rest too.
            await wait_until(lambda: monitor.samples > 20, timeout=5, what="monitor samples")

    assert done == dict.fromkeys(consumers, 16)
    stats = manager.stats()
    assert len(stats) == 1, [s.url for s in stats]  # every spelling reached one pool
    assert stats[0].in_use == 0
    assert stats[0].waiting == 0
    assert stats[0].size <= MAX_SIZE
    assert counters(manager)["acquired"] >= 3 * 16 * 8
    assert counters(manager)["connections_opened"] <= MAX_SIZE  # none churned
    assert monitor.samples > 20
    assert 1 < monitor.peak <= MAX_SIZE, f"the server saw {monitor.peak} connections of ours"
