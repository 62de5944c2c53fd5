"""connman.resolve: the storage protocol (priority, tiers, fallbacks, D-gent backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connman import ConfigError, Tier, parse_url, resolve_storage
from connman.resolve import DEFAULT_UNIFIED_URL, portable_url, tier_of

PROD = "postgresql+asyncpg://app:ProdPw-4821@db.example.com:5432/kgents"
LOCAL = "postgresql+asyncpg://kgents:LocalPw-993@localhost:5432/kgents"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME that does not exist yet: resolving must not create it."""
    return tmp_path / "home"


def sqlite_key(path: Path | str) -> str:
    return f"sqlite+aiosqlite:///{path}"


def default_db(home: Path) -> str:
    return sqlite_key(home / ".local" / "share" / "kgents" / "membrane.db")


# -- priority ---------------------------------------------------------------------


def test_default_is_the_portable_file_under_home(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home)})
    assert storage.url == default_db(home)
    assert storage.source == "default"
    assert storage.tier is Tier.PORTABLE
    assert storage.dialect == "sqlite"
    assert storage.warnings == []
    assert storage.fallbacks == ()
    assert storage.strict is False
    assert storage.dgent_url == storage.url


def test_absolute_xdg_data_home_wins_over_home(home: Path, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    storage = resolve_storage({"HOME": str(home), "XDG_DATA_HOME": str(xdg)})
    assert storage.url == sqlite_key(xdg / "kgents" / "membrane.db")
    assert storage.source == "XDG_DATA_HOME"
    assert storage.tier is Tier.PORTABLE
    assert storage.warnings == []


def test_relative_xdg_data_home_is_ignored_with_a_warning(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "XDG_DATA_HOME": "relative/data"})
    assert storage.url == default_db(home)
    assert storage.source == "default"
    assert len(storage.warnings) == 1
    assert "XDG_DATA_HOME" in storage.warnings[0]
    assert "relative" in storage.warnings[0]


def test_postgres_url_beats_xdg(home: Path, tmp_path: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "XDG_DATA_HOME": str(tmp_path / "xdg"),
            "KGENTS_POSTGRES_URL": "postgresql://app:LegacyPw-1@db.example.com/kgents",
        }
    )
    assert storage.source == "KGENTS_POSTGRES_URL"
    assert storage.url == "postgresql+asyncpg://app:LegacyPw-1@db.example.com:5432/kgents"


def test_database_url_beats_everything(home: Path, tmp_path: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "XDG_DATA_HOME": str(tmp_path / "xdg"),
            "KGENTS_POSTGRES_URL": "postgresql://app:LegacyPw-2@legacy.example.com/kgents",
            "KGENTS_DATABASE_URL": PROD,
        }
    )
    assert storage.source == "KGENTS_DATABASE_URL"
    assert storage.url == PROD
    # The ignored legacy variable is reported, without its password (the other
    # warning is PROD's unverified TLS).
    (legacy,) = [w for w in storage.warnings if "KGENTS_POSTGRES_URL" in w]
    assert "ignored" in legacy
    assert "LegacyPw-2" not in legacy


@pytest.mark.parametrize(
    "legacy",
    [
        "postgres://app:LegacyPw-3@db.example.com/kgents",
        "postgresql://app:LegacyPw-3@db.example.com:5432/kgents",
        "postgresql+asyncpg://app:LegacyPw-3@db.example.com/kgents",
    ],
)
def test_legacy_postgres_url_is_converted_and_deprecated(home: Path, legacy: str) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_POSTGRES_URL": legacy})
    assert storage.url == "postgresql+asyncpg://app:LegacyPw-3@db.example.com:5432/kgents"
    assert storage.source == "KGENTS_POSTGRES_URL"
    (warning,) = [w for w in storage.warnings if "deprecated" in w]  # + unverified TLS
    assert "KGENTS_DATABASE_URL" in warning
    assert "LegacyPw-3" not in warning
    # A replacement the user can paste: a placeholder to fill in, not a literal ***.
    assert (
        "KGENTS_DATABASE_URL=postgresql+asyncpg://app:<password>@db.example.com:5432/kgents "
        in (warning)
    )
    assert "***" not in warning
    suggested = warning.split("KGENTS_DATABASE_URL=")[1].split()[0]
    filled = suggested.replace("<password>", "LegacyPw-3")
    assert resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": filled}).url == storage.url


