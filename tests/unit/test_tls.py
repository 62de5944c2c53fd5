"""TLS policy without a server: which URLs warn, KGENTS_REQUIRE_TLS / require_tls,
file parameters expanded and named; and the production settings of PoolConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from connman import ConfigError, ConnectionManager, PoolConfig, parse_url, resolve_storage
from connman.tls import resolve_files

REMOTE = "postgresql://app:TlsPw-9931@db.example.com/kgents"


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), **extra}


def test_a_remote_url_without_verification_warns(tmp_path: Path) -> None:
    storage = resolve_storage(_env(tmp_path, KGENTS_DATABASE_URL=REMOTE))
    (warning,) = storage.warnings
    assert "sslmode=verify-full" in warning and "KGENTS_REQUIRE_TLS" in warning
    assert "TlsPw-9931" not in warning
    for mode in ("disable", "prefer", "require"):
        url = f"{REMOTE}?sslmode={mode}"
        storage = resolve_storage(_env(tmp_path, KGENTS_DATABASE_URL=url))
        assert any(f"sslmode={mode}" in w for w in storage.warnings), storage.warnings


@pytest.mark.parametrize(
    ("url", "env"),
    [
        (f"{REMOTE}?sslmode=verify-full", {}),
        (f"{REMOTE}?sslmode=verify-ca", {}),
        (REMOTE, {"PGSSLMODE": "verify-full"}),  # libpq's variable counts
        ("postgresql://app:pw@127.0.0.1/kgents", {}),  # loopback: nothing to intercept
        ("postgresql://app:pw@localhost/kgents", {"KGENTS_REQUIRE_TLS": "1"}),
    ],
)
def test_verified_or_local_urls_do_not_warn(tmp_path: Path, url: str, env: dict[str, str]) -> None:
    storage = resolve_storage(_env(tmp_path, KGENTS_DATABASE_URL=url, **env))
    assert storage.warnings == []


def test_require_tls_refuses_an_unverified_remote_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KGENTS_REQUIRE_TLS") as info:
        resolve_storage(_env(tmp_path, KGENTS_DATABASE_URL=REMOTE, KGENTS_REQUIRE_TLS="1"))
    assert "TlsPw-9931" not in str(info.value)
    with pytest.raises(ConfigError, match="KGENTS_REQUIRE_TLS"):
        resolve_storage(_env(tmp_path, KGENTS_DATABASE_URL=REMOTE, KGENTS_REQUIRE_TLS="maybe"))


async def test_require_tls_in_the_config_refuses_before_connecting() -> None:
    manager = ConnectionManager(REMOTE, config=PoolConfig(require_tls=True), degrade=False)
    with pytest.raises(ConfigError, match="require_tls"):
        await manager.start()
    await manager.aclose()


def test_file_parameters_expand_home_and_name_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    url = parse_url(f"{REMOTE}?sslmode=verify-full&sslrootcert=~/ca.pem")
    resolved = resolve_files(url, env={}, home=str(tmp_path))
    assert ("sslrootcert", f"{tmp_path}/ca.pem") in resolved.query
    # from the environment too (the URL wins over PGSSLROOTCERT)
    url = parse_url(REMOTE)
    resolved = resolve_files(url, env={"PGSSLROOTCERT": "~/ca.pem"}, home=str(tmp_path))
    assert ("sslrootcert", f"{tmp_path}/ca.pem") in resolved.query
    with pytest.raises(ConfigError) as info:
        resolve_files(url, env={"PGPASSFILE": "~/.pgpass"}, home=str(tmp_path))
    assert f"{tmp_path}/.pgpass" in str(info.value) and "PGPASSFILE" in str(info.value)


def test_production_settings_of_the_pool_config() -> None:
    config = PoolConfig()
    assert config.max_connecting == 3
    assert config.pgbouncer == "auto" and config.statement_cache_size == 100
    assert config.require_tls is False and config.credential_provider is None
    # the one word for a transaction-mode pooler turns the statement cache off
    assert PoolConfig(pgbouncer="transaction").statement_cache_size == 0
    env = PoolConfig.from_env(
        {
            "KGENTS_POOL_PGBOUNCER": "Transaction",
            "KGENTS_POOL_MAX_CONNECTING": "2",
            "KGENTS_POOL_REQUIRE_TLS": "yes",
        }
    )
    assert (env.pgbouncer, env.statement_cache_size, env.max_connecting) == ("transaction", 0, 2)
    assert env.require_tls is True
    with pytest.raises(ConfigError, match="pgbouncer"):
        PoolConfig(pgbouncer="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_connecting"):
        PoolConfig(max_connecting=0)
    # code cannot come from the environment
    with pytest.raises(ConfigError, match="KGENTS_POOL_CREDENTIAL_PROVIDER"):
        PoolConfig.from_env({"KGENTS_POOL_CREDENTIAL_PROVIDER": "os.getenv"})
