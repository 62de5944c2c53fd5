"""connman's own binary COPY (connman.migrate.pgcopy) against a real server: every
type it encodes arrives as the value it was, a subset of a batch can be sent again,
and the rows' bytes hash to the checksum PostgreSQL computes over what it stored."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
import pytest

from connman.migrate.checksum import MASK, layout_for, sql_checksum, sum_digests
from connman.migrate.kinds import from_postgres
from connman.migrate.pgcopy import CopyRows, encode_column, encoders_for
from connman.urls import parse_url

pytestmark = pytest.mark.postgres

COLUMNS = [
    ("t", "text"),
    ("v", "character varying(8)"),
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
    ("doc", "jsonb"),
    ("raw", "json"),
]

ROWS: list[tuple[Any, ...]] = [
    ("a", "b", b"\x00\xff", 1, 2, 3, 0.5, 0.25, True, datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
     datetime(1999, 12, 31, 23, 59, 59), date(1970, 1, 1), '{"b": 1, "a": [1, 2]}', '{"z": 1}'),
    ("ünïcødé ✓".encode(), "x" * 8, b"", -32768, -(2**31), -(2**63), -math.inf, -0.0, False,
     datetime(1900, 1, 1, tzinfo=UTC), datetime(2000, 1, 1), date(2999, 12, 31), "[]", "null"),
    (None,) * 14,
]  # fmt: skip


async def test_every_type_arrives_and_hashes_as_postgres_does(postgres_database: str) -> None:
    types = [from_postgres(ddl) for _, ddl in COLUMNS]
    encoders = encoders_for(types)
    assert encoders is not None
    columns = [
        encode_column(e, list(v)) for e, v in zip(encoders, zip(*ROWS, strict=True), strict=True)
    ]
    batch = CopyRows.from_columns(columns)
    assert len(batch) == len(ROWS)
    names = [n for n, _ in COLUMNS]
    ddl = ", ".join(f"{n} {t}" for n, t in COLUMNS)
    conn = await asyncpg.connect(parse_url(postgres_database).connect_dsn())
    try:
        await conn.execute(f"CREATE TABLE whole ({ddl}); CREATE TABLE part ({ddl})")
        await conn.copy_to_table("whole", source=batch.stream(), columns=names, format="binary")
        got = await conn.fetch("SELECT * FROM whole ORDER BY ok DESC NULLS LAST")
        for row, want in zip(got, ROWS, strict=True):
            for (name, _), value, expected in zip(COLUMNS, row, want, strict=True):
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
        easy_names = [n for (n, _), t in zip(COLUMNS, types, strict=True) if t.kind != "json"]
        count, total = await conn.fetchrow(sql_checksum("whole", easy_names, layout))
        assert count == len(ROWS)
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
