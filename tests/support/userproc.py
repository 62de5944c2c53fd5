"""Run Python code the way a new user does: a process of its own, a fresh home, only
the settings the test names. Used by the tests that hold the README and the process
lifecycle to what a user sees (the code runs, and the process exits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Finished", "fresh_env", "run_python"]

# Settings a developer's shell may carry that would change what the code under test
# resolves or how the pool behaves.
STORAGE_PREFIXES = ("KGENTS_", "CONNMAN_", "XDG_")
"""Variables that steer storage, pools or the test plugin: a fresh user has none."""


def without_storage_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) less every variable of STORAGE_PREFIXES."""
    source = os.environ if env is None else env
    return {k: v for k, v in source.items() if not k.startswith(STORAGE_PREFIXES)}


def fresh_env(home: Path, **settings: str) -> dict[str, str]:
    """The environment of a fresh user: ``HOME`` under ``home``, no XDG, kgents or
    connman variable but ``settings`` (e.g. ``KGENTS_DATABASE_URL=...``)."""
    env = without_storage_env()
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env.update(settings)
    return env


@dataclass(frozen=True)
class Finished:
    """How a process ended: ``returncode`` None means it had to be killed."""

    returncode: int | None
    stdout: str
    stderr: str

    def explain(self) -> str:
        status = "did not exit" if self.returncode is None else f"rc={self.returncode}"
        return f"{status}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_python(code: str, env: dict[str, str], *, cwd: Path, timeout: float = 60.0) -> Finished:
    """Run ``code`` with this interpreter and wait up to ``timeout`` seconds for the
    process to exit. One that does not (e.g. a thread keeping the interpreter in
    ``threading._shutdown``) gets SIGABRT, so faulthandler writes every thread's stack
    to stderr, and is reported with ``returncode=None``."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return Finished(None, out, err)
    return Finished(proc.returncode, out, err)
