"""The content checksum is one definition: PostgreSQL's aggregate over stored rows
gives exactly what Python gives for the same canonical values, for every kind of
column, NULLs and edge values included (a difference here would make every verify of
such a column fail, or worse, pass on different content)."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from connman.migrate.checksum import layout_for, row_sum, sql_checksum
from connman.migrate.convert import converter_for
from connman.migrate.kinds import ColumnType, from_postgres
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
