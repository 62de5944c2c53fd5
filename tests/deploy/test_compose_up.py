"""docker-compose.yml brought up for real: PostgreSQL, the test PostgreSQL, PgBouncer
(transaction mode) and Prometheus, with `connman demo` running on the host, asserted
through the real servers; `down -v` leaves nothing behind.

Grafana is not started: Debian has no Grafana server to build its image from, and no
registry answers here (its dashboard is checked in test_grafana.py). The host ports
are moved to free ones (the compose file's CONNMAN_*_PORT knobs), so a PostgreSQL
already on 5432 is not disturbed; the Prometheus configuration is deploy/prometheus
with only the two scrape targets' ports moved likewise (CONNMAN_PROMETHEUS_CONFIG).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from connman.metrics import DEFAULT_PORT
from connman.testing.cluster import free_port
from connman.testing.containers import (
    COMPOSE_PROJECT_LABEL,
    DockerUnavailable,
    compose_project,
    docker_engine,
    reap_leftovers,
    remove_compose_project,
)
from connman.testing.plugin import docker_unavailable

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICES = ("postgres", "postgres-test", "pgbouncer", "prometheus")
CONSUMERS = {"sqlalchemy", "dgent", "brain"}
ALERTS = {
    rule["alert"]
    for path in (ROOT / "deploy" / "prometheus" / "rules").glob("*.yml")
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
    if "alert" in rule
}
# What the test asserted on, printed for the record (pytest -s or the failure report).
QUERY = 'max by (consumer) (last_over_time(connman_pool_use_time_seconds_count{job="connman"}[5m]))'


@dataclass
class Stack:
    """The running project: its ports on 127.0.0.1 and how to run compose on it."""

    project: str
    command: list[str]
    env: dict[str, str]
    ports: dict[str, int]
    demo_port: int

    def compose(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            [*self.command, *args], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stderr}"
        return result.stdout

    def prometheus(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.ports['CONNMAN_PROMETHEUS_PORT']}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)


def _images(services: tuple[str, ...]) -> list[str]:
    spec = yaml.safe_load(COMPOSE.read_text())["services"]
    return [spec[name]["image"] for name in services]


def _project_resources(client: Any, project: str) -> list[str]:
    selector = {"label": f"{COMPOSE_PROJECT_LABEL}={project}"}
    return (
        [f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
        + [f"volume {v.name}" for v in client.volumes.list(filters=selector)]
        + [f"network {n.name}" for n in client.networks.list(filters=selector)]
    )


def _prometheus_config(target: Path, demo_port: int, prometheus_port: int) -> Path:
    """deploy/prometheus with the two scrape targets moved to the test's ports."""
    shutil.copytree(ROOT / "deploy" / "prometheus", target)
    config = target / "prometheus.yml"
    text = config.read_text()
    for old, new in ((f"127.0.0.1:{DEFAULT_PORT}", demo_port), ("127.0.0.1:9090", prometheus_port)):
        assert text.count(f'"{old}"') == 1, f"expected one target {old} in prometheus.yml"
        text = text.replace(f'"{old}"', f'"127.0.0.1:{new}"')
    config.write_text(text)
    # Prometheus runs as nobody: the copy must be readable (tmp_path is 0700).
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    target.parent.chmod(0o755)
    return target


@pytest.fixture
def stack(compose_cli: list[str], tmp_path: Path) -> Iterator[Stack]:
    """The four services up (never pulled: a missing image skips, or fails under
    CONNMAN_REQUIRE_DOCKER=1); afterwards `down -v`, and whatever it left is removed."""
    try:
        client = docker_engine()
    except DockerUnavailable as exc:
        docker_unavailable(str(exc))
    try:
        reap_leftovers(client)
        for image in _images(SERVICES):
            try:
                client.images.get(image)
            except Exception:
                docker_unavailable(f"the image {image} is not present (deploy/images/build)")
        knobs = ("CONNMAN_PG_PORT", "CONNMAN_PG_TEST_PORT", "CONNMAN_PGBOUNCER_PORT")
        ports = {name: free_port() for name in (*knobs, "CONNMAN_PROMETHEUS_PORT")}
        demo_port = free_port()
        config = _prometheus_config(
            tmp_path / "config" / "prometheus", demo_port, ports["CONNMAN_PROMETHEUS_PORT"]
        )
        env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
        env["CONNMAN_PROMETHEUS_CONFIG"] = str(config)
        project = compose_project()
        running = Stack(
            project=project,
            command=[*compose_cli, "-p", project, "-f", str(COMPOSE)],
            env=env,
            ports=ports,
            demo_port=demo_port,
        )
        try:
            running.compose("up", "-d", *SERVICES)
            yield running
        finally:
            subprocess.run(
                [*running.command, "down", "-v", "--remove-orphans"], env=env,
                capture_output=True, timeout=300, check=False, cwd=ROOT,
            )  # fmt: skip
            # A failed `down` must not leave anything either.
            remove_compose_project(client, project)
    finally:
        client.close()


