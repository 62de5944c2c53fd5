"""PostgreSQL in a container, through testcontainers' PostgresContainer.

The container path of :mod:`connman.testing.plugin`, and the ``postgres_container``
fixture for tests that stop and start a containerized server. What this module adds to
testcontainers, and why:

- the port is published on 127.0.0.1 only, on a host port chosen here, so a container
  stopped and started again is reached at the same URL (Docker would pick a new
  random port on each start);
- images are never pulled: a missing image is an error naming the image
  (``deploy/images/build`` builds ``postgres:15`` from Debian packages);
- every container carries the label ``org.connman.test.owner=<host>:<pid>``;
  :func:`reap_leftovers` removes those whose process is gone (a killed run), because
  testcontainers' own reaper (Ryuk) is an image that may not be present either: when
  it is absent, Ryuk is turned off and this label does its job.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from typing import Any

from connman.testing.cluster import free_port

__all__ = [
    "COMPOSE_PROJECT_LABEL",
    "DEFAULT_IMAGE",
    "OWNER_LABEL",
    "DockerUnavailable",
    "PostgresContainerServer",
    "compose_project",
    "docker_engine",
    "owner",
    "postgres_image",
    "reap_leftovers",
    "remove_compose_project",
]

DEFAULT_IMAGE = "postgres:15"
"""The plugin's image (``CONNMAN_TEST_POSTGRES_IMAGE`` overrides it): the official
image on a machine that can pull, the one ``deploy/images/build`` makes elsewhere."""

OWNER_LABEL = "org.connman.test.owner"
"""``<hostname>:<pid>`` of the process that created a container, volume or network."""

COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
_COMPOSE_PREFIX = "connman-test-"

# Durability off, room for the suite's pools: the same settings as LocalCluster.
_SERVER_SETTINGS = (
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
    "max_connections=200",
)


class DockerUnavailable(RuntimeError):
    """No container can be started here; the message says why and how to get one."""


def postgres_image() -> str:
    """``CONNMAN_TEST_POSTGRES_IMAGE``, else :data:`DEFAULT_IMAGE`."""
    return os.environ.get("CONNMAN_TEST_POSTGRES_IMAGE", "").strip() or DEFAULT_IMAGE


def owner() -> str:
    """The value of :data:`OWNER_LABEL` for what this process creates."""
    return f"{socket.gethostname()}:{os.getpid()}"


def compose_project() -> str:
    """The compose project name for what this process brings up (``-p``); compose
    labels its containers, volumes and networks with it, and :func:`reap_leftovers`
    reads the pid back."""
    return f"{_COMPOSE_PREFIX}{os.getpid()}"


def docker_engine() -> Any:
    """A ``docker.DockerClient`` that answered a ping; raise :class:`DockerUnavailable`
    (testcontainers not installed, or no engine) otherwise."""
    try:
        import docker
    except ImportError:
        raise DockerUnavailable(
            "testcontainers is not installed (pip install 'connman[testing]')"
        ) from None
    try:
        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:
        raise DockerUnavailable(f"no Docker engine answers ({type(exc).__name__}: {exc})") from None
    return client


def reap_leftovers(client: Any) -> list[str]:
    """Remove the containers, networks and volumes (in that order: a volume or network
    in use cannot go) that a process of this host which no longer runs created: those
    labelled :data:`OWNER_LABEL`, and those of a :func:`compose_project`. Returns their
    names. A live process's (a parallel run) are left alone. Compose projects carry no
    host name: this assumes the engine is this machine's (tests publish on 127.0.0.1)."""
    host = socket.gethostname()

    def dead(labels: dict[str, str] | None) -> bool:
        labels = labels or {}
        project = labels.get(COMPOSE_PROJECT_LABEL, "")
        if project.startswith(_COMPOSE_PREFIX):
            label_host, pid = host, project.removeprefix(_COMPOSE_PREFIX)
        else:
            label_host, _, pid = labels.get(OWNER_LABEL, "").rpartition(":")
        return label_host == host and pid.isdigit() and not _alive(int(pid))

    removed: list[str] = []
    for label in (OWNER_LABEL, COMPOSE_PROJECT_LABEL):
        removed += _remove(client, {"label": label}, dead)
    return removed


def remove_compose_project(client: Any, project: str) -> list[str]:
    """Remove every container, network and volume of a compose project (what
    ``down -v`` should have removed); their names."""
    return _remove(client, {"label": f"{COMPOSE_PROJECT_LABEL}={project}"}, lambda _: True)


