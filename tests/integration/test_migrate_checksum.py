"""The canonical form of a row is one definition on both sides.

The content checksum: PostgreSQL's aggregate over stored rows gives exactly what
Python gives for the same canonical values, for every kind of column, NULLs and edge
values included (a difference here would make every verify of such a column fail,
or worse, pass on different content). connman's own binary COPY
(connman.migrate.pgcopy): every type it encodes arrives as the value it was, a subset
of a batch can be sent again, and the rows' bytes hash to the checksum PostgreSQL
computes over what it stored."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from connman.migrate.checksum import MASK, layout_for, row_sum, sql_checksum, sum_digests
from connman.migrate.convert import converter_for
from connman.migrate.kinds import ColumnType, from_postgres
from connman.migrate.pgcopy import CopyRows, encode_column, encoders_for
from connman.urls import parse_url

pytestmark = pytest.mark.postgres

COLUMNS = [
    ("t", "text"),
    ("v", "character varying(20)"),
    ("b", "bytea"),
    ("i2", "smallint"),
    ("i4", "integer"),
    ("i8", "bigint"),
    ("f8", "double precision"),
    ("f4", "real"),
    ("ok", "boolean"),
    ("at", "timestamp with time zone"),
    ("naive", "timestamp without time zone"),
    ("day", "date"),
]

ROWS: list[tuple[Any, ...]] = [
    (
        "a",
        "b",
        b"\x00\xff",
        1,
        2,
        3,
        0.5,
        0.25,
        True,
        datetime(2025, 1, 2, tzinfo=UTC),
        datetime(2025, 1, 2, 3, 4, 5, 6),
        date(2025, 1, 2),
    ),
    (
        "ünïcødé ✓ 𝄞",
        "",
        b"",
        -32768,
        -(2**31),
        -(2**63),
        -0.0,
        -1.5,
        False,
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1900, 1, 1),
        date(1970, 1, 1),
    ),
    (None,) * 12,
    (
        "x" * 5000,
        "y" * 20,
        bytes(range(256)) * 40,
        32767,
        2**31 - 1,
        2**63 - 1,
        math.inf,
        float("nan"),
        True,
        datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=1),
        datetime(2999, 12, 31, 23, 59, 59),
        date(1999, 12, 31),
    ),
    ("", None, None, 0, None, 0, 1e-300, None, None, None, None, date(2000, 1, 1)),
]


async def test_python_and_postgres_agree_on_every_kind(postgres_database: str) -> None:
    types = [from_postgres(ddl) for _, ddl in COLUMNS]
    assert all(t.kind not in ("json", "numeric") for t in types)
    layout = layout_for(types, [0])
    converters = [
        converter_for(name, kind, target="postgresql")
        for (name, _), kind in zip(COLUMNS, types, strict=True)
    ]
    canonical = [
        tuple(None if v is None else c.convert(v)[1] for c, v in zip(converters, row, strict=True))
        for row in ROWS
    ]
    conn = await asyncpg.connect(parse_url(postgres_database).connect_dsn())
    try:
        await conn.execute(
            "CREATE TABLE kinds (" + ", ".join(f"{n} {ddl}" for n, ddl in COLUMNS) + ")"
        )
        await conn.copy_records_to_table("kinds", records=ROWS)
        names = [n for n, _ in COLUMNS]
        count, total = await conn.fetchrow(sql_checksum("kinds", names, layout))
        assert count == len(ROWS)
        assert int(total) & (2**64 - 1) == row_sum(layout, canonical, part="easy")

        # And it sees a change in any one column (each undone before the next).
        expected = row_sum(layout, canonical, part="easy")
        for name in names[1:]:
            change = conn.transaction()
            await change.start()
            await conn.execute(f"UPDATE kinds SET {name} = NULL WHERE t = 'a'")
            _, changed = await conn.fetchrow(sql_checksum("kinds", names, layout))
            await change.rollback()
            assert int(changed) & (2**64 - 1) != expected, name
    finally:
        await conn.close()


def test_single_precision_layout_differs_from_double() -> None:
    double = layout_for([ColumnType("float", "double precision")], [0])
    single = layout_for([ColumnType("float", "real", single=True)], [0])
    assert row_sum(double, [(0.5,)]) != row_sum(single, [(0.5,)])


COPY_COLUMNS = [*COLUMNS, ("doc", "jsonb"), ("raw", "json")]

COPY_ROWS: list[tuple[Any, ...]] = [
    ("a", "b", b"\x00\xff", 1, 2, 3, 0.5, 0.25, True, datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
     datetime(1999, 12, 31, 23, 59, 59), date(1970, 1, 1), '{"b": 1, "a": [1, 2]}', '{"z": 1}'),
    ("ünïcødé ✓".encode(), "x" * 8, b"", -32768, -(2**31), -(2**63), -math.inf, -0.0, False,
     datetime(1900, 1, 1, tzinfo=UTC), datetime(2000, 1, 1), date(2999, 12, 31), "[]", "null"),
    (None,) * 14,
]  # fmt: skip


async def test_every_type_arrives_and_hashes_as_postgres_does(postgres_database: str) -> None:
    types = [from_postgres(ddl) for _, ddl in COPY_COLUMNS]
    encoders = encoders_for(types)
    assert encoders is not None
    columns = [
        encode_column(e, list(v))
        for e, v in zip(encoders, zip(*COPY_ROWS, strict=True), strict=True)
    ]
    batch = CopyRows.from_columns(columns)
    assert len(batch) == len(COPY_ROWS)
    names = [n for n, _ in COPY_COLUMNS]
    ddl = ", ".join(f"{n} {t}" for n, t in COPY_COLUMNS)
    conn = await asyncpg.connect(parse_url(postgres_database).connect_dsn())
    try:
        await conn.execute(f"CREATE TABLE whole ({ddl}); CREATE TABLE part ({ddl})")
        await conn.copy_to_table("whole", source=batch.stream(), columns=names, format="binary")
        got = await conn.fetch("SELECT * FROM whole ORDER BY ok DESC NULLS LAST")
        for row, want in zip(got, COPY_ROWS, strict=True):
            for (name, _), value, expected in zip(COPY_COLUMNS, row, want, strict=True):
                if isinstance(expected, bytes) and name == "t":
                    expected = expected.decode()
                if name in ("doc", "raw") and expected is not None:
                    value, expected = json.loads(value), json.loads(expected)
                assert value == expected or (
                    isinstance(value, float) and math.isnan(value) and math.isnan(expected)
                ), name

        # The checksum of the easy columns (all but JSON) over the rows as sent
        # equals the server's over the rows as stored.
        easy_types = [t for t in types if t.kind != "json"]
        easy = CopyRows.from_columns(
            [c for c, t in zip(columns, types, strict=True) if t.kind != "json"]
        )
        layout = layout_for(easy_types, [0])
        easy_names = [n for (n, _), t in zip(COPY_COLUMNS, types, strict=True) if t.kind != "json"]
        count, total = await conn.fetchrow(sql_checksum("whole", easy_names, layout))
        assert count == len(COPY_ROWS)
        assert int(total) & MASK == sum_digests(easy.rows()) & MASK

        # A subset, in another order, as a resend after a conflict would do.
        await conn.copy_to_table(
            "part", source=batch.subset([2, 0]).stream(), columns=names, format="binary"
        )
        assert [r["i2"] for r in await conn.fetch("SELECT i2 FROM part")] == [None, 1]
        assert len(batch.slice(1, 3)) == 2
    finally:
        await conn.close()


def test_types_without_a_binary_form_here_keep_asyncpg() -> None:
    assert encoders_for([from_postgres("numeric(10,2)")]) is None
    assert encoders_for([from_postgres("uuid")]) is None
    assert encoders_for([from_postgres("text"), from_postgres("integer")]) is not None


def test_an_empty_batch_is_just_header_and_trailer() -> None:
    assert len(CopyRows.from_columns([([], [])])) == 0
