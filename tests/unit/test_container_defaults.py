"""What the image and compose.yaml rely on from configuration and the health checks:
CBANDWIDTH_NODE_ADDRESS=auto (each scaled replica registers the address its hostname resolves
to), CBANDWIDTH_HEALTH_FILE, and the freshness rules of `python -m workers.healthcheck`."""
import json
import socket

import pytest

from workers import config, healthcheck, liveness
from workers.config import ConfigError, load
from workers.hosts import own_address


def _resolver(monkeypatch, hostname, addresses):
    def fake_getaddrinfo(host, port, *args, **kwargs):
        assert host == hostname
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, 0)) for a in addresses]

    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)


def test_own_address_skips_loopback_and_link_local(monkeypatch):
    _resolver(monkeypatch, "a1b2c3d4e5f6", ["127.0.1.1", "fe80::1%eth0", "198.19.16.5"])
    assert own_address() == "198.19.16.5"


def test_own_address_refuses_a_name_that_resolves_only_to_loopback(monkeypatch):
    _resolver(monkeypatch, "laptop", ["127.0.1.1", "::1"])
    with pytest.raises(ValueError, match="127.0.1.1, ::1"):
        own_address()


def test_node_address_auto_registers_the_container_address_under_the_hostname(monkeypatch):
    _resolver(monkeypatch, "a1b2c3d4e5f6", ["198.19.16.7"])
    s = load({"CBANDWIDTH_NODE_ADDRESS": "auto"})
    assert (s.node_name, s.node_address) == ("a1b2c3d4e5f6", "198.19.16.7")
    # AUTO in any case; NODE_NAME still names the node, independently of the address.
    s = load({"CBANDWIDTH_NODE_ADDRESS": "AUTO", "NODE_NAME": "edge-1"})
    assert (s.node_name, s.node_address) == ("edge-1", "198.19.16.7")


def test_node_address_keeps_its_meaning_without_auto(monkeypatch):
    _resolver(monkeypatch, "h1", [])  # never consulted
    assert load({"NODE_NAME": "h1"}).node_address is None  # registry falls back to NODE_NAME
    assert load({"NODE_NAME": "h1", "CBANDWIDTH_NODE_ADDRESS": "10.0.0.9"}).node_address \
        == "10.0.0.9"


def test_node_address_auto_that_cannot_resolve_stops_with_one_line(monkeypatch):
    _resolver(monkeypatch, "h1", [])
    with pytest.raises(ConfigError) as info:
        load({"CBANDWIDTH_NODE_ADDRESS": "auto"})
    assert info.value.variable == "CBANDWIDTH_NODE_ADDRESS"
    assert "\n" not in str(info.value) and "does not resolve" in str(info.value)


def test_health_file_must_be_an_absolute_path():
    assert load({"NODE_NAME": "n"}).health_file is None
    assert load({"NODE_NAME": "n", "CBANDWIDTH_HEALTH_FILE": "/tmp/x.alive"}).health_file \
        == "/tmp/x.alive"
    with pytest.raises(ConfigError, match="CBANDWIDTH_HEALTH_FILE"):
        load({"NODE_NAME": "n", "CBANDWIDTH_HEALTH_FILE": "relative/x"})


@pytest.mark.parametrize("age, healthy", [(0, True), (19.9, True), (20.1, False)])
def test_agent_heartbeat_is_healthy_for_two_intervals(age, healthy):
    entry = json.dumps({"name": "n1", "heartbeat": 1000.0})
    problem = healthcheck.judge_heartbeat(entry, "n1", 1000.0 + age, 10)
    assert (problem is None) == healthy
    if not healthy:
        assert "n1" in problem and "limit 20 s" in problem


def test_agent_missing_or_garbled_entry_is_unhealthy():
    assert "not in the registry" in healthcheck.judge_heartbeat(None, "n1", 0, 10)
    assert "unreadable" in healthcheck.judge_heartbeat("{}", "n1", 0, 10)


def test_liveness_file_rules():
    assert healthcheck.judge_file(None, "/tmp/a", 100, 10).endswith("does not exist (yet)")
    assert healthcheck.judge_file(95.0, "/tmp/a", 100, 10) is None
    assert "25 s old" in healthcheck.judge_file(75.0, "/tmp/a", 100, 10)


def test_touch_writes_the_file_only_when_configured_and_never_raises(tmp_path):
    settings = config.Settings(node_name="n", health_file=str(tmp_path / "alive"))
    liveness.touch(settings)
    assert (tmp_path / "alive").exists()
    liveness.touch(config.Settings(node_name="n"))  # not configured: nothing, no error
    liveness.touch(config.Settings(node_name="n", health_file=str(tmp_path / "no/such/x")))


def test_usage_errors_exit_1(capsys):
    assert healthcheck.main([]) == 1
    assert healthcheck.main(["worker"]) == 1
    assert "agent|results|beat" in capsys.readouterr().err
