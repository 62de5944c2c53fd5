"""Read replica settings and the lag clock, without a server (the behaviour on a real
primary + standby is in tests/faults/test_replicas.py)."""

from __future__ import annotations

import pytest

from connman import ConfigError, ConnectionManager, ReplicaPolicy, resolve_storage
from connman.replicas import WalClock

PRIMARY = "postgresql://app:s3cret@db.internal:5432/kgents?sslmode=verify-full"
REPLICA_A = "postgresql://app:s3cret@replica-a.internal/kgents?sslmode=verify-full"
REPLICA_B = "postgresql://app:s3cret@replica-b.internal/kgents?sslmode=verify-full"


def test_replica_urls_come_from_the_environment_comma_or_space_separated() -> None:
    env = {
        "KGENTS_DATABASE_URL": PRIMARY,
        "KGENTS_DATABASE_REPLICA_URLS": f" {REPLICA_A},{REPLICA_B}  {REPLICA_A} ",
    }
    storage = resolve_storage(env)
    assert [u.split("@")[1].split("/")[0] for u in storage.replica_urls] == [
        "replica-a.internal:5432",
        "replica-b.internal:5432",
    ]
    assert all(u.startswith("postgresql+asyncpg://") for u in storage.replica_urls)
    assert "s3cret" not in repr(storage)
    manager = ConnectionManager(storage)
    assert len(manager._replica_urls) == 2


MULTI_A = "postgresql://app:s3cret@a1.internal:5432,a2.internal:5433/kgents"
MULTI_B = "postgres://app:s3cret@b1.internal,b2.internal/kgents?target_session_attrs=standby"


def test_multi_host_replica_urls_keep_their_commas_in_the_environment() -> None:
    """A comma starts the next URL only when a scheme follows it: the hosts of a
    multi-host URL stay together, with commas, spaces or both between the URLs."""
    for raw in (
        f"{MULTI_A},{REPLICA_A},{MULTI_B}",
        f"{MULTI_A}, {REPLICA_A} ,{MULTI_B},",
        f"{MULTI_A} {REPLICA_A}\n{MULTI_B}",
    ):
        storage = resolve_storage(
            {"KGENTS_DATABASE_URL": PRIMARY, "KGENTS_DATABASE_REPLICA_URLS": raw}
        )
        hosts = [u.split("@")[1].split("/")[0] for u in storage.replica_urls]
        assert hosts == [
            "a1.internal:5432,a2.internal:5433",
            "replica-a.internal:5432",
            "b1.internal,b2.internal",
        ], raw
        assert len(ConnectionManager(storage)._replica_urls) == 3


def test_a_multi_host_replica_url_prefers_a_standby_unless_it_says_otherwise() -> None:
    """Several hosts default to target_session_attrs=read-write (the primary) for the
    default pool; a replica pool prefers a standby instead. One host: no target added;
    an explicit target is kept, in the environment and in replicas=[...] alike."""
    env = {
        "KGENTS_DATABASE_URL": PRIMARY,
        "KGENTS_DATABASE_REPLICA_URLS": f"{MULTI_A},{MULTI_B},{REPLICA_A}",
    }
    targets = [
        dict(url.query).get("target_session_attrs")
        for url in ConnectionManager(resolve_storage(env))._replica_urls
    ]
    assert targets == ["prefer-standby", "standby", None]
    (url,) = ConnectionManager(PRIMARY, replicas=[MULTI_A])._replica_urls
    assert dict(url.query)["target_session_attrs"] == "prefer-standby"
    assert "target_session_attrs=prefer-standby" in resolve_storage(env).replica_urls[0]


def test_the_primary_host_list_serves_as_replicas_with_prefer_standby() -> None:
    """The primary's own multi-host URL as a replica URL is the standby among those
    hosts (prefer-standby), not the primary: accepted. One host is refused."""
    (url,) = ConnectionManager(MULTI_A, replicas=[MULTI_A])._replica_urls
    assert dict(url.query)["target_session_attrs"] == "prefer-standby"
    pinned = MULTI_A + "?target_session_attrs=read-write"
    with pytest.raises(ConfigError, match="primary itself"):
        ConnectionManager(pinned, replicas=[pinned])