def test_legacy_postgres_url_must_be_postgres(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KGENTS_POSTGRES_URL") as info:
        resolve_storage({"HOME": str(home), "KGENTS_POSTGRES_URL": f"sqlite:///{tmp_path}/x.db"})
    assert "KGENTS_DATABASE_URL" in str(info.value)


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_blank_variables_count_as_unset(home: Path, blank: str) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": blank,
            "KGENTS_POSTGRES_URL": blank,
            "XDG_DATA_HOME": blank,
            "KGENTS_STORAGE_TIER": blank,
            "KGENTS_STORAGE_STRICT": blank,
            "KGENTS_DGENT_BACKEND": blank,
        }
    )
    assert storage.url == default_db(home)
    assert storage.source == "default"
    assert storage.tier is Tier.PORTABLE
    assert storage.warnings == []
    assert storage.strict is False


def test_blank_database_url_falls_through_to_legacy(home: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": " ",
            "KGENTS_POSTGRES_URL": "postgres://app:LegacyPw-4@db.example.com/kgents",
        }
    )
    assert storage.source == "KGENTS_POSTGRES_URL"


def test_surrounding_whitespace_is_ignored(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": f"  {PROD}\n"})
    assert storage.url == PROD


def test_database_url_may_be_sqlite_with_tilde(home: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": "sqlite+aiosqlite:///~/.local/share/kgents/membrane.db",
        }
    )
    assert storage.url == default_db(home)
    assert storage.source == "KGENTS_DATABASE_URL"
    assert storage.tier is Tier.PORTABLE


def test_sqlite_database_url_is_normalized(home: Path, tmp_path: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path}/a/../b.db"}
    )
    assert storage.url == sqlite_key(tmp_path / "b.db")


def test_memory_database_url(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": "sqlite://"})
    assert storage.url == "sqlite+aiosqlite:///:memory:"
    assert storage.database_url.is_memory
    assert storage.tier is Tier.PORTABLE


def test_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KGENTS_STORAGE_TIER", "KGENTS_STORAGE_STRICT", "KGENTS_DGENT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KGENTS_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    storage = resolve_storage()
    assert storage.url == sqlite_key(tmp_path / "env.db")
    assert storage.source == "KGENTS_DATABASE_URL"


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("var", ["KGENTS_DATABASE_URL", "KGENTS_POSTGRES_URL"])
@pytest.mark.parametrize(
    "value",
    [
        "mysql://app:Bad-Pw-Env-1@db.example.com/kgents",
        "postgresql://app:Bad-Pw-Env-1@db.example.com:70000/kgents",
        "postgresql://app:Bad-Pw-Env-1@db.example.com:port/kgents",
        "not a url at all",
    ],
)
def test_bad_url_names_the_variable_and_hides_the_password(
    home: Path, var: str, value: str
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage({"HOME": str(home), var: value})
    message = str(info.value)
    assert message.startswith(f"{var}=")
    assert "Bad-Pw-Env-1" not in message
    assert "Accepted:" in message
    assert "postgresql+asyncpg://" in message
    assert "sqlite" in message


def test_bad_url_message_shows_the_redacted_value(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage(
            {"HOME": str(home), "KGENTS_DATABASE_URL": "mysql://app:Bad-Pw-Env-2@db/kgents"}
        )
    assert "KGENTS_DATABASE_URL='mysql://app:***@db/kgents'" in str(info.value)


def test_sqlite_url_with_host_is_an_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="KGENTS_DATABASE_URL"):
        resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": "sqlite://host/x.db"})


# -- tiers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:TierPw-1@localhost/db",
        "postgresql://u:TierPw-1@LOCALHOST:5433/db",
        "postgresql://u:TierPw-1@127.0.0.1/db",
        "postgresql://u:TierPw-1@127.4.5.6/db",
        "postgresql://u:TierPw-1@[::1]:5432/db",
        "postgresql://u:TierPw-1@db.localhost/db",
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://%2Ftmp/db",
        "postgresql:///db",
        "postgresql://u@localhost:5432,127.0.0.1:5433/db",
    ],
)
def test_postgres_on_loopback_or_socket_is_unified(home: Path, url: str) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": url})
    assert storage.tier is Tier.UNIFIED
    assert storage.dialect == "postgresql"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:TierPw-2@db.example.com/db",
        "postgresql://u:TierPw-2@10.0.0.5/db",
        "postgresql://u:TierPw-2@192.168.1.20/db",
        "postgresql://u:TierPw-2@[2001:db8::1]/db",
        "postgresql://u:TierPw-2@localhost.example.com/db",
        "postgresql://u:TierPw-2@128.0.0.1/db",
        "postgresql://u@localhost:5432,db.example.com:5432/db",
    ],
)
def test_other_postgres_is_production(home: Path, url: str) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": url})
    assert storage.tier is Tier.PRODUCTION


