"""Decide, before any row moves, what each table becomes on the target.

For every table of the source (or those asked for), in dependency order (a table
after the tables its foreign keys reference), a :class:`TablePlan` says:

- each column's target type and why (the target's own type when the table exists
  there; connman's schema for the tables it knows; inferred from SQLite's declared
  types and the values for the others);
- how the source is read: ``ORDER BY rowid`` (a sequential scan), or parents first
  for a table whose foreign key points into itself (D-gent's ``causal_parent``):
  still in rowid order when that order already has every parent first (an
  append-only store), else by the depth of each row in its chain (a recursive
  query, spilled to SQLite's temp storage, not held in Python);
- the DDL that creates the table, and the indexes built after its rows are in (a
  bulk load into a table without secondary indexes is faster; both are
  ``IF NOT EXISTS``, so a resumed run does the same again harmlessly);
- whether the target is incompatible (:class:`SchemaIncompatible`, raised by
  :func:`check_compatible`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from connman.kgents.schema import TableSpec
from connman.migrate.convert import RowConverter, converter_for
from connman.migrate.errors import SchemaIncompatible
from connman.migrate.kinds import (
    ColumnType,
    Kind,
    SqliteTimeStyle,
    ValueStats,
    from_postgres,
    infer_sqlite,
    postgres_ddl,
    sqlite_ddl,
)
from connman.migrate.model import Catalog, ForeignKey, Table
from connman.migrate.pgcopy import encoders_for
from connman.migrate.sqlite_side import quote_ident

__all__ = ["PlannedColumn", "TablePlan", "check_compatible", "order_tables", "plan_table"]


@dataclass(frozen=True, slots=True)
class PlannedColumn:
    """One column: where it comes from, what it becomes."""

    name: str
    source: str
    """The source's declared type."""
    target: ColumnType
    why: str
    nullable: bool = True


