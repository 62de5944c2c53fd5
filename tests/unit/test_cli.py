"""The ``connman`` command as a user meets it: --version, --help of every subcommand
(a description, the defaults, the variable that names the database), and
``check-coherence`` when the database cannot be reached."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any

import pytest

import connman
from connman.cli import _parser, main
from tests.support.userproc import without_storage_env


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = without_storage_env()
    return subprocess.run(
        [sys.executable, "-m", "connman.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
    )


def help_of(*command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"connman {connman.__version__}"


def test_every_subcommand_has_a_description() -> None:
    sub = next(a for a in _parser()._actions if a.dest == "command")
    choices: dict[str, Any] = sub.choices  # type: ignore[assignment]
    assert {"status", "demo", "check-coherence", "migrate", "verify"} <= set(choices)
    for name, command in choices.items():
        assert command.description, name
        assert len(command.description) > 20, name


def test_help_shows_defaults_and_the_database_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top = help_of(capsys=capsys)
    assert "KGENTS_DATABASE_URL" in top
    status = help_of("status", capsys=capsys)
    assert "KGENTS_DATABASE_URL" in status
    assert "(default: KGENTS_POOL_CONNECT_TIMEOUT, else 10)" in status
    demo = help_of("demo", capsys=capsys)
    assert "(default: 9464)" in demo
    migrate = help_of("migrate", capsys=capsys)
    assert "KGENTS_DATABASE_URL" in migrate
    assert "(default: 5000)" in migrate and "(default: 16)" in migrate
    assert "KGENTS_POOL_CONNECT_TIMEOUT" in migrate


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_coherence_unreachable_is_an_error_on_stderr_with_its_own_code() -> None:
    port = _closed_port()
    url = f"postgresql://kgents:s3cretPW@127.0.0.1:{port}/brain"
    done = run("check-coherence", env={"KGENTS_DATABASE_URL": url})
    assert done.returncode == 3, done.stdout + done.stderr  # not 1: that is "incoherent"
    assert done.stdout == ""
    assert f"127.0.0.1:{port}/brain" in done.stderr
    assert "(from KGENTS_DATABASE_URL)" in done.stderr
    assert "s3cretPW" not in done.stderr
    as_json = run("check-coherence", "--json", env={"KGENTS_DATABASE_URL": url})
    assert as_json.returncode == 3
    assert '"ok": false' in as_json.stdout and "s3cretPW" not in as_json.stdout


def test_check_coherence_names_the_database_it_checked(tmp_path: Any) -> None:
    path = tmp_path / "brain.db"
    done = run("check-coherence", env={"KGENTS_DATABASE_URL": f"sqlite:///{path}"})
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("database") and str(path) in first
    assert "coherent" in done.stdout