def test_replicas_are_refused_for_a_sqlite_primary_or_a_non_postgres_replica(tmp_path) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL primary"):
        resolve_storage({"HOME": str(tmp_path), "KGENTS_DATABASE_REPLICA_URLS": REPLICA_A})
    with pytest.raises(ConfigError, match="not a PostgreSQL URL"):
        resolve_storage(
            {"KGENTS_DATABASE_URL": PRIMARY, "KGENTS_DATABASE_REPLICA_URLS": "sqlite:///x.db"}
        )
    with pytest.raises(ConfigError, match="primary itself"):
        ConnectionManager(PRIMARY, replicas=[PRIMARY])
    with pytest.raises(ConfigError, match="list of URLs"):
        ConnectionManager(PRIMARY, replicas=REPLICA_A)  # type: ignore[arg-type]


def test_an_unverified_remote_replica_gets_the_tls_warning() -> None:
    env = {
        "KGENTS_DATABASE_URL": PRIMARY,
        "KGENTS_DATABASE_REPLICA_URLS": "postgresql://app:s3cret@replica-a.internal/kgents",
    }
    (warning,) = resolve_storage(env).warnings
    assert "replica-a.internal" in warning and "s3cret" not in warning


def test_an_explicit_url_ignores_the_environment_replicas(monkeypatch) -> None:
    monkeypatch.setenv("KGENTS_DATABASE_REPLICA_URLS", REPLICA_A)
    assert ConnectionManager(PRIMARY)._replica_urls == ()
    assert len(ConnectionManager(PRIMARY, replicas=[REPLICA_B])._replica_urls) == 1


def test_replica_policy_from_env() -> None:
    policy = ReplicaPolicy.from_env(
        {"KGENTS_REPLICA_MAX_LAG": "2.5", "KGENTS_REPLICA_CHECK_INTERVAL": "0.5"}
    )
    assert (policy.max_lag, policy.check_interval, policy.check_timeout) == (2.5, 0.5, 2.0)
    assert ReplicaPolicy.from_env({}).max_lag == 10.0
    with pytest.raises(ConfigError, match="KGENTS_REPLICA_MAX_LAG"):
        ReplicaPolicy.from_env({"KGENTS_REPLICA_MAX_LAG": "ten"})
    with pytest.raises(ConfigError, match="KGENTS_REPLICA_MAXLAG is not"):
        ReplicaPolicy.from_env({"KGENTS_REPLICA_MAXLAG": "3"})
    with pytest.raises(ConfigError, match="max_lag=0"):
        ReplicaPolicy(max_lag=0)


def test_lag_is_how_long_the_primary_has_had_wal_the_replica_has_not_replayed() -> None:
    clock = WalClock(window=30)
    assert clock.lag(0.0, 100) is None  # nothing known about the primary yet
    clock.record(0.0, 100)
    assert clock.lag(0.5, 100) == 0.0  # replayed everything the primary had
    clock.record(1.0, 200)
    clock.record(2.0, 300)
    assert clock.lag(2.5, 300) == 0.0
    assert clock.lag(2.5, 250) == pytest.approx(0.5)  # 300 exists since t=2
    assert clock.lag(2.5, 150) == pytest.approx(1.5)  # 200 exists since t=1


def test_an_idle_primary_does_not_age_a_current_replica() -> None:
    """The same position read again keeps its first time; a replica at that position
    has no lag however long the primary stays idle (the replay timestamp would)."""
    clock = WalClock(window=30)
    for t in range(0, 100, 5):
        clock.record(float(t), 500)
    assert clock.lag(100.0, 500) == 0.0
    assert clock.lag(100.0, 499) == pytest.approx(100.0)  # one byte behind, since t=0


def test_the_clock_keeps_only_its_window() -> None:
    clock = WalClock(window=10)
    for t in range(100):
        clock.record(float(t), t)
    assert len(clock._samples) <= 12
    # Behind everything kept: at least the window late, so over any max_lag < window.
    assert clock.lag(99.0, 0) >= 10