@dataclass(slots=True)
class TablePlan:
    """What happens to one table."""

    name: str
    source: Table
    columns: tuple[PlannedColumn, ...]
    primary_key: tuple[str, ...]
    key_types: tuple[str, ...]
    """Target types of the key columns (for the probe's array casts)."""
    origin: str
    """``connman schema (track)``, ``target table`` or ``inferred``."""
    create: tuple[str, ...] = ()
    """DDL run before the copy (empty when the table exists on the target)."""
    after: tuple[str, ...] = ()
    """DDL run after the copy (secondary indexes)."""
    serial: str | None = None
    """An auto-incrementing key column whose sequence must follow the copied ids."""
    self_fk: ForeignKey | None = None
    """The source's foreign key into the table itself: copy parents first."""
    parents_by_rowid: bool = False
    """The source's rowid order already puts parents first (see
    :meth:`SqliteFile.parents_precede <connman.migrate.sqlite_side.SqliteFile.parents_precede>`):
    read it in that order instead of by chain depth."""
    reject_orphans: bool = False
    """The target enforces that foreign key: rows whose parent is missing are rejected
    up front (by the source query) rather than by the server."""
    target_exists: bool = False
    constraints: tuple[str, ...] = ()
    """Bulk load: the primary and foreign keys, added after the rows are in (after
    :attr:`key_build`); empty when the table is created with them."""
    key_build: str | None = None
    """Bulk load: the unique index the primary key is then declared on, built side by
    side with the :attr:`after` indexes (an ``ADD PRIMARY KEY`` would lock every
    reader out while it sorts; ``USING INDEX`` only renames)."""
    depends: tuple[str, ...] = ()
    """Tables whose rows must be copied first (foreign keys, per the source and
    connman's schema)."""
    loading: bool = False
    """The target table is one a killed bulk load left without its keys: they are
    added before any row is copied (so that rows already there are found)."""
    notes: list[str] = field(default_factory=list)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Columns in copy order."""
        return tuple(c.name for c in self.columns)

    @property
    def key_index(self) -> tuple[int, ...]:
        """Positions of the primary key's columns in :attr:`column_names`."""
        names = self.column_names
        return tuple(names.index(k) for k in self.primary_key)

    def converter(self, target: str, *, raw_text: bool = False, copy: bool = False) -> RowConverter:
        """The row converter into this table on ``target``'s dialect. ``raw_text``:
        the source is read with text as UTF-8 bytes (``SqliteFile.stream(...,
        raw_text=True)``); ``copy``: batches are also encoded for a binary COPY."""
        encoders = encoders_for([c.target for c in self.columns]) if copy else None
        return RowConverter(
            [
                converter_for(
                    c.name, c.target, target=target, nullable=c.nullable, raw_text=raw_text
                )
                for c in self.columns
            ],
            self.key_index,
            copy=encoders,
        )

    def binary_copy(self, source: str, target: str) -> bool:
        """Whether a copy from the ``source`` dialect goes through connman's binary
        COPY (SQLite into PostgreSQL, every column type one :mod:`pgcopy
        <connman.migrate.pgcopy>` encodes), reading text as bytes."""
        return (
            source == "sqlite"
            and target == "postgresql"
            and encoders_for([c.target for c in self.columns]) is not None
        )

    def source_sql(self, dialect: str) -> str:
        """The query that reads the source table, columns in copy order."""
        table = quote_ident(self.source.name)
        names = []
        for column in self.columns:
            declared = self.source.column(column.name)
            cast = declared is not None and declared.type is not None and declared.type.cast_text
            quoted = quote_ident(column.name)
            names.append(f"t.{quoted}::text" if cast and dialect == "postgresql" else f"t.{quoted}")
        select = ", ".join(names)
        fk = self.self_fk
        if fk is not None:
            pk, ref, col = (
                quote_ident(self.primary_key[0]),
                quote_ident(fk.referenced),
                quote_ident(fk.column),
            )
            if self.parents_by_rowid and dialect == "sqlite":
                # Rowid order is parents first already; the last column flags a row
                # whose parent is missing ("orphan"), as the chain query does.
                return (
                    f"SELECT {select}, (t.{col} IS NOT NULL AND NOT EXISTS "
                    f"(SELECT 1 FROM {table} AS p WHERE p.{ref} = t.{col})) "
                    f"FROM {table} AS t ORDER BY t.rowid"
                )
            # Rows whose parent is missing are roots too (depth 0) and flagged: the
            # last column says "orphan". Rows in a cycle are never reached (see
            # unreached_sql).
            return (
                f"WITH RECURSIVE chain(k, depth) AS ("
                f"SELECT {pk}, 0 FROM {table} WHERE {col} IS NULL "
                f"OR {col} NOT IN (SELECT {ref} FROM {table} WHERE {ref} IS NOT NULL) "
                f"UNION ALL SELECT c.{pk}, chain.depth + 1 FROM {table} AS c "
                f"JOIN chain ON c.{col} = chain.k) "
                f"SELECT {select}, (chain.depth = 0 AND t.{col} IS NOT NULL) "
                f"FROM chain JOIN {table} AS t ON t.{pk} = chain.k "
                f"ORDER BY chain.depth, chain.k"
            )
        if dialect == "sqlite" and self.source.rowid:
            return f"SELECT {select} FROM {table} AS t ORDER BY t.rowid"
        return f"SELECT {select} FROM {table} AS t"

    def unreached_sql(self) -> str | None:
        """For a self-referencing table: the keys the chain query cannot reach
        (rows in a causal cycle)."""
        fk = self.self_fk
        if fk is None:
            return None
        table, pk = quote_ident(self.source.name), quote_ident(self.primary_key[0])
        col, ref = quote_ident(fk.column), quote_ident(fk.referenced)
        return (
            f"WITH RECURSIVE chain(k) AS ("
            f"SELECT {pk} FROM {table} WHERE {col} IS NULL "
            f"OR {col} NOT IN (SELECT {ref} FROM {table} WHERE {ref} IS NOT NULL) "
            f"UNION ALL SELECT c.{pk} FROM {table} AS c JOIN chain ON c.{col} = chain.k) "
            f"SELECT {pk} FROM {table} WHERE {pk} NOT IN (SELECT k FROM chain) ORDER BY {pk}"
        )


