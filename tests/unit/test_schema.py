"""The schema description the adapters create tables from and a migration tool reads:
complete, in dependency order, and true to the DDL it carries."""

from __future__ import annotations

import sqlite3

import pytest

from connman.kgents.schema import TRACKS, table_spec, table_specs


def test_every_track_table_has_a_spec_in_dependency_order() -> None:
    specs = table_specs()
    assert sorted(s.name for s in specs) == sorted(n for names in TRACKS.values() for n in names)
    seen: set[str] = set()
    for spec in specs:
        assert set(spec.depends_on) <= seen, f"{spec.name} comes before {spec.depends_on}"
        assert spec.name in TRACKS[spec.track]
        seen.add(spec.name)
    assert [s.name for s in table_specs("dgent")] == ["data"]
    assert [s.name for s in table_specs("brain")] == ["captures"]
    with pytest.raises(KeyError, match="known: data"):
        table_spec("nope")


def test_data_differs_between_dialects_only_in_types() -> None:
    data = table_spec("data")
    assert data.column_names == ("id", "content", "created_at", "causal_parent", "metadata")
    assert data.types("postgresql") == {
        "id": "TEXT",
        "content": "BYTEA",
        "created_at": "DOUBLE PRECISION",
        "causal_parent": "TEXT",
        "metadata": "JSONB",
    }
    assert data.types("sqlite") == {
        "id": "TEXT",
        "content": "BLOB",
        "created_at": "REAL",
        "causal_parent": "TEXT",
        "metadata": "TEXT",
    }
    assert data.column("metadata").kind == "json"
    [fk] = data.self_referencing
    assert (fk.column, fk.references, fk.on_delete, fk.deferrable) == (
        "causal_parent",
        "data",
        "SET NULL",
        True,
    )
    pg = "\n".join(data.ddl_for("postgresql"))
    assert "idx_data_id_prefix ON data (id text_pattern_ops)" in pg
    assert "WHERE causal_parent IS NOT NULL" in pg and "created_at DESC" in pg
    assert "text_pattern_ops" not in "\n".join(data.ddl_for("sqlite"))


def test_sqlalchemy_tables_are_described_from_the_models() -> None:
    crystals = table_spec("brain_crystals")
    assert crystals.track == "sqlalchemy"
    assert crystals.column("tags").types == {"postgresql": "JSONB", "sqlite": "JSON"}
    created = crystals.column("created_at")
    assert (created.kind, created.timezone, created.nullable) == ("datetime", True, False)
    assert created.types["postgresql"] == "TIMESTAMP WITH TIME ZONE"
    tags = table_spec("brain_crystal_tags")
    assert tags.depends_on == ("brain_crystals",)
    assert tags.column("id").autoincrement
    assert tags.foreign_keys[0].on_delete == "CASCADE"
    for statement in crystals.ddl_for("postgresql"):
        assert "IF NOT EXISTS" in statement
    assert "USING gin (tags)" in "\n".join(crystals.ddl_for("postgresql"))


def test_the_sqlite_ddl_is_idempotent_and_matches_the_spec() -> None:
    conn = sqlite3.connect(":memory:")
    for _ in range(2):  # the second run must change nothing and fail nowhere
        for spec in table_specs():
            for statement in spec.ddl_for("sqlite"):
                conn.execute(statement)
    for spec in table_specs():
        declared = {row[1]: row[2] for row in conn.execute(f"PRAGMA table_info({spec.name})")}
        assert declared == spec.types("sqlite"), spec.name
        indexes = {row[1] for row in conn.execute(f"PRAGMA index_list({spec.name})")}
        assert {ix.name for ix in spec.indexes if "sqlite" in ix.ddl} <= indexes
