"""docker-compose.yml, read with a real YAML parser and checked against the parts of
the Compose specification it uses (the spec's JSON schema is not fetchable here and
not vendored, so: structural assertions), and against the files it mounts.
``docker compose config`` runs too when a compose CLI is installed, and
``test_compose_up_for_real`` (in tests/deploy/test_compose_up.py) brings it up."""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"

TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports",
    "volumes", "tmpfs", "depends_on", "healthcheck", "restart", "network_mode",
    "networks", "user", "working_dir", "labels", "extra_hosts", "profiles",
    "container_name", "shm_size", "ulimits", "stop_grace_period", "logging",
}  # fmt: skip
PORT = re.compile(r"^127\.0\.0\.1:(\d+):(\d+)$")
DURATION = re.compile(r"^\d+(ms|s|m|h)$")
# ${NAME:-default}: the only interpolation the file uses (checked below).
VARIABLE = re.compile(r"\$\{([A-Z_]+):-([^}]*)\}")
KNOBS = {
    "CONNMAN_PG_PORT": "5432",
    "CONNMAN_PG_TEST_PORT": "5433",
    "CONNMAN_PGBOUNCER_PORT": "6432",
    "CONNMAN_PROMETHEUS_PORT": "9090",
    "CONNMAN_GRAFANA_PORT": "3000",
    "CONNMAN_PROMETHEUS_CONFIG": "./deploy/prometheus",
    "GRAFANA_ADMIN_PASSWORD": "admin",
}


def _defaults(value: object) -> object:
    """The file as compose reads it with none of the variables set."""
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: m[2], value)
    if isinstance(value, list):
        return [_defaults(v) for v in value]
    if isinstance(value, dict):
        return {k: _defaults(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return _defaults(data)  # type: ignore[return-value]


def test_every_variable_is_a_documented_knob_with_its_default():
    text = COMPOSE.read_text()
    found = dict(VARIABLE.findall(text))
    assert found == KNOBS
    # No other form of interpolation ($VAR, ${VAR}, ${VAR-x}, ${VAR:?x}).
    assert text.count("$") == len(VARIABLE.findall(text))


def test_shape(compose):
    assert set(compose) - TOP_LEVEL == set(), f"unknown top-level keys {set(compose) - TOP_LEVEL}"
    assert "version" not in compose  # obsolete in the Compose specification
    for name, service in compose["services"].items():
        assert re.match(r"^[a-zA-Z0-9._-]+$", name)
        unknown = set(service) - SERVICE_KEYS
        assert not unknown, f"{name}: unknown keys {unknown}"
        assert isinstance(service["image"], str) and ":" in service["image"], f"{name}: pin a tag"
        assert not service["image"].endswith(":latest"), name
        for key in ("command", "entrypoint"):
            if key in service:
                assert isinstance(service[key], list | str)
        if "environment" in service:
            env = service["environment"]
            assert isinstance(env, dict)
            assert all(isinstance(v, str) for v in env.values()), f"{name}: quote env values"
        if "healthcheck" in service:
            hc = service["healthcheck"]
            assert hc["test"][0] in ("CMD", "CMD-SHELL")
            for key in ("interval", "timeout"):
                assert DURATION.match(hc[key]), (name, key)
        if "network_mode" in service:
            assert "ports" not in service and "networks" not in service, name
        depends = service.get("depends_on", [])
        conditions = depends if isinstance(depends, dict) else dict.fromkeys(depends)
        for dep, cond in conditions.items():
            assert dep in compose["services"], f"{name} depends on unknown {dep}"
            if cond is not None:
                assert cond["condition"] in (
                    "service_started",
                    "service_healthy",
                    "service_completed_successfully",
                )
                if cond["condition"] == "service_healthy":
                    assert "healthcheck" in compose["services"][dep], dep


def test_ports_are_loopback_and_as_documented(compose):
    published: dict[str, list[tuple[int, int]]] = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            m = PORT.match(port)
            assert m, f"{name}: publish on 127.0.0.1 only, as HOST:CONTAINER ({port!r})"
            published.setdefault(name, []).append((int(m[1]), int(m[2])))
    assert published["postgres"] == [(5432, 5432)]
    assert published["postgres-test"] == [(5433, 5432)]
    assert published["pgbouncer"] == [(6432, 6432)]
    hosts = {n for n, s in compose["services"].items() if s.get("network_mode") == "host"}
    assert hosts == {"prometheus", "grafana"}
    prom = " ".join(compose["services"]["prometheus"]["command"])
    assert "--web.listen-address=127.0.0.1:9090" in prom
    assert compose["services"]["grafana"]["environment"]["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"


def test_postgres_as_the_protocol_describes(compose):
    env = compose["services"]["postgres"]["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "kgents",
        "kgents",
        "kgents",
    )
    # the URL the protocol and resolve.py's unified default use
    from connman.resolve import resolve_storage

    unified = [
        f
        for f in resolve_storage({"KGENTS_DATABASE_URL": "postgresql://x@db.example/x"}).fallbacks
        if f.tier.value == "unified"
    ]
    assert unified and unified[0].url == "postgresql+asyncpg://kgents:kgents@localhost:5432/kgents"


def test_mounted_files_exist_and_agree(compose):
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            assert target.startswith("/"), (name, volume)
            assert mode in ([], ["ro"], ["rw"]), (name, volume)
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name}: volume {source} not declared"
    prom = compose["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert config == "/etc/prometheus/prometheus.yml"
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "${CONNMAN_PROMETHEUS_CONFIG:-./deploy/prometheus}:/etc/prometheus:ro" in (
        COMPOSE.read_text()
    )
    # PgBouncer forwards to the compose service, with the compose credentials
    ini = configparser.ConfigParser(inline_comment_prefixes=(";",), interpolation=None)
    ini.read(ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini")
    assert ini["databases"]["kgents"].split() == ["host=postgres", "port=5432", "dbname=kgents"]
    users = (ROOT / "deploy" / "pgbouncer" / "userlist.txt").read_text()
    assert '"kgents" "kgents"' in users
    grafana = compose["services"]["grafana"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/connman.json"
    assert (ROOT / "deploy" / "grafana" / "dashboards" / "connman.json").is_file()


def test_compose_config_when_available(compose_cli):
    """The compose CLI's own validation (``docker compose`` or Debian's docker-compose
    1.29, which rejects a top-level ``name:``)."""
    result = subprocess.run(
        [*compose_cli, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
