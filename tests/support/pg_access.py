"""URLs of the plugin's server spelt another way, or for another role, that keep
working whatever the server asks for (trust, or a password: the plugin's URL may
carry one, and every rewrite keeps it)."""

from __future__ import annotations

import dataclasses
import uuid
from urllib.parse import quote

import asyncpg

from connman.urls import DatabaseURL, parse_url

__all__ = ["admin_execute", "create_role", "drop_role", "userinfo", "with_role"]


def userinfo(url: DatabaseURL) -> str:
    """``user:password@`` (or ``user@``) of ``url``, quoted, for a URL written by hand."""
    user = quote(url.user or "", safe="")
    if url.password is None:
        return f"{user}@"
    return f"{user}:{quote(url.password, safe='')}@"


def with_role(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` (host, database and
    parameters kept)."""
    return dataclasses.replace(parse_url(url), user=user, password=password).key


async def admin_execute(admin_url: str, *statements: str) -> None:
    """Run ``statements`` on one connection of ``admin_url`` (a superuser's)."""
    conn = await asyncpg.connect(parse_url(admin_url).connect_dsn())
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def create_role(admin_url: str, password: str) -> str:
    """A new login role with ``password`` that may create tables in ``admin_url``'s
    database (its schema ``public``); its name. Drop it with :func:`drop_role`."""
    name = f"connman_test_role_{uuid.uuid4().hex[:12]}"
    await admin_execute(
        admin_url,
        f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
        f"GRANT ALL ON SCHEMA public TO {name}",
    )
    return name


async def drop_role(admin_url: str, name: str) -> None:
    """End ``name``'s sessions, drop what it owns in ``admin_url``'s database, and the
    role (it owns nothing elsewhere: :func:`create_role` granted only this database)."""
    await admin_execute(
        admin_url,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'",
        f"DROP OWNED BY {name}",
        f"DROP ROLE {name}",
    )
