"""pytest fixtures over the container harness; import them into a test module or conftest."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.containers import harness


@pytest.fixture(scope="session")
def podman() -> None:
    """Real containers can run here (else skip / fail in CI); podman is configured."""
    harness.podman_ready()


@pytest.fixture(scope="session")
def app_image(podman) -> str:
    """The project image's tag, built (or rebuilt from cache) once per session."""
    return harness.app_image()


@pytest.fixture
def podman_service(podman) -> Iterator[harness.PodmanService]:
    """A private netns with podman's Docker API; everything made in it is removed after."""
    with harness.PodmanService() as service:
        yield service