def test_tier_of() -> None:
    assert tier_of(parse_url("sqlite://")) is Tier.PORTABLE
    assert tier_of(parse_url("postgresql://u@localhost/db")) is Tier.UNIFIED
    assert tier_of(parse_url("postgresql://u@db.example.com/db")) is Tier.PRODUCTION


@pytest.mark.parametrize(
    ("raw", "tier"),
    [
        ("portable", Tier.PORTABLE),
        ("unified", Tier.UNIFIED),
        ("production", Tier.PRODUCTION),
        ("PRODUCTION", Tier.PRODUCTION),
        ("  Unified ", Tier.UNIFIED),
    ],
)
def test_storage_tier_override(home: Path, raw: str, tier: Tier) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_STORAGE_TIER": raw}
    )
    assert storage.tier is tier


def test_bad_storage_tier_is_an_error(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage({"HOME": str(home), "KGENTS_STORAGE_TIER": "cloud"})
    message = str(info.value)
    assert "KGENTS_STORAGE_TIER" in message
    assert "'cloud'" in message
    for accepted in ("portable", "unified", "production"):
        assert accepted in message


# -- strict -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "on", " On "])
def test_strict_true(home: Path, raw: str) -> None:
    assert resolve_storage({"HOME": str(home), "KGENTS_STORAGE_STRICT": raw}).strict is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off"])
def test_strict_false(home: Path, raw: str) -> None:
    assert resolve_storage({"HOME": str(home), "KGENTS_STORAGE_STRICT": raw}).strict is False


@pytest.mark.parametrize("raw", ["2", "maybe", "y", "enabled"])
def test_bad_strict_is_an_error(home: Path, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage({"HOME": str(home), "KGENTS_STORAGE_STRICT": raw})
    assert "KGENTS_STORAGE_STRICT" in str(info.value)
    assert repr(raw) in str(info.value)


# -- fallbacks --------------------------------------------------------------------


def test_production_degrades_to_unified_default_then_portable(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": PROD})
    assert storage.tier is Tier.PRODUCTION
    assert [f.tier for f in storage.fallbacks] == [Tier.UNIFIED, Tier.PORTABLE]
    unified, portable = storage.fallbacks
    assert unified.url == DEFAULT_UNIFIED_URL
    assert unified.source == "unified default"
    assert unified.dgent_url == unified.url
    assert portable.url == default_db(home)
    assert portable.source == "default"
    assert portable.fallbacks == ()


def test_production_degrades_to_kgents_unified_url(home: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": PROD,
            "KGENTS_UNIFIED_URL": "postgres://dev:UniPw-77@127.0.0.1:6543/dev",
        }
    )
    unified = storage.fallbacks[0]
    assert unified.url == "postgresql+asyncpg://dev:UniPw-77@127.0.0.1:6543/dev"
    assert unified.source == "KGENTS_UNIFIED_URL"
    assert unified.tier is Tier.UNIFIED


def test_bad_unified_url_names_its_variable(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage(
            {
                "HOME": str(home),
                "KGENTS_DATABASE_URL": PROD,
                "KGENTS_UNIFIED_URL": "mysql://dev:UniBadPw-1@127.0.0.1/dev",
            }
        )
    assert str(info.value).startswith("KGENTS_UNIFIED_URL=")
    assert "UniBadPw-1" not in str(info.value)


def test_portable_fallback_follows_xdg(home: Path, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    storage = resolve_storage(
        {"HOME": str(home), "XDG_DATA_HOME": str(xdg), "KGENTS_DATABASE_URL": PROD}
    )
    portable = storage.fallbacks[-1]
    assert portable.url == sqlite_key(xdg / "kgents" / "membrane.db")
    assert portable.source == "XDG_DATA_HOME"


def test_unified_degrades_to_portable_only(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": LOCAL})
    assert storage.tier is Tier.UNIFIED
    assert [f.tier for f in storage.fallbacks] == [Tier.PORTABLE]
    assert storage.fallbacks[0].url == default_db(home)


def test_portable_has_no_fallbacks(home: Path, tmp_path: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    )
    assert storage.fallbacks == ()


def test_fallbacks_never_repeat_the_chosen_database(home: Path) -> None:
    # Forced to production while pointing at the unified default: no unified fallback.
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": "postgres://kgents:kgents@localhost/kgents",
            "KGENTS_STORAGE_TIER": "production",
        }
    )
    assert storage.url == DEFAULT_UNIFIED_URL
    assert [f.tier for f in storage.fallbacks] == [Tier.PORTABLE]


def test_postgres_labelled_portable_still_degrades_to_the_file(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_STORAGE_TIER": "portable"}
    )
    assert [f.tier for f in storage.fallbacks] == [Tier.PORTABLE]


def test_sqlite_never_degrades_whatever_its_label(home: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": "sqlite:///x.db",
            "KGENTS_STORAGE_TIER": "production",
        }
    )
    assert storage.fallbacks == ()


def test_unified_url_must_be_postgres(home: Path) -> None:
    with pytest.raises(ConfigError, match="KGENTS_UNIFIED_URL"):
        resolve_storage(
            {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_UNIFIED_URL": "sqlite:///u.db"}
        )


def test_dgent_postgres_never_degrades_to_sqlite(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": "POSTGRES"}
    )
    assert [f.tier for f in storage.fallbacks] == [Tier.UNIFIED]
    assert storage.fallbacks[0].dgent_url == storage.fallbacks[0].url


def test_dgent_memory_survives_degradation(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": "MEMORY"}
    )
    assert {f.dgent_url for f in storage.fallbacks} == {"sqlite+aiosqlite:///:memory:"}


# -- KGENTS_DGENT_BACKEND --------------------------------------------------------


def test_dgent_postgres_with_postgres_storage(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": "POSTGRES"}
    )
    assert storage.dgent_url == storage.url == PROD


@pytest.mark.parametrize("backend", ["POSTGRES", "postgres"])
def test_dgent_postgres_with_sqlite_storage_is_an_error(home: Path, backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage({"HOME": str(home), "KGENTS_DGENT_BACKEND": backend})
    message = str(info.value)
    assert "KGENTS_DGENT_BACKEND=POSTGRES" in message
    assert "KGENTS_DATABASE_URL" in message


def test_dgent_sqlite_with_postgres_storage_uses_the_portable_file(
    home: Path, tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    storage = resolve_storage(
        {
            "HOME": str(home),
            "XDG_DATA_HOME": str(xdg),
            "KGENTS_DATABASE_URL": PROD,
            "KGENTS_DGENT_BACKEND": "SQLITE",
        }
    )
    assert storage.url == PROD
    assert storage.dgent_url == sqlite_key(xdg / "kgents" / "membrane.db")


def test_dgent_sqlite_with_sqlite_storage_uses_that_file(home: Path, tmp_path: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path}/chosen.db",
            "KGENTS_DGENT_BACKEND": "sqlite",
        }
    )
    assert storage.dgent_url == sqlite_key(tmp_path / "chosen.db")


@pytest.mark.parametrize("backend", ["MEMORY", "memory", " Memory "])
def test_dgent_memory(home: Path, backend: str) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": backend}
    )
    assert storage.url == PROD
    assert storage.dgent_url == "sqlite+aiosqlite:///:memory:"
    assert parse_url(storage.dgent_url).is_memory


@pytest.mark.parametrize("backend", ["JSONL", "jsonl"])
def test_dgent_jsonl_is_refused(home: Path, backend: str) -> None:
    with pytest.raises(ConfigError, match="JSONL") as info:
        resolve_storage({"HOME": str(home), "KGENTS_DGENT_BACKEND": backend})
    assert "KGENTS_DGENT_BACKEND" in str(info.value)


@pytest.mark.parametrize("backend", ["REDIS", "file", "pg"])
def test_dgent_unknown_backend_is_an_error(home: Path, backend: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_storage({"HOME": str(home), "KGENTS_DGENT_BACKEND": backend})
    message = str(info.value)
    assert f"KGENTS_DGENT_BACKEND={backend!r}" in message
    for accepted in ("SQLITE", "POSTGRES", "MEMORY"):
        assert accepted in message


# -- Storage never shows a password ---------------------------------------------


def test_storage_str_and_repr_hide_the_password(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": "POSTGRES"}
    )
    assert "ProdPw-4821" in storage.url  # the URL to hand on keeps it
    for text in (
        str(storage),
        repr(storage),
        f"{storage}",
        str([storage]),
        repr(storage.fallbacks),
        storage.redacted_url,
        str(storage.database_url),
        repr(storage.database_url),
        " ".join(storage.warnings),
    ):
        assert "ProdPw-4821" not in text
    assert storage.redacted_url == "postgresql+asyncpg://app:***@db.example.com:5432/kgents"
    assert str(storage) == (
        "production storage postgresql+asyncpg://app:***@db.example.com:5432/kgents "
        "(from KGENTS_DATABASE_URL)"
    )
    assert repr(storage).startswith(
        "Storage(url='postgresql+asyncpg://app:***@db.example.com:5432/kgents', "
        "tier='production', source='KGENTS_DATABASE_URL'"
    )


def test_fallback_storage_hides_the_unified_password(home: Path) -> None:
    storage = resolve_storage(
        {
            "HOME": str(home),
            "KGENTS_DATABASE_URL": PROD,
            "KGENTS_UNIFIED_URL": "postgresql://dev:UniPw-88@localhost/dev",
        }
    )
    unified = storage.fallbacks[0]
    for text in (str(unified), repr(unified), repr(storage.fallbacks), str(storage)):
        assert "UniPw-88" not in text


def test_legacy_storage_hides_the_password_everywhere(home: Path) -> None:
    storage = resolve_storage(
        {"HOME": str(home), "KGENTS_POSTGRES_URL": "postgres://app:LegacyPw-5@db.example.com/k"}
    )
    assert "LegacyPw-5" not in repr(storage)  # repr includes the warnings
    assert "LegacyPw-5" not in str(storage)


def test_storage_is_immutable(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home)})
    with pytest.raises(AttributeError):
        storage.url = "sqlite://"  # type: ignore[misc]


def test_storage_database_url_round_trips(home: Path) -> None:
    storage = resolve_storage({"HOME": str(home), "KGENTS_DATABASE_URL": PROD})
    assert storage.database_url == parse_url(PROD)
    assert storage.database_url.key == storage.url


def test_portable_paths_with_url_special_characters(tmp_path: Path) -> None:
    odd = tmp_path / "we?ird 100%41"
    storage = resolve_storage({"HOME": str(odd)})
    expected = str(odd / ".local" / "share" / "kgents" / "membrane.db")
    assert storage.database_url.database == expected
    xdg = resolve_storage({"HOME": str(tmp_path), "XDG_DATA_HOME": str(odd)})
    assert xdg.database_url.database == str(odd / "kgents" / "membrane.db")


def test_portable_url(home: Path, tmp_path: Path) -> None:
    assert portable_url({"HOME": str(home)}).key == default_db(home)
    xdg = tmp_path / "xdg"
    assert portable_url({"HOME": str(home), "XDG_DATA_HOME": str(xdg)}).key == sqlite_key(
        xdg / "kgents" / "membrane.db"
    )


# -- no side effects --------------------------------------------------------------


def test_resolving_creates_no_files_or_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    envs: list[dict[str, str]] = [
        {"HOME": str(home)},
        {"HOME": str(home), "XDG_DATA_HOME": str(xdg)},
        {"HOME": str(home), "XDG_DATA_HOME": "relative"},
        {"HOME": str(home), "KGENTS_DATABASE_URL": f"sqlite:///{tmp_path}/deep/er/x.db"},
        {"HOME": str(home), "KGENTS_DATABASE_URL": "sqlite:///relative/dir/x.db"},
        {"HOME": str(home), "KGENTS_DATABASE_URL": "sqlite:///~/sub/x.db"},
        {"HOME": str(home), "KGENTS_DATABASE_URL": PROD, "KGENTS_DGENT_BACKEND": "SQLITE"},
        {"HOME": str(home), "KGENTS_DATABASE_URL": LOCAL},
    ]
    for env in envs:
        storage = resolve_storage(env)
        _ = (str(storage), repr(storage), storage.fallbacks, storage.database_url)
    assert list(tmp_path.iterdir()) == []
