"""What every benchmark here shares: the database it runs against.

``--url``, else ``$CONNMAN_BENCH_URL``, else a throwaway cluster from the local
PostgreSQL binaries (:class:`connman.testing.cluster.LocalCluster`), so results never
depend on a shared server. Only loopback targets: benchmarks are load.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import connman


@dataclass(frozen=True)
class BenchDatabase:
    dsn: str
    """libpq form (``postgresql://``), for asyncpg, psycopg and pgloader."""
    url: str
    """connman form (``postgresql+asyncpg://``)."""
    source: str
    """Where it came from: ``given URL`` or ``throwaway LocalCluster``."""


@contextmanager
def bench_database(url: str | None) -> Iterator[BenchDatabase]:
    """The database a benchmark runs against (see the module docstring)."""
    url = url or os.environ.get("CONNMAN_BENCH_URL")
    if url:
        parsed = connman.parse_url(url, source="--url")
        if parsed.dialect != "postgresql":
            raise SystemExit(f"not a PostgreSQL URL: {parsed.redacted()}")
        if not parsed.is_local:
            raise SystemExit(f"refusing to benchmark {parsed.redacted()}: loopback targets only")
        yield BenchDatabase(parsed.connect_dsn(), parsed.key, "given URL")
        return
    from connman.testing.cluster import LocalCluster

    with LocalCluster() as cluster:
        yield BenchDatabase(cluster.dsn, cluster.url, "throwaway LocalCluster")
