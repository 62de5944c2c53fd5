"""What the container path leaves behind (nothing), how it chooses its source, and what
it does without an engine."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from connman.testing.containers import OWNER_LABEL, docker_engine, owner, postgres_image

pytest_plugins = ["pytester"]


@pytest.mark.docker
def test_the_container_is_removed_even_when_the_test_fails(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """The fixture removes its container, and the container's anonymous volume (the
    image declares PGDATA a volume), when the test using it fails."""
    seen = tmp_path / "seen.json"
    pytester.makepyfile(
        f"""
        import json
        from connman.testing.containers import docker_engine

        def test_fails(postgres_container):
            client = docker_engine()
            mounts = client.containers.get(postgres_container.container_id).attrs["Mounts"]
            client.close()
            volumes = [m["Name"] for m in mounts if m["Type"] == "volume"]
            with open({str(seen)!r}, "w") as f:
                json.dump({{"id": postgres_container.container_id, "volumes": volumes}}, f)
            assert False, "the test fails with its container running"
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    seen_data = json.loads(seen.read_text())
    assert seen_data["volumes"], "expected the PGDATA volume"
    client = docker_engine()
    try:
        assert client.containers.list(all=True, filters={"id": seen_data["id"]}) == []
        left = {v.name for v in client.volumes.list()} & set(seen_data["volumes"])
    finally:
        client.close()
    assert left == set()


@pytest.mark.docker
def test_leftovers_of_a_killed_run_are_reaped_and_a_live_runs_are_kept() -> None:
    """What a process that is gone (a killed run) left, a labelled container or a
    volume of its compose project, is removed by the next run; what a live process (a
    parallel run) made is not."""
    from connman.testing.containers import COMPOSE_PROJECT_LABEL, compose_project, reap_leftovers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    host = owner().rpartition(":")[0]
    client = docker_engine()
    containers: list = []
    volumes: list = []
    try:
        for label in (f"{host}:{gone}", owner()):
            containers.append(
                client.containers.create(
                    postgres_image(), command=["true"], labels={OWNER_LABEL: label}
                )
            )
        for project in (f"connman-test-{gone}", compose_project()):
            volumes.append(
                client.volumes.create(
                    name=f"{project}_data", labels={COMPOSE_PROJECT_LABEL: project}
                )
            )
        removed = reap_leftovers(client)
        ids = {c.id for c in client.containers.list(all=True, filters={"label": OWNER_LABEL})}
        names = {v.name for v in client.volumes.list()}
        assert f"container {containers[0].name}" in removed
        assert (containers[0].id in ids, containers[1].id in ids) == (False, True)
        assert f"volume {volumes[0].name}" in removed
        assert (volumes[0].name in names, volumes[1].name in names) == (False, True)
    finally:
        for container in containers:
            with contextlib.suppress(Exception):  # the reaped one is gone already
                container.remove(force=True, v=True)  # v: the image's PGDATA volume
        for volume in volumes:
            with contextlib.suppress(Exception):
                volume.remove(force=True)
        client.close()


def test_without_an_engine_a_docker_test_skips_with_the_reason_or_fails_when_required(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_container(postgres_container):
            pass

        @pytest.mark.docker
        def test_marked():
            pytest.skip("no engine in this test")
        """
    )
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.delenv("CONNMAN_REQUIRE_DOCKER", raising=False)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*no Docker: no Docker engine answers*"])
    monkeypatch.setenv("CONNMAN_REQUIRE_DOCKER", "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    # The fixture's failure is an error at setup, the marked test's a failure.
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(["*CONNMAN_REQUIRE_DOCKER=1*"])


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        pytest.param("docker", "testcontainers", marks=pytest.mark.docker),
        pytest.param("local", "local", marks=pytest.mark.postgres),
    ],
)
def test_connman_test_postgres_forces_the_source(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str, kind: str
) -> None:
    """With an engine and local binaries both at hand, the knob picks one; the URL in
    the environment is ignored when it is not ``env``."""
    pytester.makepyfile(
        f"""
        def test_source(postgres_server):
            assert postgres_server.kind == {kind!r}
        """
    )
    monkeypatch.setenv("CONNMAN_TEST_POSTGRES_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("CONNMAN_TEST_POSTGRES", source)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_connman_test_postgres_env_without_a_url_says_so(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        def test_source(postgres_url):
            pass
        """
    )
    monkeypatch.delenv("CONNMAN_TEST_POSTGRES_URL", raising=False)
    monkeypatch.delenv("CONNMAN_REQUIRE_POSTGRES", raising=False)
    monkeypatch.setenv("CONNMAN_TEST_POSTGRES", "env")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*CONNMAN_TEST_POSTGRES_URL is not set*CONNMAN_TEST_POSTGRES=env allows no other*"]
    )


@pytest.mark.docker
def test_a_container_that_never_gets_ready_is_removed_and_the_error_hides_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server refuses its settings and exits: start() raises DockerUnavailable with
    the reason, the container is gone, and the password (which testcontainers' own
    readiness error quotes) is not in the message."""
    from testcontainers.core.config import testcontainers_config

    from connman.testing import containers

    monkeypatch.setattr(testcontainers_config, "max_tries", 5)  # readiness: 5 s
    monkeypatch.setattr(containers, "_SERVER_SETTINGS", ("max_connections=-1",))
    client = docker_engine()
    mine = {"label": f"{OWNER_LABEL}={owner()}"}
    try:
        before = {c.id for c in client.containers.list(all=True, filters=mine)}
        server = containers.PostgresContainerServer(password="s3cret-never-shown")
        with pytest.raises(containers.DockerUnavailable) as info:
            server.start()
        after = {c.id for c in client.containers.list(all=True, filters=mine)}
    finally:
        client.close()
    message = str(info.value)
    assert "did not become ready" in message
    assert "max_connections" in message  # the server's own complaint, from its log
    assert "s3cret-never-shown" not in message
    assert after == before
