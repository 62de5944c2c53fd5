"""connman.urls: parsing, normalization (pool keys), redaction and URL errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connman import ConfigError, DatabaseURL, parse_url, redact_text
from connman.resolve import DEFAULT_UNIFIED_URL

CANONICAL = "postgresql+asyncpg://u@h:5432/db"

# Only ever used in URLs that fail to parse, so it never reaches the registry of
# known passwords: if it is missing from a message, the URL redaction removed it.
UNPARSED_PW = "Never-Parsed-Pw9"


# -- normalization: one key per database ------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u@h/db",
        "postgresql://u@h/db",
        "postgresql://u@h:5432/db",
        "postgresql+asyncpg://u@h/db",
        "postgresql+asyncpg://u@h:5432/db",
        "postgresql+psycopg://u@h/db",
        "postgresql+psycopg2://u@h:5432/db",
        "postgresql+psycopg_async://u@h/db",
        "postgresql+pg8000://u@h/db",
        "POSTGRESQL://u@h/db",
        "postgresql://u@H/db",
        "postgresql://u@h:05432/db",
        "  postgresql://u@h/db  ",
        "postgresql:///db?host=h&user=u",
        "postgresql://h?dbname=db&user=u",
        "postgresql://u@/db?host=H&port=5432",
    ],
)
def test_every_spelling_of_one_database_has_one_key(raw: str) -> None:
    url = parse_url(raw)
    assert url.key == CANONICAL
    assert url == parse_url(CANONICAL)
    assert hash(url) == hash(parse_url(CANONICAL))


def test_parsed_fields() -> None:
    url = parse_url("postgres://alice:pw@DB.Example.COM:6543/Sales")
    assert url.dialect == "postgresql"
    assert url.host == "db.example.com"
    assert url.port == 6543
    assert url.user == "alice"
    assert url.password == "pw"
    assert url.database == "Sales"
    assert not url.is_memory


def test_host_is_case_insensitive_but_user_and_database_are_not() -> None:
    url = parse_url("postgresql://Alice@DB.EXAMPLE.com/MyDb")
    assert url.key == "postgresql+asyncpg://Alice@db.example.com:5432/MyDb"
    assert parse_url("postgresql://alice@h/db") != parse_url("postgresql://Alice@h/db")
    assert parse_url("postgresql://u@h/mydb") != parse_url("postgresql://u@h/MyDb")


@pytest.mark.parametrize(
    "other",
    [
        "postgresql://u@h:5433/db",
        "postgresql://u@h2/db",
        "postgresql://v@h/db",
        "postgresql://u@h/db2",
        "postgresql://u:pw@h/db",
        "postgresql://u@h/db?sslmode=require",
    ],
)
def test_different_databases_have_different_keys(other: str) -> None:
    assert parse_url(other).key != CANONICAL
    assert parse_url(other) != parse_url(CANONICAL)


def test_query_parameters_are_sorted() -> None:
    a = parse_url("postgresql://u@h/db?sslmode=require&application_name=x&connect_timeout=3")
    b = parse_url("postgresql://u@h/db?connect_timeout=3&sslmode=require&application_name=x")
    assert a == b
    assert a.key == b.key
    assert a.key == (
        "postgresql+asyncpg://u@h:5432/db?application_name=x&connect_timeout=3&sslmode=require"
    )


def test_query_on_a_url_without_a_path() -> None:
    url = parse_url("postgresql://u@h?sslmode=require")
    assert url.host == "h"
    assert url.database is None
    assert dict(url.query) == {"sslmode": "require"}


def test_netloc_wins_over_libpq_query_spellings() -> None:
    url = parse_url("postgresql://u@h:5432/db?host=other&port=7777")
    assert url.host == "h"
    assert url.port == 5432


def test_ipv6_hosts() -> None:
    url = parse_url("postgresql://u@[2001:DB8::1]:6543/db")
    assert url.host == "2001:db8::1"
    assert url.port == 6543
    assert url.key == "postgresql+asyncpg://u@[2001:db8::1]:6543/db"
    assert parse_url(url.key) == url

    loopback = parse_url("postgresql://u@[::1]/db")
    assert loopback.host == "::1"
    assert loopback.key == "postgresql+asyncpg://u@[::1]:5432/db"
    assert loopback.is_local


def test_percent_encoded_password_is_decoded_and_round_trips() -> None:
    url = parse_url("postgresql://u:p%40ss%3Aw%2Fd%25@h/db")
    assert url.password == "p@ss:w/d%"
    # The key re-encodes it, so it parses back to the same password.
    assert parse_url(url.key) == url
    assert parse_url(url.key).password == "p@ss:w/d%"
    assert url.key == "postgresql+asyncpg://u:p%40ss%3Aw%2Fd%25@h:5432/db"


def test_raw_at_sign_in_password() -> None:
    url = parse_url("postgresql://u:p@ss@h/db")
    assert url.user == "u"
    assert url.password == "p@ss"
    assert url.host == "h"


def test_percent_encoded_user() -> None:
    url = parse_url("postgresql://me%40corp:pw@h/db")
    assert url.user == "me@corp"
    assert parse_url(url.key) == url


def test_password_given_as_query_parameter_is_kept_in_the_key() -> None:
    url = parse_url("postgresql://h/db?password=QueryOnlyPw7")
    assert url.password == "QueryOnlyPw7"
    assert parse_url(url.key).password == "QueryOnlyPw7"
    assert "QueryOnlyPw7" in url.connect_dsn()
    assert "QueryOnlyPw7" not in str(url)


def test_unix_socket_host_in_query() -> None:
    url = parse_url("postgresql:///db?host=/var/run/postgresql")
    assert url.host == "/var/run/postgresql"
    assert url.port == 5432
    assert url.database == "db"
    assert url.is_local
    # The socket directory is part of the identity of the database...
    assert "host=/var/run/postgresql" in url.key
    assert parse_url(url.key) == url
    # ...and reaches the driver.
    assert "/var/run/postgresql" in url.connect_dsn()


def test_unix_socket_percent_encoded_in_netloc_is_the_same_database() -> None:
    a = parse_url("postgresql://%2Fvar%2Frun%2Fpostgresql/db")
    b = parse_url("postgresql:///db?host=/var/run/postgresql")
    assert a == b
    assert a.key == b.key


def test_different_sockets_or_ports_are_different_databases() -> None:
    base = parse_url("postgresql:///db?host=/var/run/postgresql")
    assert parse_url("postgresql:///db?host=/tmp").key != base.key
    other_port = parse_url("postgresql:///db?host=/var/run/postgresql&port=5433")
    assert other_port.port == 5433
    assert other_port.key != base.key
    assert parse_url(other_port.key).port == 5433
    assert "5433" in other_port.connect_dsn()


def test_no_host_uses_libpq_defaults() -> None:
    url = parse_url("postgresql:///db")
    assert url.host is None
    assert url.is_local
    assert parse_url(url.key) == url


def test_multi_host_urls_keep_every_host() -> None:
    url = parse_url("postgresql://u@H1:5432,h2:5433/db")
    assert url.host == "h1:5432,h2:5433"
    assert url.port is None
    assert "h1:5432,h2:5433" in url.key
    assert parse_url(url.key) == url


def test_connect_dsn_is_libpq_style_with_password() -> None:
    url = parse_url("postgres://u:DsnPw123@h/db?sslmode=require")
    assert url.connect_dsn() == "postgresql://u:DsnPw123@h:5432/db?sslmode=require"


def test_connect_dsn_refuses_sqlite() -> None:
    with pytest.raises(ConfigError):
        parse_url("sqlite:///:memory:").connect_dsn()


def test_database_url_is_immutable() -> None:
    url = parse_url(CANONICAL)
    with pytest.raises(AttributeError):
        url.host = "evil"  # type: ignore[misc]


# -- SQLite -----------------------------------------------------------------------


def test_sqlite_relative_path_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = parse_url("sqlite:///relative.db")
    assert url.dialect == "sqlite"
    assert url.database == str(tmp_path / "relative.db")
    assert os.path.isabs(url.database)
    assert url.key == f"sqlite+aiosqlite:///{tmp_path / 'relative.db'}"


def test_sqlite_relative_and_absolute_spellings_are_one_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = parse_url(f"sqlite:///{tmp_path}/data/x.db")
    assert parse_url("sqlite:///data/x.db") == absolute
    assert parse_url("sqlite:///./data/../data/x.db") == absolute
    assert parse_url(f"sqlite+aiosqlite:///{tmp_path}/data/x.db") == absolute
    assert parse_url(f"sqlite+pysqlite:///{tmp_path}/data/x.db") == absolute
    assert parse_url(f"SQLITE:///{tmp_path}/data/x.db") == absolute


def test_sqlite_tilde_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    url = parse_url("sqlite:///~/.local/share/kgents/membrane.db")
    assert url.database == str(tmp_path / ".local/share/kgents/membrane.db")
    assert "~" not in url.key


def test_sqlite_tilde_expands_to_the_given_home(tmp_path: Path) -> None:
    url = parse_url("sqlite:///~/x.db", home=str(tmp_path))
    assert url.database == str(tmp_path / "x.db")


@pytest.mark.parametrize(
    "raw",
    ["sqlite://", "sqlite:///:memory:", "sqlite+aiosqlite:///:memory:", "sqlite+aiosqlite://"],
)
def test_sqlite_memory_spellings(raw: str) -> None:
    url = parse_url(raw)
    assert url.is_memory
    assert url.database == ":memory:"
    assert url.key == "sqlite+aiosqlite:///:memory:"


def test_sqlite_file_is_not_memory(tmp_path: Path) -> None:
    url = parse_url(f"sqlite:///{tmp_path}/m.db")
    assert not url.is_memory
    assert url.is_local


def test_sqlite_query_is_sorted(tmp_path: Path) -> None:
    a = parse_url(f"sqlite:///{tmp_path}/x.db?mode=ro&cache=shared")
    b = parse_url(f"sqlite:///{tmp_path}/x.db?cache=shared&mode=ro")
    assert a == b
    assert a.key.endswith("x.db?cache=shared&mode=ro")


@pytest.mark.parametrize("name", ["a?b", "100%41", "with space", "ünï"])
def test_sqlite_key_parses_back_to_the_same_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name / "x.db"
    url = DatabaseURL(dialect="sqlite", database=str(path))
    again = parse_url(url.key)
    assert again.database == str(path)
    assert again == url


@pytest.mark.parametrize("raw", ["sqlite://host/path.db", "sqlite://relative.db"])
def test_sqlite_with_a_host_is_an_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="three slashes"):
        parse_url(raw, source="KGENTS_DATABASE_URL")


def test_sqlite_file_uri_is_an_error() -> None:
    with pytest.raises(ConfigError, match="file:"):
        parse_url("sqlite:///file:x.db?mode=memory")


# -- redaction --------------------------------------------------------------------


def test_str_and_repr_never_show_the_password() -> None:
    url = parse_url("postgresql://u:StrReprPw1@h/db")
    for text in (str(url), repr(url), f"{url}", f"{url!r}", str([url]), str({1: url})):
        assert "StrReprPw1" not in text
    assert str(url) == "postgresql+asyncpg://u:***@h:5432/db"
    assert repr(url) == "DatabaseURL('postgresql+asyncpg://u:***@h:5432/db')"
    assert url.redacted() == str(url)
    # The key, by contrast, is the full identity (so the masking above is meaningful).
    assert "StrReprPw1" in url.key


def test_secret_query_parameters_are_redacted() -> None:
    url = parse_url("postgresql://u:QpwMain1@h/db?sslpassword=SslKeyPw2&sslmode=require")
    assert "SslKeyPw2" not in str(url)
    assert "SslKeyPw2" not in repr(url)
    assert "sslpassword=***" in str(url)
    assert "SslKeyPw2" in url.key


def test_redacted_percent_encoded_password() -> None:
    url = parse_url("postgresql://u:Pct%40Secret@h/db")
    assert "Pct" not in str(url)
    assert "Secret" not in repr(url)


def test_redact_text_masks_url_userinfo_of_unparsed_urls() -> None:
    text = f"could not connect to postgresql://bob:{UNPARSED_PW}@db:5432/x: refused"
    out = redact_text(text)
    assert UNPARSED_PW not in out
    assert out == "could not connect to postgresql://bob:***@db:5432/x: refused"


def test_redact_text_masks_a_password_with_a_raw_at_sign() -> None:
    assert redact_text("mysql://bob:Un@Parsed-Secret@db/x") == "mysql://bob:***@db/x"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=db user=bob password=KwPlain42 dbname=x", "KwPlain42"),
        ("host=db PASSWORD=KwUpper42", "KwUpper42"),
        ("host=db password='Kw Quoted 42' dbname=x", "Kw Quoted 42"),
        ('host=db password="KwDouble42"', "KwDouble42"),
        ("host=db password = KwSpaced42", "KwSpaced42"),
        ("?sslmode=require&password=KwQuery42&x=1", "KwQuery42"),
        ("sslpassword=KwSsl42", "KwSsl42"),
    ],
)
def test_redact_text_masks_password_pairs(text: str, secret: str) -> None:
    out = redact_text(text)
    assert secret not in out
    assert "***" in out


def test_redact_text_keeps_the_rest_of_a_password_pair() -> None:
    assert redact_text("host=db password=KwKeep42 dbname=x") == "host=db password=*** dbname=x"


def test_redact_text_masks_passwords_of_urls_parsed_before() -> None:
    parse_url("postgresql://u:Remembered-Pw-77@h/db")
    out = redact_text('FATAL: auth failed, got "Remembered-Pw-77" from client')
    assert "Remembered-Pw-77" not in out
    assert out == 'FATAL: auth failed, got "***" from client'


def test_redact_text_masks_percent_decoded_password_parsed_before() -> None:
    parse_url("postgresql://u:Dec%2FOded%40Pw@h/db")
    assert "Dec/Oded@Pw" not in redact_text("the password Dec/Oded@Pw was refused")


def test_redact_text_leaves_text_without_secrets_alone() -> None:
    for text in (
        "",
        "connection refused",
        "postgresql+asyncpg://u@h:5432/db",
        "postgresql://h:5432/db",
        "sqlite+aiosqlite:////home/u/.local/share/kgents/membrane.db",
        "user=bob dbname=x",
    ):
        assert redact_text(text) == text


def test_short_passwords_do_not_mangle_ordinary_words() -> None:
    parse_url("postgresql://u:ab@h/db")
    assert redact_text("about a cab") == "about a cab"
    # ...but they are still masked inside a URL.
    assert redact_text("postgresql://u:ab@h/db") == "postgresql://u:***@h/db"


def test_password_equal_to_user_or_database_does_not_mangle_logs() -> None:
    # The protocol's docker default is kgents:kgents@.../kgents; a password equal to the
    # user is shown by the user field anyway, so it must not mask every "kgents".
    parse_url(DEFAULT_UNIFIED_URL)
    parse_url("postgresql://postgres:postgres@db.example.com/app")
    text = "opened postgresql+asyncpg://kgents:***@localhost:5432/kgents at ~/.local/share/kgents"
    assert redact_text(text) == text
    # The password itself is still hidden in the URL's own forms.
    url = parse_url("postgresql://postgres:postgres@db.example.com/app")
    assert str(url) == "postgresql+asyncpg://postgres:***@db.example.com:5432/app"


# -- errors -----------------------------------------------------------------------


BAD_URLS = [
    pytest.param(f"mysql://u:{UNPARSED_PW}@h/db", "mysql", id="mysql"),
    pytest.param(f"mongodb://u:{UNPARSED_PW}@h/db", "mongodb", id="mongodb"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:99999/db", "the port", id="port-too-big"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:0/db", "the port", id="port-zero"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:abc/db", "the port", id="port-letters"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:-1/db", "the port", id="port-negative"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:/db", "the port", id="port-empty"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h:²/db", "the port", id="port-superscript"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@[::1]:99999/db", "the port", id="ipv6-bad-port"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@[::1/db", "closing ']'", id="ipv6-unclosed"),
    pytest.param(
        f"postgresql://u:{UNPARSED_PW}@[::1]x/db", "after the IPv6 host", id="ipv6-trailing"
    ),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@::1/db", "brackets", id="ipv6-unbracketed"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@:5432/db", "the host is empty", id="empty-host"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h/db#frag", "fragment", id="fragment"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h/a/b", "contains '/'", id="slash-in-db"),
    pytest.param(f"postgresql://u:{UNPARSED_PW}@h/db?novalue", "query string", id="bad-query"),
    pytest.param("garbage", "not a URL", id="garbage"),
    pytest.param("://nothing", "not a URL", id="no-scheme"),
    pytest.param("localhost:5432/db", "not a URL", id="no-scheme-separator"),
    pytest.param("", "not a URL", id="empty"),
]


@pytest.mark.parametrize(("raw", "why"), BAD_URLS)
def test_bad_urls_raise_config_error_naming_source_and_accepted(raw: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(raw, source="KGENTS_DATABASE_URL")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith("KGENTS_DATABASE_URL=")
    assert why in message
    assert UNPARSED_PW not in message
    assert "Accepted:" in message
    assert "postgresql+asyncpg://" in message
    assert "sqlite" in message


def test_bad_url_message_shows_the_redacted_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(f"mysql://bob:{UNPARSED_PW}@db.example.com/app", source="MY_VAR")
    message = str(info.value)
    assert "MY_VAR='mysql://bob:***@db.example.com/app'" in message
    assert "'mysql' is not supported" in message


def test_bad_url_with_raw_at_sign_in_password_does_not_leak_any_of_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("postgresql://u:Half@LeakPw@h:bad/db", source="KGENTS_DATABASE_URL")
    message = str(info.value)
    assert "LeakPw" not in message
    assert "Half" not in message


# -- redaction that does not depend on parsing (issue: a password printed) ---------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        # the '/' ends the netloc: the parser used to call the password a port
        (
            "postgresql://user:s3cretPW/x@127.0.0.1:55432/db",
            "'postgresql://user:***@127.0.0.1:55432/db'",
        ),
        ("postgresql:/u:s3cretPW@127.0.0.1/db", "'postgresql:/u:***@127.0.0.1/db'"),
        ("postgresql//u:s3cretPW@127.0.0.1/db", "'postgresql//u:***@127.0.0.1/db'"),
        ("u:s3cretPW@127.0.0.1/db", "'u:***@127.0.0.1/db'"),
        ("postgresq://u:s3cretPW@127.0.0.1/db", "'postgresq://u:***@127.0.0.1/db'"),
        ("postgresql://u:s3cret PW/x@h/db", "'postgresql://u:***@h/db'"),
        ("postgresql://u:s3cretPW?x@h/db", "'postgresql://u:***@h/db'"),
        ("sqlite:///u:s3cretPW@h/db", "'sqlite:///u:***@h/db'"),
        ("postgresq://h/db?password=s3cret PW&x=1", "'postgresq://h/db?password=***&x=1'"),
    ],
)
def test_malformed_values_are_redacted_without_parsing(raw: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(raw, source="KGENTS_DATABASE_URL")
    message = str(info.value)
    assert "s3cret" not in message
    assert f"KGENTS_DATABASE_URL={shown} is not usable" in message
    # ...and not in what error trackers keep either (the suppressed context).
    assert info.value.__context__ is None or "s3cret" not in str(info.value.__context__)


def test_placeholder_form_can_be_pasted_and_filled_in() -> None:
    url = parse_url("postgres://app:Fill-Me-1@db.example.com/kgents?sslpassword=K")
    assert url.with_placeholder() == (
        "postgresql+asyncpg://app:<password>@db.example.com:5432/kgents?sslpassword=<password>"
    )
    assert parse_url(url.with_placeholder().replace("<password>", "Fill-Me-1", 1)).password == (
        "Fill-Me-1"
    )


def test_multi_host_url_lists_each_host_and_port() -> None:
    url = parse_url("postgresql://u:pw@H1:5601,h2:5602,h3/db")
    assert url.hosts == (("h1", 5601), ("h2", 5602), ("h3", 5432))
    assert url.key == "postgresql+asyncpg://u:pw@h1:5601,h2:5602,h3/db"
    assert parse_url("postgresql://[::1]:5601,[::2]/db").hosts == (("::1", 5601), ("::2", 5432))
    assert parse_url("postgresql://h1:5601/db").hosts == ()


@pytest.mark.parametrize(
    "raw", ["postgresql://h1:x,h2/db", "postgresql://,h2/db", "postgresql://h1:,h2/db"]
)
def test_malformed_host_list_is_a_config_error(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"host list|port"):
        parse_url(raw)
