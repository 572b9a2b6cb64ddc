"""The container harness itself, on real podman: a container with a healthcheck in a private
network namespace turns healthy through the pump, reaches a second container by name, and
closing the service leaves no container, network, volume, process or namespace behind."""
from __future__ import annotations

import pytest

from tests.containers import harness

pytestmark = pytest.mark.timeout(600)


def test_private_netns_service_runs_healthchecked_containers_and_cleans_up(podman):
    image = harness.base_image()
    with harness.PodmanService() as svc:
        netns = svc.name
        assert harness.netns_exists(netns)
        svc.create_network("cbw-harness-net", "198.19.250.0/24")
        svc.podman("volume", "create", "cbw-harness-vol")
        server = svc.run_container(
            image, "sleep", "600", name="cbw-harness-a", network="cbw-harness-net",
            options=["--cap-drop=ALL", "--read-only", "-v", "cbw-harness-vol:/data",
                     # `test -d /data` has no spaces per argument (podman 4.3 splits them)
                     "--health-cmd", '["test", "-d", "/data"]', "--health-interval", "1h"])
        assert svc.health(server) in ("starting", "healthy")
        svc.wait_healthy([server], timeout=60)
        assert svc.health_runs >= 1
        # Container DNS (aardvark-dns) inside the namespace: the second container resolves the
        # first by name to its address in the explicit subnet.
        client = svc.run_container(image, "getent", "hosts", "cbw-harness-a",
                                   network="cbw-harness-net")
        assert svc.podman("wait", client).stdout.strip() == "0"
        assert svc.logs(client).startswith("198.19.250.")
        # The bridge lives in the namespace, not in the root namespace.
        assert "198.19.250.1" in harness.run(svc.inside(["ip", "-4", "addr"])).stdout
        assert "198.19.250.1" not in harness.run(["ip", "-4", "addr"]).stdout
        assert any(svc.leftovers().values())
    assert not harness.netns_exists(netns)
    after = harness._inventory()
    assert server not in after["containers"] and client not in after["containers"]
    assert "cbw-harness-net" not in after["networks"]
    assert "cbw-harness-vol" not in after["volumes"]