def _wait(check: Any, *, timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns a truthy value (a condition with a deadline)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # not up yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)  # polling cadence, not synchronisation
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _demo(url: str, *extra: str, seconds: float, **env: str) -> subprocess.Popen[str]:
    connman = Path(sys.executable).parent / "connman"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KGENTS_")}
    return subprocess.Popen(
        [str(connman), "demo", "--seconds", str(seconds), *extra],
        env={**clean, "KGENTS_DATABASE_URL": url, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _fetch(dsn: str, sql: str) -> list[Any]:
    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def _healthy(client: Any, project: str, service: str) -> bool:
    selector = {
        "label": [f"{COMPOSE_PROJECT_LABEL}={project}", f"com.docker.compose.service={service}"]
    }
    [container] = client.containers.list(all=True, filters=selector)
    return bool(container.attrs["State"].get("Health", {}).get("Status") == "healthy")


def test_compose_up_for_real(stack: Stack) -> None:
    ports = stack.ports
    direct = f"postgresql+asyncpg://kgents:kgents@127.0.0.1:{ports['CONNMAN_PG_PORT']}/kgents"
    bounced = (
        f"postgresql+asyncpg://kgents:kgents@127.0.0.1:{ports['CONNMAN_PGBOUNCER_PORT']}/kgents"
    )
    client = docker_engine()
    try:
        for service in ("postgres", "postgres-test"):
            _wait(lambda s=service: _healthy(client, stack.project, s), timeout=120, what=service)
        _wait(
            lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{ports['CONNMAN_PROMETHEUS_PORT']}/-/ready", timeout=5
            ).status == 200,
            timeout=120,
            what="Prometheus ready",
        )  # fmt: skip

        # The test PostgreSQL: the connman/connman/connman database, durability off.
        test_dsn = f"postgresql://connman:connman@127.0.0.1:{ports['CONNMAN_PG_TEST_PORT']}/connman"
        [row] = _fetch(test_dsn, "SELECT current_setting('fsync') AS fsync, version() AS v")
        assert row["fsync"] == "off" and row["v"].startswith("PostgreSQL 15"), dict(row)

        # The demo through PgBouncer (statement cache off, as deploy/pgbouncer/pgbouncer.ini
        # says), then directly, serving its metrics for Prometheus. One after the other:
        # a demo's clean-up removes every demo- row, another running demo's too.
        on_pgbouncer = _demo(
            bounced, "--metrics-port", "-1", seconds=5, KGENTS_POOL_STATEMENT_CACHE_SIZE="0"
        )
        out_bounced, _ = on_pgbouncer.communicate(timeout=180)
        assert on_pgbouncer.returncode == 0, out_bounced
        on_postgres = _demo(direct, "--metrics-port", str(stack.demo_port), seconds=20)
        out_direct, _ = on_postgres.communicate(timeout=180)
        assert on_postgres.returncode == 0, out_direct
        assert f"127.0.0.1:{ports['CONNMAN_PGBOUNCER_PORT']}/kgents" in out_bounced
        assert f"metrics: http://127.0.0.1:{stack.demo_port}/metrics" in out_direct

        # PgBouncer really was in the path: PostgreSQL sees its server connections,
        # from the pgbouncer container's address.
        [bouncer] = client.containers.list(
            filters={
                "label": [
                    f"{COMPOSE_PROJECT_LABEL}={stack.project}",
                    "com.docker.compose.service=pgbouncer",
                ]
            }
        )
        networks = bouncer.attrs["NetworkSettings"]["Networks"]
        bouncer_ips = {n["IPAddress"] for n in networks.values()}
        servers = _fetch(
            direct.replace("postgresql+asyncpg", "postgresql"),
            "SELECT host(client_addr) AS addr FROM pg_stat_activity "
            "WHERE datname = 'kgents' AND backend_type = 'client backend'",
        )
        assert {r["addr"] for r in servers} & bouncer_ips, (servers, bouncer_ips)
    finally:
        client.close()

    # Prometheus scraped the demo: connman_ series for the demo's three consumers.
    def consumers() -> dict[str, float] | None:
        body = stack.prometheus("/api/v1/query", query=QUERY)
        found = {r["metric"].get("consumer"): float(r["value"][1]) for r in body["data"]["result"]}
        return found if set(found) >= CONSUMERS else None

    found = _wait(consumers, timeout=60, what="connman_ series of the demo's consumers")
    print(f"\nPrometheus {QUERY}\n  -> {found}")
    assert all(found[c] > 0 for c in CONSUMERS), found
    up = stack.prometheus("/api/v1/query", query='up{job="connman",app="kgents"}')
    assert up["data"]["result"], up

    # The alert rules are loaded, and evaluate without error.
    rules = stack.prometheus("/api/v1/rules", type="alert")
    loaded = {r["name"]: r for g in rules["data"]["groups"] for r in g["rules"]}
    assert set(loaded) == ALERTS, set(loaded)
    _wait(
        lambda: all(
            r["health"] == "ok"
            for g in stack.prometheus("/api/v1/rules", type="alert")["data"]["groups"]
            for r in g["rules"]
        ),
        timeout=60,
        what="every alert rule evaluated with health ok",
    )

    # down -v: no container, volume or network of the project left.
    client = docker_engine()
    try:
        mounted = {
            m["Name"]
            for c in client.containers.list(
                all=True, filters={"label": f"{COMPOSE_PROJECT_LABEL}={stack.project}"}
            )
            for m in c.attrs["Mounts"]
            if m["Type"] == "volume"
        }
        assert mounted, "expected the project's volumes"
        stack.compose("down", "-v")
        assert _project_resources(client, stack.project) == []
        assert {v.name for v in client.volumes.list()} & mounted == set()
    finally:
        client.close()
