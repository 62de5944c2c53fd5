"""Column types that behave the same on PostgreSQL and SQLite.

``DateTime(timezone=True)`` does not: PostgreSQL stores a ``timestamptz`` and returns
aware datetimes in UTC, while SQLAlchemy's SQLite dialect writes the wall-clock
digits of the value and drops its offset, and reads back naive datetimes. An aware
``12:00+02:00`` comes back from SQLite as a naive ``12:00``: two hours off once
anything treats it as UTC. :class:`AwareDateTime` stores UTC on both and returns
aware UTC datetimes on both.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator

__all__ = ["AwareDateTime"]


class AwareDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, UTC in the database, aware UTC in Python.

    Binding a naive datetime raises ``ValueError`` (which zone would it be in?).
    Values SQLite itself wrote (``datetime('now')``, ``CURRENT_TIMESTAMP``) are UTC
    and read back as such.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} for a timezone-aware column: "
                "pass an aware one, e.g. datetime.now(UTC)"
            )
        utc = value.astimezone(UTC)
        # SQLite keeps the digits only: store the UTC ones.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {value!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
