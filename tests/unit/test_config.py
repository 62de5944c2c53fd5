"""connman.config.PoolConfig: defaults, immutability, validation and KGENTS_POOL_* env."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import pytest

from connman import ConfigError, PoolConfig

# -- defaults and immutability ----------------------------------------------------


def test_defaults() -> None:
    config = PoolConfig()
    assert config.min_size == 1
    assert config.max_size == 10
    assert config.acquire_timeout == 30.0
    assert config.max_lifetime == 3600.0
    assert config.max_idle == 600.0
    assert config.leak_threshold is None
    assert dict(config.consumer_limits) == {}
    assert config.connect_timeout == 10.0
    assert config.command_timeout is None
    assert config.application_name == "connman"


def test_equal_settings_compare_equal() -> None:
    assert PoolConfig(consumer_limits={"a": 2}) == PoolConfig(consumer_limits={"a": 2})
    assert PoolConfig(max_size=5) != PoolConfig()


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_size", 99), ("min_size", 0), ("acquire_timeout", 1.0), ("consumer_limits", {})],
)
def test_fields_cannot_be_assigned(name: str, value: object) -> None:
    config = PoolConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, value)
    assert getattr(config, name) == getattr(PoolConfig(), name)


def test_consumer_limits_are_frozen() -> None:
    config = PoolConfig(consumer_limits={"sqlalchemy": 6})
    with pytest.raises(TypeError):
        config.consumer_limits["dgent"] = 4  # type: ignore[index]
    with pytest.raises(TypeError):
        del config.consumer_limits["sqlalchemy"]  # type: ignore[attr-defined]
    assert dict(config.consumer_limits) == {"sqlalchemy": 6}


def test_consumer_limits_are_copied_from_the_callers_dict() -> None:
    limits = {"sqlalchemy": 6}
    config = PoolConfig(consumer_limits=limits)
    limits["sqlalchemy"] = 1
    limits["dgent"] = 2
    assert dict(config.consumer_limits) == {"sqlalchemy": 6}


def test_replace_keeps_validation() -> None:
    config = PoolConfig(consumer_limits={"dgent": 3})
    bigger = dataclasses.replace(config, max_size=20)
    assert bigger.max_size == 20
    assert dict(bigger.consumer_limits) == {"dgent": 3}
    with pytest.raises(ConfigError, match="min_size"):
        dataclasses.replace(config, min_size=50)


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        PoolConfig(1, 10)  # type: ignore[misc]


# -- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_size": 0},
        {"min_size": 5, "max_size": 5},
        {"max_size": 1},
        {"acquire_timeout": 5},
        {"acquire_timeout": 0.001},
        {"health_check_after": 0},
        {"leak_threshold": 2.5},
        {"leak_threshold": None},
        {"command_timeout": 60},
        {"statement_cache_size": 0},
        {"consumer_limits": {"sqlalchemy": 6, "dgent": 4}},
        {"reconnect_initial_delay": 1.0, "reconnect_max_delay": 1.0},
    ],
)
def test_valid_edge_values_are_accepted(kwargs: dict[str, Any]) -> None:
    config = PoolConfig(**kwargs)
    for name, value in kwargs.items():
        if name == "consumer_limits":
            assert dict(config.consumer_limits) == value
        else:
            assert getattr(config, name) == value


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_size": -1}, "min_size"),
        ({"min_size": 1.5}, "min_size"),
        ({"min_size": "1"}, "min_size"),
        ({"min_size": None}, "min_size"),
        ({"max_size": 0}, "max_size"),
        ({"max_size": -3}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"min_size": False}, "min_size"),
        ({"max_size": 10.0}, "max_size"),
        ({"acquire_timeout": 0}, "acquire_timeout"),
        ({"acquire_timeout": -1.0}, "acquire_timeout"),
        ({"acquire_timeout": math.inf}, "acquire_timeout"),
        ({"acquire_timeout": math.nan}, "acquire_timeout"),
        ({"acquire_timeout": True}, "acquire_timeout"),
        ({"acquire_timeout": "30"}, "acquire_timeout"),
        ({"acquire_timeout": None}, "acquire_timeout"),
        ({"connect_timeout": 0.0}, "connect_timeout"),
        ({"max_lifetime": math.inf}, "max_lifetime"),
        ({"max_lifetime": -1}, "max_lifetime"),
        ({"max_idle": math.nan}, "max_idle"),
        ({"max_idle": 0}, "max_idle"),
        ({"reset_timeout": -math.inf}, "reset_timeout"),
        ({"close_timeout": 0}, "close_timeout"),
        ({"sqlite_busy_timeout": math.nan}, "sqlite_busy_timeout"),
        ({"health_check_after": -0.1}, "health_check_after"),
        ({"health_check_after": math.inf}, "health_check_after"),
        ({"leak_threshold": 0}, "leak_threshold"),
        ({"leak_threshold": -5.0}, "leak_threshold"),
        ({"leak_threshold": math.inf}, "leak_threshold"),
        ({"command_timeout": math.nan}, "command_timeout"),
        ({"command_timeout": 0}, "command_timeout"),
        ({"statement_cache_size": -1}, "statement_cache_size"),
        ({"reconnect_initial_delay": 0}, "reconnect_initial_delay"),
        ({"reconnect_initial_delay": 2.0, "reconnect_max_delay": 1.0}, "reconnect_max_delay"),
        ({"application_name": 5}, "application_name"),
        ({"consumer_limits": {"dgent": 0}}, "consumer_limits['dgent']"),
        ({"consumer_limits": {"dgent": -1}}, "consumer_limits['dgent']"),
        ({"consumer_limits": {"dgent": True}}, "consumer_limits['dgent']"),
        ({"consumer_limits": {"dgent": 2.5}}, "consumer_limits['dgent']"),
        ({"consumer_limits": {"": 2}}, "consumer_limits"),
        ({"consumer_limits": {3: 2}}, "consumer_limits"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(**kwargs)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_min_larger_than_max_names_both_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig(min_size=11, max_size=10)
    message = str(info.value)
    assert "min_size=11" in message
    assert "max_size=10" in message
    assert "KGENTS_POOL_MAX_SIZE" in message


def test_min_larger_than_default_max() -> None:
    with pytest.raises(ConfigError, match="min_size"):
        PoolConfig(min_size=20)


# -- from_env -----------------------------------------------------------------------


def test_from_env_with_nothing_set_gives_defaults() -> None:
    assert PoolConfig.from_env({}) == PoolConfig()


def test_from_env_ignores_unrelated_variables() -> None:
    env = {
        "PATH": "/usr/bin",
        "KGENTS_DATABASE_URL": "sqlite://",
        "KGENTS_POOLS": "x",
        "kgents_pool_max_size": "3",
    }
    assert PoolConfig.from_env(env) == PoolConfig()


def test_from_env_reads_every_kind_of_value() -> None:
    config = PoolConfig.from_env(
        {
            "KGENTS_POOL_MIN_SIZE": "2",
            "KGENTS_POOL_MAX_SIZE": " 20 ",
            "KGENTS_POOL_ACQUIRE_TIMEOUT": "2.5",
            "KGENTS_POOL_MAX_LIFETIME": "60",
            "KGENTS_POOL_MAX_IDLE": "1e2",
            "KGENTS_POOL_LEAK_THRESHOLD": "12",
            "KGENTS_POOL_CONSUMER_LIMITS": "sqlalchemy=6,dgent=4",
            "KGENTS_POOL_APPLICATION_NAME": "kgents-brain",
            "KGENTS_POOL_STATEMENT_CACHE_SIZE": "0",
            "KGENTS_POOL_COMMAND_TIMEOUT": "15",
        }
    )
    assert config.min_size == 2
    assert config.max_size == 20
    assert config.acquire_timeout == 2.5
    assert config.max_lifetime == 60.0
    assert config.max_idle == 100.0
    assert config.leak_threshold == 12.0
    assert dict(config.consumer_limits) == {"sqlalchemy": 6, "dgent": 4}
    assert config.application_name == "kgents-brain"
    assert config.statement_cache_size == 0
    assert config.command_timeout == 15.0


def test_consumer_limits_from_env_tolerate_spaces_and_trailing_commas() -> None:
    config = PoolConfig.from_env({"KGENTS_POOL_CONSUMER_LIMITS": " sqlalchemy = 6 , dgent=4, "})
    assert dict(config.consumer_limits) == {"sqlalchemy": 6, "dgent": 4}


def test_consumer_limits_from_env_are_frozen() -> None:
    config = PoolConfig.from_env({"KGENTS_POOL_CONSUMER_LIMITS": "sqlalchemy=6"})
    with pytest.raises(TypeError):
        config.consumer_limits["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize("raw", ["none", "None", "NONE", "off", "", "  "])
@pytest.mark.parametrize("var", ["KGENTS_POOL_LEAK_THRESHOLD", "KGENTS_POOL_COMMAND_TIMEOUT"])
def test_optional_timeouts_can_be_turned_off_from_env(var: str, raw: str) -> None:
    name = var.removeprefix("KGENTS_POOL_").lower()
    assert getattr(PoolConfig.from_env({var: "7"}), name) == 7.0
    assert getattr(PoolConfig.from_env({var: raw}), name) is None


def test_unknown_pool_variable_is_an_error_listing_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_env({"KGENTS_POOL_FOO": "1"})
    message = str(info.value)
    assert "KGENTS_POOL_FOO" in message
    for known in (
        "KGENTS_POOL_MIN_SIZE",
        "KGENTS_POOL_MAX_SIZE",
        "KGENTS_POOL_ACQUIRE_TIMEOUT",
        "KGENTS_POOL_LEAK_THRESHOLD",
        "KGENTS_POOL_CONSUMER_LIMITS",
    ):
        assert known in message


def test_typo_in_pool_variable_is_an_error() -> None:
    with pytest.raises(ConfigError, match="KGENTS_POOL_MAX_SIZES"):
        PoolConfig.from_env({"KGENTS_POOL_MAX_SIZES": "20"})


@pytest.mark.parametrize(
    ("var", "raw", "named"),
    [
        ("KGENTS_POOL_MAX_SIZE", "ten", "KGENTS_POOL_MAX_SIZE"),
        ("KGENTS_POOL_MAX_SIZE", "1.5", "KGENTS_POOL_MAX_SIZE"),
        ("KGENTS_POOL_MAX_SIZE", "--5", "KGENTS_POOL_MAX_SIZE"),
        ("KGENTS_POOL_MAX_SIZE", "²", "KGENTS_POOL_MAX_SIZE"),
        ("KGENTS_POOL_MAX_SIZE", "0", "max_size"),
        ("KGENTS_POOL_MIN_SIZE", "-1", "min_size"),
        ("KGENTS_POOL_MIN_SIZE", "50", "min_size"),
        ("KGENTS_POOL_ACQUIRE_TIMEOUT", "soon", "KGENTS_POOL_ACQUIRE_TIMEOUT"),
        ("KGENTS_POOL_ACQUIRE_TIMEOUT", "0", "acquire_timeout"),
        ("KGENTS_POOL_ACQUIRE_TIMEOUT", "inf", "acquire_timeout"),
        ("KGENTS_POOL_ACQUIRE_TIMEOUT", "nan", "acquire_timeout"),
        ("KGENTS_POOL_ACQUIRE_TIMEOUT", "none", "KGENTS_POOL_ACQUIRE_TIMEOUT"),
        ("KGENTS_POOL_LEAK_THRESHOLD", "forever", "KGENTS_POOL_LEAK_THRESHOLD"),
        ("KGENTS_POOL_LEAK_THRESHOLD", "-1", "leak_threshold"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy", "KGENTS_POOL_CONSUMER_LIMITS"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy=", "KGENTS_POOL_CONSUMER_LIMITS"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy=six", "KGENTS_POOL_CONSUMER_LIMITS"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy=1.5", "KGENTS_POOL_CONSUMER_LIMITS"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "dgent=²", "KGENTS_POOL_CONSUMER_LIMITS"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy=0", "consumer_limits['sqlalchemy']"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "sqlalchemy=-2", "sqlalchemy"),
        ("KGENTS_POOL_CONSUMER_LIMITS", "=3", "consumer_limits"),
    ],
)
def test_bad_env_values_raise_config_error_naming_the_setting(
    var: str, raw: str, named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        PoolConfig.from_env({var: raw})
    assert named in str(info.value)


def test_keyword_overrides_win_over_env() -> None:
    env = {
        "KGENTS_POOL_MAX_SIZE": "20",
        "KGENTS_POOL_ACQUIRE_TIMEOUT": "3",
        "KGENTS_POOL_CONSUMER_LIMITS": "sqlalchemy=6,dgent=4",
    }
    config = PoolConfig.from_env(env, max_size=5, consumer_limits={"dgent": 2})
    assert config.max_size == 5
    assert dict(config.consumer_limits) == {"dgent": 2}
    assert config.acquire_timeout == 3.0  # not overridden: env applies


def test_overrides_are_validated_together_with_env() -> None:
    with pytest.raises(ConfigError, match="min_size=8"):
        PoolConfig.from_env({"KGENTS_POOL_MIN_SIZE": "8"}, max_size=4)
    with pytest.raises(ConfigError, match="acquire_timeout"):
        PoolConfig.from_env({}, acquire_timeout=0)


def test_unknown_override_keyword_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_sizes"):
        PoolConfig.from_env({}, max_sizes=5)


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("KGENTS_POOL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KGENTS_POOL_MAX_SIZE", "17")
    monkeypatch.setenv("KGENTS_POOL_CONSUMER_LIMITS", "dgent=3")
    config = PoolConfig.from_env()
    assert config.max_size == 17
    assert dict(config.consumer_limits) == {"dgent": 3}


def test_blank_pool_variables_count_as_unset() -> None:
    # docker compose passes ${KGENTS_POOL_MAX_SIZE:-} as an empty string.
    config = PoolConfig.from_env({"KGENTS_POOL_MAX_SIZE": "", "KGENTS_POOL_MIN_SIZE": "  "})
    assert (config.min_size, config.max_size) == (1, 10)


def test_an_override_replaces_a_bad_env_value_without_parsing_it() -> None:
    config = PoolConfig.from_env({"KGENTS_POOL_MAX_SIZE": "lots"}, max_size=4)
    assert config.max_size == 4