def order_tables(tables: Sequence[Table], specs: dict[str, TableSpec]) -> list[Table]:
    """``tables`` in dependency order (referenced tables first), ties by name."""
    names = {t.name for t in tables}
    deps: dict[str, set[str]] = {}
    for table in tables:
        spec = specs.get(table.name)
        wanted = set(spec.depends_on) if spec else set()
        wanted |= {fk.table for fk in table.foreign_keys if fk.table != table.name}
        deps[table.name] = wanted & names
    ordered: list[Table] = []
    done: set[str] = set()
    by_name = {t.name: t for t in tables}
    while len(ordered) < len(tables):
        ready = sorted(n for n in by_name if n not in done and deps[n] <= done)
        if not ready:  # a cycle between tables: keep the rest in name order
            ready = sorted(n for n in by_name if n not in done)
        for name in ready:
            ordered.append(by_name[name])
            done.add(name)
    return ordered


def plan_table(
    source: Table,
    *,
    source_dialect: str,
    target_dialect: str,
    target: Table | None,
    spec: TableSpec | None,
    stats: dict[str, ValueStats] | None = None,
) -> TablePlan:
    """The plan for one table (see the module docstring)."""
    copied = [c for c in source.columns if not c.generated]
    notes: list[str] = []
    columns: list[PlannedColumn] = []
    for column in copied:
        declared = column.declared or "(none)"
        chosen: ColumnType
        if target is not None and (existing := target.column(column.name)) is not None:
            assert existing.type is not None
            chosen, why = existing.type, "the target's column"
            if target_dialect == "sqlite" and spec is not None and column.name in spec.column_names:
                chosen, why = _from_spec(spec, column.name, target_dialect), "connman schema"
        elif spec is not None and column.name in spec.column_names:
            chosen, why = _from_spec(spec, column.name, target_dialect), "connman schema"
        elif source_dialect == "postgresql":
            assert column.type is not None
            kind = column.type.kind
            chosen = ColumnType(
                kind, sqlite_ddl(kind) if target_dialect == "sqlite" else column.declared
            )
            why = "from the source's type"
        elif target_dialect == "postgresql":
            chosen, why = infer_sqlite(
                column.declared, (stats or {}).get(column.name, ValueStats())
            )
            why = f"inferred: {why}"
        else:
            assert column.type is not None
            chosen, why = column.type, "the source's declared type"
        nullable = column.nullable
        if target is not None and (existing := target.column(column.name)) is not None:
            nullable = existing.nullable
        elif spec is not None and column.name in spec.column_names:
            nullable = spec.column(column.name).nullable
        columns.append(PlannedColumn(column.name, declared, chosen, why, nullable))

    key = (
        tuple(target.primary_key)
        if target is not None and target.primary_key
        else source.primary_key
    )
    if spec is not None and not key:
        key = spec.primary_key
    key_types = tuple(
        _array_type(next(c.target for c in columns if c.name == k), target_dialect)
        for k in key
        if any(c.name == k for c in columns)
    )
    origin = (
        "target table"
        if target is not None
        else (
            f"connman schema ({spec.track})"
            if spec is not None
            else "inferred"
            if source_dialect == "sqlite"
            else "source table"
        )
    )
    plan = TablePlan(
        name=source.name,
        source=source,
        columns=tuple(columns),
        primary_key=key,
        key_types=key_types,
        origin=origin,
        target_exists=target is not None,
        notes=notes,
    )
    if len(source.primary_key) == 1:
        plan.self_fk = source.self_reference
        if plan.self_fk is None and spec is not None:
            fk = next(iter(spec.self_referencing), None)
            if fk is not None:
                plan.self_fk = ForeignKey(fk.column, fk.references, fk.referenced_column)
    enforced = target.self_reference if target is not None else None
    if target is None and spec is not None and spec.self_referencing:
        enforced = plan.self_fk
    plan.reject_orphans = enforced is not None and plan.self_fk is not None
    wanted = {fk.table for fk in source.foreign_keys if fk.table != source.name}
    plan.depends = tuple(sorted(wanted | set(spec.depends_on if spec is not None else ())))
    _ddl(plan, spec, target, target_dialect)
    if target_dialect == "postgresql" and key and (target is None or _loading(target)):
        _bulk(plan, spec, loading=target is not None)
    if not key:
        notes.append(
            "no primary key: copied in one transaction, all or nothing; a target table "
            "that already has rows must hold exactly these (same count and checksum)"
        )
    return plan


