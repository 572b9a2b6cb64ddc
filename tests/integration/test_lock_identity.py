"""Lock identity is the address, not the text of the target (issue 9, item 6): a test by DNS
name to a node registered by its IP takes that node's peer lock and its iperf3 server lock, so
it never runs beside another test of the same node. In-process against a real redis-server;
`localhost` is a name that resolves to 127.0.0.1 on every machine (no /etc/hosts edits)."""
from __future__ import annotations

import pytest

import tasks
from tests.integration.inprocess import make_env
from workers import locks, registry


@pytest.fixture
def env(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch)
    yield made
    made.close()


def _register(r, name: str, address: str) -> None:
    registry.announce(r, {"name": name, "address": address,
                          "ports": {"iperf3": 5201, "iperf2": 5001, "netperf": 12865},
                          "tools": ["iperf3"], "labels": {}, "serves": ["iperf3"],
                          "version": registry.VERSION, "started": 0.0}, 600)


def _skipped_because_busy(env, monkeypatch, target: str, held: str) -> None:
    """Another test holds `held`; a test of `target` must wait for it (here: be skipped at
    once, with no lock wait), never run beside it."""
    ran = []
    monkeypatch.setattr(tasks.runners, "run", ran.append)  # it must not measure
    env.redis.set(locks.lock_key(held), "another-test", px=60_000)
    outcome = tasks.measure.apply(kwargs={"target": target, "name": "by-name"},
                                  task_id=f"t-{held}")
    assert outcome.successful(), outcome.traceback
    assert ran == []
    [message] = [e["body"] for e in env.stream() if e["kind"] == "result"]
    assert message["status"] == "failed"
    assert message["download"]["reason"] == "skipped"
    assert held in message["download"]["error"]


def test_a_test_by_name_takes_the_peer_lock_of_the_node_registered_by_ip(env, monkeypatch):
    _register(env.redis, "h2", "127.0.0.1")
    _skipped_because_busy(env, monkeypatch, "localhost", "node:h2")


def test_a_test_by_name_takes_the_iperf3_server_lock_of_its_address(env, monkeypatch):
    _skipped_because_busy(env, monkeypatch, "localhost", "srv:iperf3:127.0.0.1:5201")


def test_a_test_by_a_node_name_takes_that_node_s_locks(env, monkeypatch):
    _register(env.redis, "h2", "127.0.0.1")
    _skipped_because_busy(env, monkeypatch, "h2", "srv:iperf3:127.0.0.1:5201")


def test_a_name_that_does_not_resolve_keeps_its_text_and_is_bounded(env):
    from workers import hosts

    assert hosts.addresses("no-such-host.invalid", timeout_s=2.0) == []
    assert hosts.addresses("198.18.0.7") == ["198.18.0.7"]
    assert hosts.addresses("[::1]") == ["::1"]
    assert "127.0.0.1" in hosts.addresses("localhost")
