"""DDL for both storage tracks, per dialect, and dialect helpers for migrations.

Dialect differences live here (and in the drivers), not in the adapters.
"""

from __future__ import annotations

__all__ = ["TRACKS"]

TRACKS: dict[str, tuple[str, ...]] = {
    # D-gent track: semantic memory, append-only with causal chains.
    "dgent": ("data",),
    # Brain's relational store: raw captures with embeddings.
    "brain": ("captures",),
    # SQLAlchemy/Alembic track: typed models.
    "sqlalchemy": ("brain_crystals", "brain_crystal_tags", "brain_settings"),
}
"""The tables each track owns, as kgents names them."""