def _from_spec(spec: TableSpec, name: str, dialect: str) -> ColumnType:
    column = spec.column(name)
    declared = column.type_for(dialect)
    if dialect == "postgresql":
        found = from_postgres(declared)
        kind: Kind = column.kind
        return ColumnType(
            kind,
            declared,
            timezone=column.timezone if kind == "datetime" else True,
            int_bits=found.int_bits,
            max_length=found.max_length,
        )
    style: SqliteTimeStyle = "sqlalchemy" if spec.track == "sqlalchemy" else "iso"
    return ColumnType(
        column.kind,
        declared,
        timezone=column.timezone or column.kind != "datetime",
        time_style=style,
    )


def _array_type(column: ColumnType, dialect: str) -> str:
    if dialect != "postgresql":
        return column.ddl
    if column.kind == "int":
        return {16: "smallint", 32: "integer"}.get(column.int_bits, "bigint")
    if column.kind == "text":
        return "text"
    return column.ddl.lower()


def _ddl(plan: TablePlan, spec: TableSpec | None, target: Table | None, dialect: str) -> None:
    if spec is not None:
        statements = spec.ddl_for(dialect)
        create, after = statements[:1], statements[1:]
        serial = next((c.name for c in spec.columns if c.autoincrement), None)
        plan.serial = serial if dialect == "postgresql" else None
        extra = [c for c in plan.columns if c.name not in spec.column_names]
        if extra:
            plan.notes.append(
                "columns connman's schema lacks, added: " + ", ".join(c.name for c in extra)
            )
            if target is None:
                create = (
                    *create,
                    *(
                        f"ALTER TABLE {quote_ident(plan.name)} ADD COLUMN {quote_ident(c.name)} "
                        f"{c.target.ddl}"
                        for c in extra
                    ),
                )
    else:
        lines = []
        for column in plan.columns:
            ddl = column.target.ddl if dialect == "sqlite" else _pg_type(column.target)
            lines.append(
                f"{quote_ident(column.name)} {ddl}" + ("" if column.nullable else " NOT NULL")
            )
        if plan.primary_key:
            lines.append(
                "PRIMARY KEY (" + ", ".join(quote_ident(k) for k in plan.primary_key) + ")"
            )
        create = (
            f"CREATE TABLE IF NOT EXISTS {quote_ident(plan.name)} (\n    "
            + ",\n    ".join(lines)
            + "\n)",
        )
        after = ()
        if plan.source.foreign_keys or plan.source.indexes:
            plan.notes.append(
                "foreign keys and secondary indexes of tables connman does not know are "
                "not recreated"
            )
    if target is None:
        plan.create = tuple(create)
    plan.after = tuple(after)


LOADING = "connman migrate: bulk load in progress, keys added when it ends"
"""COMMENT ON TABLE of a table created for a bulk load, until its keys exist."""


def _loading(target: Table) -> bool:
    return target.comment == LOADING and not target.primary_key