def _remove(
    client: Any, selector: dict[str, str], wanted: Callable[[dict[str, str] | None], bool]
) -> list[str]:
    removed: list[str] = []
    for container in client.containers.list(all=True, filters=selector):
        if wanted(container.labels):
            with contextlib.suppress(Exception):  # gone meanwhile
                container.remove(force=True, v=True)
                removed.append(f"container {container.name}")
    for network in client.networks.list(filters=selector):
        if wanted(network.attrs.get("Labels")):
            with contextlib.suppress(Exception):
                network.remove()
                removed.append(f"network {network.name}")
    for volume in client.volumes.list(filters=selector):
        if wanted(volume.attrs.get("Labels")):
            with contextlib.suppress(Exception):
                volume.remove(force=True)
                removed.append(f"volume {volume.name}")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class PostgresContainerServer:
    """One PostgreSQL server in a container of its own, on ``127.0.0.1:<port>``.

    ``start()`` creates and starts it the first time (testcontainers' PostgresContainer:
    the official image's environment, and its readiness check, ``psql`` over TCP inside
    the container); afterwards ``stop()`` and ``start()`` stop and start the same
    container: same port, same data. ``remove()`` deletes it and its volume.
    """

    def __init__(
        self,
        *,
        image: str | None = None,
        user: str = "connman",
        password: str = "connman",
        database: str = "connman",
    ) -> None:
        self.image = image or postgres_image()
        self.user = user
        self.database = database
        self.port = free_port()
        self._password = password
        self._container: Any = None  # testcontainers' PostgresContainer once created
        self.running = False

    def __repr__(self) -> str:
        where = f"{self.image} 127.0.0.1:{self.port}"
        return f"<PostgresContainerServer {where} running={self.running}>"

    @property
    def url(self) -> str:
        """``postgresql+asyncpg://user:password@127.0.0.1:<port>/database``."""
        return f"postgresql+asyncpg://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The same URL in libpq form, for asyncpg/psql."""
        return f"postgresql://{self._credentials}@127.0.0.1:{self.port}/{self.database}"

    @property
    def container_id(self) -> str | None:
        """The Docker container's id once created."""
        return None if self._container is None else str(self._container.get_wrapped_container().id)

    def start(self) -> None:
        """Create and start the container, or start it again; return once a client
        can log in over TCP. Raise :class:`DockerUnavailable` when it cannot start."""
        if self._container is None:
            self._create()
        else:
            self._container.get_wrapped_container().start()
            self._wait_ready()
        self.running = True

    def stop(self, timeout: int = 30) -> None:
        """``docker stop``: the image's stop signal (SIGINT, a fast shutdown that ends
        every session), then SIGKILL after ``timeout`` seconds."""
        if self._container is not None and self.running:
            self._container.get_wrapped_container().stop(timeout=timeout)
            self.running = False

    def remove(self) -> None:
        """Remove the container and its anonymous volume (also when never started)."""
        container, self._container = self._container, None
        self.running = False
        if container is not None:
            with contextlib.suppress(Exception):  # already gone
                container.get_wrapped_container().remove(force=True, v=True)

    def logs(self) -> str:
        """The container's output so far (for failure messages)."""
        if self._container is None:
            return ""
        try:
            raw = self._container.get_wrapped_container().logs()
        except Exception:
            return ""
        return bytes(raw).decode(errors="replace")

    def __enter__(self) -> PostgresContainerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- private -------------------------------------------------------------------

    @property
    def _credentials(self) -> str:
        from urllib.parse import quote

        return f"{quote(self.user, safe='')}:{quote(self._password, safe='')}"

    def _create(self) -> None:
        client = docker_engine()
        try:
            client.images.get(self.image)
        except Exception:
            raise DockerUnavailable(
                f"the Docker image {self.image} is not present: never pulled here "
                f"(docker pull {self.image}, or deploy/images/build)"
            ) from None
        finally:
            client.close()
        try:  # testcontainers >= 4.14 moved the module; older releases have only the old path
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:  # pragma: no cover - depends on the installed release
            from testcontainers.postgres import PostgresContainer
        _without_missing_reaper()
        command = ["postgres"]
        for setting in _SERVER_SETTINGS:
            command += ["-c", setting]
        container = (
            PostgresContainer(
                self.image,
                username=self.user,
                password=self._password,
                dbname=self.database,
                driver=None,
            )
            .with_command(command)
            # Test data: initdb need not fsync (a second or more of the start-up).
            .with_env("POSTGRES_INITDB_ARGS", "--no-sync")
            .with_kwargs(labels={OWNER_LABEL: owner()})
        )
        # Loopback only, on our port (with_bind_ports takes no address): docker-py's
        # ports mapping, as testcontainers hands it to containers.create().
        container.ports = {"5432/tcp": ("127.0.0.1", self.port)}  # type: ignore[dict-item]
        self._container = container
        try:
            container.start()
        except Exception as exc:
            # testcontainers' readiness error quotes its psql command, password included.
            detail = f"{type(exc).__name__}: {exc}\n{self.logs()[-2000:]}"
            if self._password:
                detail = detail.replace(self._password, "***")
            self.remove()
            raise DockerUnavailable(
                f"the container from {self.image} did not become ready ({detail})"
            ) from None

    def _wait_ready(self) -> None:
        # The same check testcontainers runs after the first start.
        self._container._connect()


def _without_missing_reaper() -> None:
    """Turn testcontainers' reaper (Ryuk) off when its image is not present: starting
    it would pull. Our own label and :func:`reap_leftovers` clean up instead."""
    from testcontainers.core.config import testcontainers_config as config

    if config.ryuk_disabled:
        return
    client = docker_engine()
    try:
        client.images.get(config.ryuk_image)
    except Exception:
        config.ryuk_disabled = True
    finally:
        client.close()
