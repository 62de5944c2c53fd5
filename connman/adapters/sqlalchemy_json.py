"""JSON and JSONB values on connman's SQLAlchemy engine, as native SQLAlchemy returns them.

SQLAlchemy's asyncpg dialect installs asyncpg type codecs for ``json`` and ``jsonb``
on every connection it opens, so every JSON value comes back decoded: an ORM
``JSON`` column, and just as well ``text("SELECT '{\\"a\\": 1}'::json")``, whose
column SQLAlchemy knows no type for. On connman the physical connection is shared:
installing those codecs would change what the raw asyncpg leases of other consumers
(D-gent, Brain...) receive for the same ``jsonb`` column (a ``dict`` on a connection
the engine has used, a ``str`` on one it has not).

So the codecs stay uninstalled and the engine's cursor decodes instead: after a
statement is prepared, the result columns whose type OID is ``json``/``jsonb`` (or
an array of them) are known from the statement's description, and only those values
are deserialized, with the engine's ``json_deserializer`` (``json.loads`` by
default), exactly as the codecs would have. A statement without such a column pays
one scan of its description. Raw leases of the same physical connection never see a
difference.

What SQLAlchemy's types do on top stays as native: ``JSON``/``JSONB`` columns have no
result processing of their own on asyncpg (the dialect says its driver decodes), and
binding serializes to text, which asyncpg sends as is.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_cursor,
    AsyncAdapt_asyncpg_ss_cursor,
)

__all__ = ["decode_json_columns"]

# pg_type OIDs: json, jsonb, and their array types.
_JSON_OIDS = frozenset({114, 3802})
_JSON_ARRAY_OIDS = frozenset({199, 3807})

_Loads = Callable[[str], Any]
_Plan = tuple[tuple[int, Callable[[Any], Any]], ...]


def decode_json_columns(adapted: Any, loads: _Loads | None) -> None:
    """Make the SQLAlchemy asyncpg adapter connection ``adapted`` decode JSON/JSONB
    result columns with ``loads`` (``None``: ``json.loads``) in its cursors.

    Changes only the adapter object (its class), never the asyncpg connection.
    """
    if not isinstance(adapted, AsyncAdapt_asyncpg_connection):
        return
    adapted.__class__ = _decoding_connection_class(loads or json.loads)


@functools.lru_cache(maxsize=16)
def _decoding_connection_class(loads: _Loads) -> type[AsyncAdapt_asyncpg_connection]:
    """The adapter connection class whose cursors decode with ``loads`` (one per
    deserializer: the adapter's ``__slots__`` leave no room for it on the instance)."""

    # Written for SQLAlchemy 2.0 and 2.1 alike: ``description`` (an attribute in 2.0,
    # a property in 2.1), ``_rows`` kept as the container type it was (2.0 pops a
    # list, 2.1 a deque), ``cursor()`` overridden (2.0 names its classes inline).

    class DecodingCursor(AsyncAdapt_asyncpg_cursor):
        __slots__ = ()

        async def _prepare_and_execute(self, operation: Any, parameters: Any) -> None:
            await super()._prepare_and_execute(operation, parameters)  # type: ignore[no-untyped-call]
            plan = _plan(self.description, loads)
            rows = self._rows
            if plan and rows:
                self._rows = type(rows)(_decode(row, plan) for row in rows)

    class DecodingServerSideCursor(AsyncAdapt_asyncpg_ss_cursor):
        __slots__ = ()

        async def _prepare_and_execute(self, operation: Any, parameters: Any) -> None:
            await super()._prepare_and_execute(operation, parameters)  # type: ignore[no-untyped-call]
            plan = _plan(self.description, loads)
            if plan and self._cursor is not None:
                self._cursor = _DecodingFetch(self._cursor, plan)

    class DecodingConnection(AsyncAdapt_asyncpg_connection):
        __slots__ = ()

        def cursor(self, server_side: bool = False) -> Any:
            if server_side:
                return DecodingServerSideCursor(self)  # type: ignore[no-untyped-call]
            return DecodingCursor(self)

    return DecodingConnection


class _DecodingFetch:
    """An asyncpg cursor whose ``fetch`` decodes JSON columns (server-side cursors)."""

    __slots__ = ("_cursor", "_plan")

    def __init__(self, cursor: Any, plan: _Plan) -> None:
        self._cursor = cursor
        self._plan = plan

    async def fetch(self, n: int) -> list[tuple[Any, ...]]:
        return [_decode(row, self._plan) for row in await self._cursor.fetch(n)]


def _plan(description: Sequence[Sequence[Any]] | None, loads: _Loads) -> _Plan:
    """(column index, decoder) for each JSON column of ``description`` (the type OID
    is its second field); empty when there is none."""
    if not description:
        return ()
    plan: list[tuple[int, Callable[[Any], Any]]] = []
    for index, column in enumerate(description):
        oid = column[1]
        if oid in _JSON_OIDS:
            plan.append((index, loads))
        elif oid in _JSON_ARRAY_OIDS:
            plan.append((index, functools.partial(_decode_array, loads=loads)))
    return tuple(plan)


def _decode(row: Any, plan: _Plan) -> tuple[Any, ...]:
    values = list(row)
    for index, decode in plan:
        value = values[index]
        if value is not None:
            values[index] = decode(value)
    return tuple(values)


def _decode_array(value: Any, *, loads: _Loads) -> Any:
    """A ``json[]``/``jsonb[]`` value (nested lists for more dimensions)."""
    if isinstance(value, list):
        return [_decode_array(item, loads=loads) for item in value]
    return None if value is None else loads(value)
