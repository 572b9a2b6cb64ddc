from tests.containers.fixtures import app_image, podman, podman_service  # noqa: F401