def _bulk(plan: TablePlan, spec: TableSpec | None, *, loading: bool) -> None:
    """A PostgreSQL table this run creates is created without its primary and
    foreign keys; the rows go in, then the keys are added (one sorted index build
    instead of an index insert per row, as pgloader does). The table carries a
    comment until then: a run killed in between is recognised, and the next one adds
    the keys first, then finds the rows already there as usual. Tables of the
    SQLAlchemy track keep their DDL (SQLAlchemy's, constraints inline)."""
    if spec is not None and spec.track == "sqlalchemy":
        return
    table = quote_ident(plan.name)
    index = quote_ident(f"{plan.name}_pkey")  # the name PostgreSQL itself would give it
    plan.key_build = (
        f"CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} "
        f"({', '.join(map(quote_ident, plan.primary_key))})"
    )
    # The index again (IF NOT EXISTS): a run that resumes an interrupted load adds
    # the keys before copying, without a separate build.
    keys = [
        plan.key_build,
        f"ALTER TABLE {table} ADD CONSTRAINT {index} PRIMARY KEY USING INDEX {index}",
    ]
    for fk in spec.foreign_keys if spec is not None else ():
        clause = (
            f"ALTER TABLE {table} ADD FOREIGN KEY ({quote_ident(fk.column)}) "
            f"REFERENCES {quote_ident(fk.references)} ({quote_ident(fk.referenced_column)})"
        )
        if fk.on_delete:
            clause += f" ON DELETE {fk.on_delete}"
        if fk.deferrable:
            clause += " DEFERRABLE INITIALLY IMMEDIATE"
        keys.append(clause)
    plan.constraints = (*keys, f"COMMENT ON TABLE {table} IS NULL")
    if loading:
        plan.loading = True
        plan.notes.append("a bulk load of this table was interrupted: its keys are added first")
        return
    columns = []
    for column in plan.columns:
        spec_column = (
            spec.column(column.name) if spec and column.name in spec.column_names else None
        )
        ddl = spec_column.type_for("postgresql") if spec_column else _pg_type(column.target)
        line = f"{quote_ident(column.name)} {ddl}"
        if not column.nullable:
            line += " NOT NULL"
        default = spec_column.defaults.get("postgresql") if spec_column else None
        if default is not None:
            line += f" DEFAULT {default}"
        columns.append(line)
    plan.create = (
        f"CREATE TABLE IF NOT EXISTS {table} (\n    " + ",\n    ".join(columns) + "\n)",
        f"COMMENT ON TABLE {table} IS '{LOADING}'",
    )
    plan.notes.append("bulk load: keys added after the rows (then the indexes)")


def _pg_type(column: ColumnType) -> str:
    if column.cast_text:
        return "TEXT"
    return column.ddl if column.ddl else postgres_ddl(column.kind, timezone=column.timezone)


_COMPATIBLE: dict[str, set[str]] = {
    "bytes": {"bytes", "text"},
    "bool": {"bool", "int", "text", "numeric"},
    "json": {"json", "text"},
}


def check_compatible(plan: TablePlan, target: Table | None, *, name: str) -> None:
    """Raise :class:`SchemaIncompatible` when the existing target table cannot take
    the source's rows: a column it lacks, a NOT NULL column without default the
    source cannot fill, a different primary key, a column of an impossible type."""
    if target is None:
        return
    problems: list[str] = []
    missing = [c.name for c in plan.columns if target.column(c.name) is None]
    if missing:
        problems.append(
            "it lacks the column(s) "
            + ", ".join(missing)
            + f" (ALTER TABLE {plan.name} ADD COLUMN ..., or drop the empty table)"
        )
    have = set(plan.column_names)
    unfilled = [
        c.name
        for c in target.columns
        if not c.nullable and not c.has_default and not c.generated and c.name not in have
    ]
    if unfilled:
        problems.append(
            "its NOT NULL column(s) " + ", ".join(unfilled) + " have no value in the source"
        )
    source_key = plan.source.primary_key
    if source_key and target.primary_key and set(source_key) != set(target.primary_key):
        problems.append(
            f"its primary key is ({', '.join(target.primary_key)}), the source's "
            f"({', '.join(source_key)})"
        )
    if source_key and not target.primary_key and not plan.loading:
        problems.append("it has no primary key, the source's table has one")
    for column in plan.columns:
        src = plan.source.column(column.name)
        if src is None or src.type is None or not src.declared:
            continue
        allowed = _COMPATIBLE.get(src.type.kind)
        if allowed is not None and column.target.kind not in allowed:
            problems.append(
                f"column {column.name} is {column.target.describe()}, the source's is "
                f"{src.declared} ({src.type.kind})"
            )
    if problems:
        raise SchemaIncompatible(
            f"table {plan.name} on the target {name} is incompatible: " + "; ".join(problems)
        )


def catalog_specs(catalog: Catalog) -> dict[str, TableSpec]:
    """connman's TableSpecs of the tables in ``catalog`` (imports SQLAlchemy only
    when a SQLAlchemy-track table is there)."""
    from connman.kgents.schema import TRACKS, table_specs

    specs: dict[str, TableSpec] = {}
    for track, names in TRACKS.items():
        if set(names) & set(catalog.tables):  # SQLAlchemy is imported only if needed
            specs.update((s.name, s) for s in table_specs(track) if s.name in catalog.tables)
    return specs
