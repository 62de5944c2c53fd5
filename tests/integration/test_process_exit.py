"""A process exits when its code returns, whether or not it closed connman.

Each case runs as a user's script in a process of its own with a fresh home (the
portable SQLite default): the process must exit 0 within the deadline. aiosqlite
keeps one thread per connection, which used to hold the interpreter forever in
``threading._shutdown`` when nobody closed the manager.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.support.userproc import fresh_env, run_python

# What the user's code does, with nothing closed at the end. Each prints "done".
_UNCLOSED = {
    "sqlalchemy_engine_on_the_process_wide_manager": """
        import asyncio
        from sqlalchemy import text
        from connman.adapters.sqlalchemy import create_async_engine

        async def main():
            engine = create_async_engine()
            async with engine.connect() as conn:
                assert (await conn.execute(text("SELECT 1"))).scalar() == 1

        asyncio.run(main())
    """,
    "dgent_store_without_manager": """
        import asyncio
        from connman.kgents.dgent import Datum, DgentStore

        async def main():
            store = DgentStore()
            id = await store.put(Datum.create(b"hello"))
            assert (await store.get(id)).content == b"hello"

        asyncio.run(main())
    """,
    "brain_store_without_manager": """
        import asyncio
        from connman.kgents.brain import BrainStore

        async def main():
            store = BrainStore()
            id = await store.capture("a thought")
            assert (await store.get_capture(id)) is not None

        asyncio.run(main())
    """,
    "own_manager_never_closed": """
        import asyncio
        import connman

        async def main():
            manager = connman.ConnectionManager()
            await manager.start()
            async with manager.lease("script") as lease:
                await lease.connection.execute("SELECT 1")

        asyncio.run(main())
    """,
    "loop_left_without_shutdown": """
        import asyncio
        import connman

        async def main():
            async with connman.get_manager().lease("script") as lease:
                await lease.connection.execute("SELECT 1")

        asyncio.new_event_loop().run_until_complete(main())   # never closed
    """,
}

# The cases whose manager nobody owns: the process-wide one.
_PROCESS_WIDE = (
    "sqlalchemy_engine_on_the_process_wide_manager",
    "dgent_store_without_manager",
    "brain_store_without_manager",
)


@pytest.mark.parametrize("case", list(_UNCLOSED))
def test_process_exits_without_aclose(case: str, tmp_path: Path) -> None:
    code = textwrap.dedent(_UNCLOSED[case]) + "\nprint('done')\n"
    finished = run_python(code, fresh_env(tmp_path / "home"), cwd=tmp_path, timeout=30)
    assert finished.returncode == 0, finished.explain()
    assert finished.stdout.strip() == "done"


@pytest.mark.parametrize("case", _PROCESS_WIDE)
def test_process_wide_manager_closes_its_connections_when_its_loop_ends(
    case: str, tmp_path: Path
) -> None:
    """Not just cut at exit: when asyncio.run ends, the process-wide manager closes its
    connections. On SQLite the last close checkpoints the WAL and removes the -wal
    file; a connection cut at exit leaves it behind."""
    home = tmp_path / "home"
    finished = run_python(textwrap.dedent(_UNCLOSED[case]), fresh_env(home), cwd=tmp_path)
    assert finished.returncode == 0, finished.explain()
    database = home / ".local/share/kgents/membrane.db"
    assert database.is_file()
    assert not Path(f"{database}-wal").exists(), "connections were not closed"
