"""Throwaway PostgreSQL clusters from the local server binaries.

For test suites on machines without Docker: ``initdb`` once per process into a
template, copy it per cluster, ``pg_ctl start`` on a free loopback port with the unix
socket inside the cluster's own directory. pg_ctl refuses to run as root, so as root
every server command runs as the ``postgres`` user (``runuser``), in a directory that
user owns. Durability is off (fsync, synchronous_commit, full_page_writes): these
clusters hold test data only.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

__all__ = ["ClusterUnavailable", "LocalCluster", "find_bindir", "free_port"]

_SERVER_USER = "postgres"
_template_lock = threading.Lock()
_template_dir: Path | None = None


class ClusterUnavailable(RuntimeError):
    """The local binaries cannot start a cluster; the message says how to get one."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``: ``pg_config --bindir`` if it
    has them (Debian's pg_config points at /usr/bin, which lacks them), else the
    newest /usr/lib/postgresql/*/bin, else ``PATH``."""
    candidates: list[Path] = []
    try:
        out = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        candidates.append(Path(out))
    except (OSError, subprocess.SubprocessError):
        pass

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    ]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


class LocalCluster:
    """One throwaway PostgreSQL server on 127.0.0.1.

    ``url`` is ``postgresql+asyncpg://postgres@127.0.0.1:<port>/postgres`` (trust auth).
    ``stop()``, ``start()`` and ``restart()`` keep the port and the data, for fault tests.
    """

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        max_connections: int = 200,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise ClusterUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) found: install them "
                "(Debian: apt-get install postgresql), or set CONNMAN_TEST_POSTGRES_URL"
            )
        self.bindir = found
        self._as_user = _server_user() if os.geteuid() == 0 else None
        self._max_connections = max_connections
        # Extra server settings (``-c name=value``), e.g. ssl=on and its files.
        self.settings = dict(settings or {})
        self.base = Path(tempfile.mkdtemp(prefix="connman-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = free_port()
        self.running = False
        if self._as_user is not None:
            os.chown(self.base, self._as_user.pw_uid, self._as_user.pw_gid)
        self._copy_template()

    @property
    def url(self) -> str:
        """The cluster's URL (the ``postgres`` database)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """The same URL in libpq form, for asyncpg/psql."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.base}",
                f"-c max_connections={self._max_connections}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                *(f"-c {name}={value}" for name, value in self.settings.items()),
            ]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: disconnect clients; ``immediate``: crash-stop)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop then start, same port, same data."""
        self.stop(mode)
        self.start()

    def make_standby_of(self, primary: LocalCluster) -> None:
        """Replace this (stopped) cluster's data with a base backup of ``primary``
        (``pg_basebackup -R``: it starts as a streaming standby of it). For failover
        tests, and for an old primary rejoining as a standby of the new one."""
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        self._run(
            "pg_basebackup",
            *("-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres"),
            *("-D", str(self.data), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
        )

    def promote(self) -> None:
        """Promote a standby to primary and wait until it accepts writes."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "promote")

    def require_password(self, method: str = "scram-sha-256") -> None:
        """Make every role except the superuser ``postgres`` authenticate with a
        password over TCP (``method``: ``scram-sha-256`` or ``md5``); ``postgres``
        keeps trust, so :attr:`dsn` still works for admin work. Create the roles (with
        ``CREATE ROLE ... PASSWORD``) before or after; a running server is restarted
        so the rule holds from the next connection on (a reload would apply it at
        some point after the call returns)."""
        if method not in ("scram-sha-256", "md5"):
            raise ValueError(f"method={method!r}: expected 'scram-sha-256' or 'md5'")
        rules = [
            "local all all trust",
            "host all postgres 127.0.0.1/32 trust",
            "host all postgres ::1/128 trust",
            f"host all all 127.0.0.1/32 {method}",
            f"host all all ::1/128 {method}",
        ]
        hba = self.data / "pg_hba.conf"
        hba.write_text("\n".join(rules) + "\n")
        if self._as_user is not None:
            os.chown(hba, self._as_user.pw_uid, self._as_user.pw_gid)
        if self.running:
            self.restart()

    def standby(self) -> LocalCluster:
        """A new cluster streaming from this running one (``pg_basebackup -R``: a hot
        standby with this cluster's settings on a port of its own), not started yet.
        Promote it with ``SELECT pg_promote()``; destroy it like any cluster."""
        replica = LocalCluster(
            self.bindir, max_connections=self._max_connections, settings=self.settings
        )
        replica.make_standby_of(self)
        return replica

    def destroy(self) -> None:
        """Stop the server and delete its files."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def server_log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- private -------------------------------------------------------------------

    def _copy_template(self) -> None:
        template = _template(self.bindir, self._as_user)
        cmd = ["cp", "-a", str(template), str(self.data)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        if self._as_user is not None:
            subprocess.run(
                ["chown", "-R", f"{self._as_user.pw_uid}:{self._as_user.pw_gid}", str(self.data)],
                check=True,
                capture_output=True,
                timeout=120,
            )

    def _run(self, tool: str, *args: str) -> None:
        _run_as(self._as_user, [str(self.bindir / tool), *args], log=self.log)


def _template(bindir: Path, as_user: pwd.struct_passwd | None) -> Path:
    """initdb once per process; clusters are copies (a copy takes ~50 ms, initdb ~1 s)."""
    global _template_dir
    with _template_lock:
        if _template_dir is not None and _template_dir.exists():
            return _template_dir
        base = Path(tempfile.mkdtemp(prefix="connman-pg-template-"))
        atexit.register(shutil.rmtree, base, True)
        if as_user is not None:
            os.chown(base, as_user.pw_uid, as_user.pw_gid)
        data = base / "data"
        _run_as(
            as_user,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            log=base / "initdb.log",
        )
        _template_dir = data
        return data


def _run_as(user: pwd.struct_passwd | None, cmd: list[str], *, log: Path) -> None:
    if user is not None:
        cmd = ["runuser", "-u", user.pw_name, "--", *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd="/")
    if result.returncode != 0:
        try:
            tail = log.read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        raise ClusterUnavailable(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}\n{tail}"
        )


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_SERVER_USER)
    except KeyError:
        raise ClusterUnavailable(
            "running as root, and pg_ctl refuses root: create a 'postgres' user "
            "(Debian's postgresql package does) or run the tests as another user"
        ) from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
