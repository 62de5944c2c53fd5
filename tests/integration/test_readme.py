"""The README's code is executable evidence: every ```python block runs as written.

README.md is read when the tests are collected, so blocks added by anyone are covered.
Each block runs as a user's script in a process of its own with a fresh home, on the
portable SQLite default, on PostgreSQL, and with PostgreSQL configured but unreachable
(the manager degrades to SQLite): it must exit 0 within the deadline, which also
proves the process exits when the code returns. A block that is only a fragment (not a
program) says so with ``# fragment`` as its first line; it is only compiled.
"""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.userproc import fresh_env, run_python

README = Path(__file__).resolve().parents[2] / "README.md"
FRAGMENT = "# fragment"
TIMEOUT = 90.0


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence
    code: str

    @property
    def fragment(self) -> bool:
        return self.code.lstrip().startswith(FRAGMENT)

    def __str__(self) -> str:
        return f"README.md:{self.line}"


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with the line of their fence."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i + 1
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            blocks.append(Block(i + 1, textwrap.dedent("\n".join(lines[start:end])) + "\n"))
            i = end
        i += 1
    return blocks


def is_test_module(block: Block) -> bool:
    """A block that defines ``test_*`` functions is a test module for the reader's own
    suite: it runs under pytest (with the connman.testing plugin), not as a script."""
    return any(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        for n in ast.parse(block.code).body
    )


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
TEST_MODULES = [b for b in BLOCKS if not b.fragment and is_test_module(b)]
PROGRAMS = [b for b in BLOCKS if not b.fragment and not is_test_module(b)]


def test_the_readme_has_python_blocks() -> None:
    assert len(PROGRAMS) >= 3, [str(b) for b in BLOCKS]


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_block_compiles(block: Block) -> None:
    # Fragments may await at top level (they stand for code inside a coroutine).
    compile(block.code, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_block_runs_what_it_defines(block: Block) -> None:
    """A program that defines ``async def main()`` and never runs it exits 0 having
    shown nothing: every coroutine function a block defines is used in it."""
    tree = ast.parse(block.code)
    # (A block defining test_* functions is a test module: not here, see TEST_MODULES.)
    defined = {n.name for n in tree.body if isinstance(n, ast.AsyncFunctionDef)}
    used = {
        n.id
        for stmt in tree.body
        if not isinstance(stmt, ast.AsyncFunctionDef)
        for n in ast.walk(stmt)
        if isinstance(n, ast.Name)
    }
    assert defined <= used, f"{block} never runs {sorted(defined - used)}"


@pytest.mark.parametrize("block", TEST_MODULES, ids=str)
def test_test_module_passes_under_pytest(block: Block, tmp_path: Path, postgres_url: str) -> None:
    """As a reader's suite runs it: pytest in a project of its own, the plugin loaded
    by its entry point, the server from CONNMAN_TEST_POSTGRES_URL (local binaries for
    ``postgres_cluster``). Every test it defines must pass, none skip."""
    module = tmp_path / "project" / "test_from_readme.py"
    module.parent.mkdir()
    module.write_text(block.code, encoding="utf-8")
    expected = sum(
        isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        for n in ast.parse(block.code).body
    )
    env = fresh_env(
        tmp_path / "home", CONNMAN_TEST_POSTGRES_URL=postgres_url, CONNMAN_REQUIRE_POSTGRES="1"
    )
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        env=env,
        cwd=module.parent,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    output = f"{block}:\n{finished.stdout}\n{finished.stderr}"
    assert finished.returncode == 0, output
    assert f"{expected} passed" in finished.stdout and "skipped" not in finished.stdout, output


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(block: Block, tmp_path: Path, **settings: str) -> None:
    env = fresh_env(tmp_path / "home", **settings)
    finished = run_python(block.code, env, cwd=tmp_path, timeout=TIMEOUT)
    assert finished.returncode == 0, f"{block}:\n{block.code}\n{finished.explain()}"


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_block_runs_on_the_sqlite_default(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path)


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_block_runs_on_postgresql(block: Block, tmp_path: Path, postgres_database: str) -> None:
    # Strict: a PostgreSQL that cannot be reached fails the test instead of passing on
    # the SQLite fallback.
    _run(block, tmp_path, KGENTS_DATABASE_URL=postgres_database, KGENTS_STORAGE_STRICT="1")


@pytest.mark.parametrize("block", PROGRAMS, ids=str)
def test_block_runs_when_postgresql_is_unreachable(block: Block, tmp_path: Path) -> None:
    """The documented patterns hold when the manager degrades to the SQLite file."""
    _run(
        block,
        tmp_path,
        KGENTS_DATABASE_URL=f"postgresql://kgents:secret@127.0.0.1:{_closed_port()}/kgents",
        KGENTS_UNIFIED_URL=f"postgresql://kgents:secret@127.0.0.1:{_closed_port()}/kgents",
    )


_SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def test_every_table_has_its_header_row_then_a_separator_row() -> None:
    """A Markdown table renders only with ``| a | b |`` then ``|---|---|`` on its own
    line (``| module | job ||---|---|`` rendered as text)."""
    lines = README.read_text(encoding="utf-8").splitlines()
    in_code = False
    broken = []
    for n, line in enumerate(lines):
        if line.startswith("```"):
            in_code = not in_code
        starts = line.startswith("|") and not (n and lines[n - 1].startswith("|"))
        if in_code or not starts:
            continue
        following = lines[n + 1] if n + 1 < len(lines) else ""
        if not _SEPARATOR.match(following.strip()):
            broken.append(f"README.md:{n + 1}: {line}")
    assert not broken, "\n".join(broken)
