"""Conversions, type inference and the checksum of connman.migrate (no database)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from connman.migrate.checksum import layout_for, row_sum
from connman.migrate.convert import Reject, RowConverter, converter_for
from connman.migrate.kinds import ColumnType, ValueStats, from_postgres, from_sqlite, infer_sqlite


def convert(kind: ColumnType, value: object, target: str = "postgresql") -> tuple[object, object]:
    return converter_for("c", kind, target=target).convert(value)


JSONB = ColumnType("json", "JSONB")
TSTZ = ColumnType("datetime", "TIMESTAMPTZ")
TS = ColumnType("datetime", "TIMESTAMP", timezone=False)


def test_json_canonical_form_ignores_spelling() -> None:
    # What jsonb gives back for a document must hash like the source's text.
    source = '{"b": [1.0, 1e2, 0.00001], "a": {"y": null, "x": "é"}}'
    from_pg = '{"a": {"x": "é", "y": null}, "b": [1.0, 100, 0.00001]}'
    driver, canonical = convert(JSONB, source)
    assert driver == source  # the target gets the original text
    assert canonical == convert(JSONB, from_pg)[1]
    assert convert(JSONB, '{"a": 1}')[1] != convert(JSONB, '{"a": 2}')[1]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("{not json", "not valid JSON"),
        ('{"a": NaN}', "NaN"),
        ('{"a": "\\u0000"}', "\\u0000"),
        ('"\\ud800"', "cannot be stored"),
    ],
)
def test_json_rejects_what_jsonb_refuses(value: str, why: str) -> None:
    with pytest.raises(Reject, match=why.replace("\\", "\\\\")):
        convert(JSONB, value)


def test_times_from_iso_text_epoch_and_naive_text() -> None:
    moment = datetime(2025, 3, 10, 10, 0, tzinfo=UTC)
    assert convert(TSTZ, "2025-03-10T12:00:00+02:00")[0] == moment
    assert convert(TSTZ, "2025-03-10 10:00:00")[0] == moment  # naive text is UTC
    assert convert(TSTZ, "2025-03-10T10:00:00Z")[0] == moment
    assert convert(TSTZ, moment.timestamp())[0] == moment  # epoch seconds
    assert convert(TSTZ, str(int(moment.timestamp())))[0] == moment
    assert convert(TSTZ, "2025-03-10 10:00:00.000000")[1] == int(moment.timestamp()) * 10**6
    # Naive target: aware values become UTC wall-clock digits.
    assert convert(TS, "2025-03-10T12:00:00+02:00")[0] == datetime(2025, 3, 10, 10, 0)
    # SQLite target of the SQLAlchemy track: SQLAlchemy's own text format, in UTC.
    style = ColumnType("datetime", "DATETIME", time_style="sqlalchemy")
    assert convert(style, moment, "sqlite")[0] == "2025-03-10 10:00:00.000000"
    with pytest.raises(Reject, match="not an ISO 8601 time"):
        convert(TSTZ, "yesterday")


def test_scalars() -> None:
    boolean = ColumnType("bool", "BOOLEAN")
    assert convert(boolean, 1) == (True, True)
    assert convert(boolean, "false") == (False, False)
    assert convert(boolean, True, "sqlite") == (1, True)
    with pytest.raises(Reject):
        convert(boolean, 2)
    small = ColumnType("int", "INTEGER", int_bits=32)
    assert convert(small, 3.0) == (3, 3)
    with pytest.raises(Reject, match="whole number"):
        convert(small, 1.5)  # asyncpg would truncate it silently
    with pytest.raises(Reject, match="32-bit"):
        convert(small, 2**31)
    real = ColumnType("float", "REAL", single=True)
    assert convert(real, 0.1)[0] == pytest.approx(0.1, rel=1e-7) and convert(real, 0.1)[0] != 0.1
    text = ColumnType("text", "VARCHAR(5)", max_length=5)
    with pytest.raises(Reject, match="NUL"):
        convert(text, "a\x00b")
    with pytest.raises(Reject, match="varchar"):
        convert(text, "toolong")
    assert convert(ColumnType("text", "TEXT"), "a\x00b", "sqlite")[0] == "a\x00b"
    assert convert(ColumnType("bytes", "BYTEA"), "é") == (b"\xc3\xa9", b"\xc3\xa9")
    assert convert(ColumnType("date", "DATE"), "2025-01-02")[0] == date(2025, 1, 2)
    assert convert(ColumnType("numeric", "NUMERIC"), "1.50")[1] == "1.5"
    assert convert(ColumnType("numeric", "NUMERIC"), Decimal("1.5"))[1] == "1.5"


def test_batch_conversion_rejects_rows_not_batches() -> None:
    converter = RowConverter(
        [
            converter_for("id", ColumnType("text", "TEXT"), target="postgresql", nullable=False),
            converter_for("tags", JSONB, target="postgresql"),
        ],
        [0],
    )
    prepared = converter.prepare([("a", "[1]"), ("b", "[oops"), (None, "[]"), ("d", None)])
    assert [r[0] for r in prepared.rows] == ["a", "d"]
    assert [i for i, _ in prepared.rejects] == [1, 2]
    assert "NOT NULL" in prepared.rejects[1][1]


def test_checksum_is_order_free_and_sees_every_change() -> None:
    types = [ColumnType("text", "TEXT"), ColumnType("int", "BIGINT"), ColumnType("float", "F")]
    layout = layout_for(types, [0])
    rows = [("a", 1, 0.5), ("b", None, 1.5), ("c", 3, None)]
    total = row_sum(layout, rows)
    assert row_sum(layout, rows[::-1]) == total
    assert row_sum(layout, rows[:1]) + row_sum(layout, rows[1:]) & (2**64 - 1) == total
    for changed in (("a", 2, 0.5), ("a", 1, 0.25), ("a", None, 0.5), ("a1", 1, 0.5)):
        assert row_sum(layout, [changed, *rows[1:]]) != total
    # Framing: moving bytes between columns changes the sum.
    two = layout_for([ColumnType("text", "TEXT")] * 2, [0])
    assert row_sum(two, [("ab", "c")]) != row_sum(two, [("a", "bc")])


def test_type_names() -> None:
    assert from_postgres("character varying(64)").max_length == 64
    assert from_postgres("timestamp without time zone").timezone is False
    assert from_postgres("uuid").cast_text
    assert from_sqlite("DATETIME").kind == "datetime"
    assert from_sqlite("VARCHAR(32)").kind == "text"
    assert from_sqlite("").kind == "text"


def test_inference_from_values() -> None:
    def stats(**kw: int) -> ValueStats:
        return ValueStats(rows=10, **kw)

    assert infer_sqlite("TEXT", stats(texts=10, iso_times=10))[0].ddl == "TIMESTAMPTZ"
    assert infer_sqlite("DATETIME", stats(texts=10, iso_times=9))[0].ddl == "TEXT"  # keep all
    assert infer_sqlite("DATETIME", stats(integers=10))[0].ddl == "TIMESTAMPTZ"  # epoch
    assert infer_sqlite("BOOLEAN", stats(integers=10, zero_one=10))[0].ddl == "BOOLEAN"
    assert infer_sqlite("INTEGER", stats(integers=10, zero_one=10))[0].ddl == "BIGINT"
    assert infer_sqlite("TEXT", stats(texts=10, json_docs=10))[0].ddl == "JSONB"
    assert infer_sqlite("", stats(texts=5, blobs=5))[0].ddl == "BYTEA"
    assert infer_sqlite("REAL", stats(integers=4, reals=6))[0].ddl == "DOUBLE PRECISION"
    assert infer_sqlite("TEXT", stats(texts=10, iso_dates=10))[0].ddl == "DATE"
    assert json.loads("1") == 1


def test_raw_text_is_checked_as_bytes_and_kept_as_bytes() -> None:
    """Text read from SQLite as UTF-8 bytes (binary COPY): valid text passes as it
    is; NUL, invalid UTF-8 and too many characters are rejected with the reason."""
    column = converter_for(
        "c", ColumnType("text", "varchar(2)", max_length=2), target="postgresql", raw_text=True
    )
    converter = RowConverter([column])
    good = [(b"ab",), ("é".encode() * 2,), (None,), (42,)]
    prepared = converter.prepare(good)
    assert prepared.rejects == []
    assert [r[0] for r in prepared.rows] == [b"ab", "éé".encode(), None, b"42"]
    bad = converter.prepare([(b"a\x00",), (b"\xff",), ("é".encode() * 3,)])
    reasons = [why for _, why in bad.rejects]
    assert "NUL" in reasons[0] and "not UTF-8" in reasons[1] and "varchar(2)" in reasons[2]
    # The same content read as str or as bytes has the same checksum.
    as_str = RowConverter([converter_for("c", ColumnType("text", "text"), target="postgresql")])
    as_raw = RowConverter(
        [converter_for("c", ColumnType("text", "text"), target="postgresql", raw_text=True)]
    )
    texts = [("ünï",), ("a",), (None,)]
    assert (
        as_str.prepare(texts).checksum
        == as_raw.prepare([(None if t is None else t.encode(),) for (t,) in texts]).checksum
    )


def test_raw_text_in_a_time_column_is_decoded_then_parsed() -> None:
    column = converter_for(
        "t", ColumnType("datetime", "timestamptz"), target="postgresql", raw_text=True
    )
    prepared = RowConverter([column]).prepare([(b"2025-01-02T03:04:05Z",), (b"\xff",)])
    assert prepared.rows[0][0].isoformat() == "2025-01-02T03:04:05+00:00"
    assert "not UTF-8" in prepared.rejects[0][1]
