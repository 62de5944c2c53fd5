"""A generated membrane.db holding every track, for the migration tests and the
benchmark: D-gent ``data`` with causal chains (and optionally a 10 MB blob), Brain
``captures`` with embeddings, the SQLAlchemy track (``brain_crystals`` with JSON tags
and timestamps, its tags, settings), a table connman has never seen, unicode, NULLs,
and rows that cannot be converted. Plain ``sqlite3``, as an old kgents wrote it."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from connman.kgents.schema import table_specs

BIG_BLOB_ID = "big-blob"
BAD_CRYSTAL_ID = "crystal-bad-time"
NUL_CAPTURE_ID = "capture-nul"
ORPHAN_ID = "datum-orphan"
UNKNOWN_TABLE = "field_notes"


@dataclass
class Membrane:
    """What was generated (the counts tests compare against)."""

    path: Path
    rows: dict[str, int] = field(default_factory=dict)
    bad: dict[str, set[str]] = field(default_factory=dict)
    """table -> ids of rows that cannot be converted."""


def make_membrane(
    path: Path,
    *,
    captures: int = 200,
    data: int = 300,
    crystals: int = 50,
    notes: int = 40,
    big_blob: bool = False,
    bad_rows: bool = True,
    children_first: bool = True,
    seed: int = 7,
) -> Membrane:
    """Write the file at ``path`` (replaced if present). ``children_first=False``
    writes the D-gent chains as an append-only store does, every parent first."""
    rnd = random.Random(seed)
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = DELETE")
    for spec in table_specs():
        for statement in spec.ddl_for("sqlite"):
            conn.execute(statement)
    conn.execute(
        f"CREATE TABLE {UNKNOWN_TABLE} (id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
        "body TEXT, written DATETIME, score REAL, pinned BOOLEAN, extra TEXT, raw BLOB)"
    )
    out = Membrane(path)

    # D-gent: chains of up to 6, parents inserted *after* some children (an upsert
    # in old kgents re-inserted rows), so rowid order is not parent-first.
    rows = []
    ids = [uuid.UUID(int=rnd.getrandbits(128)).hex for _ in range(data)]
    for i, datum_id in enumerate(ids):
        parent = ids[i - 1] if i % 6 else None
        content = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 64)))
        meta = {"kind": "note", "lang": "日本語", "i": i} if i % 3 else {}
        rows.append((datum_id, content, 1.7e9 + i * 0.5, parent, json.dumps(meta)))
    if children_first:
        rows.reverse()
    if big_blob:
        rows.append((BIG_BLOB_ID, rnd.randbytes(10 * 1024 * 1024), 1.8e9, None, "{}"))
    if bad_rows:
        rows.append((ORPHAN_ID, b"orphan", 1.9e9, "deleted-parent", "{}"))
        out.bad.setdefault("data", set()).add(ORPHAN_ID)
    conn.executemany("INSERT INTO data VALUES (?, ?, ?, ?, ?)", rows)
    out.rows["data"] = len(rows)

    embedding = [round(rnd.uniform(-1, 1), 6) for _ in range(128)]
    caps = []
    for i in range(captures):
        content = f"capture {i}: café ☕ — {'x' * rnd.randint(0, 80)}"
        caps.append(
            (
                f"capture-{i:06d}",
                content,
                hashlib.md5(content.encode()).hexdigest(),
                json.dumps(embedding) if i % 5 else None,
                f"2025-0{1 + i % 9}-1{i % 10}T10:{i % 60:02d}:00+00:00",
                None if i % 2 else "2025-10-01T00:00:00+00:00",
                json.dumps({"source": "test", "n": i}) if i % 4 else None,
                i % 7,
            )
        )
    if bad_rows:
        caps.append((NUL_CAPTURE_ID, "nul \x00 inside", None, None, "2025-01-01", None, None, 0))
        out.bad.setdefault("captures", set()).add(NUL_CAPTURE_ID)
    conn.executemany("INSERT INTO captures VALUES (?, ?, ?, ?, ?, ?, ?, ?)", caps)
    out.rows["captures"] = len(caps)

    crystal_rows, tag_rows = [], []
    for i in range(crystals):
        tags = ["memory", f"t{i % 5}", "ünïcode"] if i % 2 else []
        crystal_rows.append(
            (
                f"crystal-{i:04d}",
                hashlib.md5(str(i).encode()).hexdigest(),
                f"summary {i} ✓",
                json.dumps(tags),
                i,
                None if i % 3 else f"2025-02-0{1 + i % 9} 08:00:00.000000",
                None if i % 4 else f"datum-{i}",
                "capture",
                None,
                f"2025-03-0{1 + i % 9} 12:00:00.{i:06d}",
                "2025-03-10 12:00:00.000000" if i % 2 else f"2025-03-1{i % 10}T12:00:00+02:00",
            )
        )
        tag_rows.extend((f"crystal-{i:04d}", tag) for tag in tags)
    if bad_rows:
        crystal_rows.append(
            (BAD_CRYSTAL_ID, "x", "bad time", "[]", 0, None, None, None, None, "yesterday", "now")
        )
        out.bad.setdefault("brain_crystals", set()).add(BAD_CRYSTAL_ID)
    conn.executemany(
        "INSERT INTO brain_crystals (id, content_hash, summary, tags, access_count, "
        "last_accessed, datum_id, source_type, source_ref, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        crystal_rows,
    )
    conn.executemany("INSERT INTO brain_crystal_tags (crystal_id, tag) VALUES (?, ?)", tag_rows)
    conn.execute(
        "INSERT INTO brain_settings (id, default_tags, retention_days, max_crystals, config, "
        "created_at, updated_at) VALUES ('default', '[\"a\"]', 30, NULL, "
        '\'{"theme": "dark", "nested": {"k": [1, 2.5, null]}}\', '
        "'2025-01-01 00:00:00.000000', '2025-01-02 00:00:00.000000')"
    )
    out.rows.update(
        brain_crystals=len(crystal_rows), brain_crystal_tags=len(tag_rows), brain_settings=1
    )

    note_rows = []
    for i in range(notes):
        note_rows.append(
            (
                i + 1,
                f"note {i} «ελληνικά»",
                None if i % 5 == 0 else "body\nwith lines\tand tabs",
                f"2024-12-{1 + i % 28:02d}T09:30:00Z",
                i / 3,
                i % 2,
                json.dumps({"tags": [i, "x"], "ok": True}),
                bytes([i % 256]) * i if i % 3 else None,
            )
        )
    conn.executemany(f"INSERT INTO {UNKNOWN_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", note_rows)
    out.rows[UNKNOWN_TABLE] = len(note_rows)
    conn.commit()
    conn.close()
    return out
