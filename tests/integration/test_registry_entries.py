"""Registry entries are checked before anyone plans with them (issue 9, item 5): one entry
without a name, with an address that is not one, or with the wrong shape is skipped with a
warning; planning and ad-hoc tests go on with the good ones. Against a real redis-server."""
from __future__ import annotations

import json
import logging
import time

import pytest

from beat import plan
from tests.integration.inprocess import make_env, register
from workers import config, registry


@pytest.fixture
def env(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch)
    monkeypatch.setattr(registry, "_warned", {})
    yield made
    made.close()


BAD_ENTRIES = {
    "cbw:node:noname": {"address": "198.18.0.50"},
    "cbw:node:evil": {"name": "evil", "address": "-oProxyCommand=x"},
    "cbw:node:typed": {"name": "typed", "address": "198.18.0.51", "ports": {"iperf3": "x"}},
    "cbw:node:other": {"name": "not-the-key", "address": "198.18.0.52"},
    "cbw:node:under": {"name": "bad name!", "address": "198.18.0.53"},
    "cbw:node:labels": {"name": "labels", "address": "198.18.0.54", "labels": ["zone"]},
}


def _write_bad(r):
    """Bad entries as a broken or foreign writer would leave them: in the index too."""
    raw = {name: json.dumps(entry) for name, entry in BAD_ENTRIES.items()}
    raw.update({"cbw:node:garbage": "{not json", "cbw:node:list": "[1, 2]"})
    for name, text in raw.items():
        r.set(name, text, ex=600)
        r.zadd(registry.INDEX, {name.removeprefix("cbw:node:"): time.time() + 600})


def test_bad_entries_are_skipped_with_a_warning_and_planning_goes_on(env, caplog):
    register(env.redis, "a", "b", "c")
    _write_bad(env.redis)
    with caplog.at_level(logging.WARNING):
        nodes = registry.nodes(env.redis)
    assert [n["name"] for n in nodes] == ["a", "b", "c"]
    for name in list(BAD_ENTRIES) + ["cbw:node:garbage", "cbw:node:list"]:
        assert name in caplog.text, name
    cycle = plan.plan_cycle(config.load({"NODE_NAME": "beat"}), nodes, 0)
    assert len(cycle.jobs) == 3  # every pair of a, b, c


def test_a_warning_is_not_repeated_for_the_same_bad_entry(env, caplog):
    _write_bad(env.redis)
    with caplog.at_level(logging.WARNING):
        registry.nodes(env.redis)
        assert "cbw:node:evil" in caplog.text
        caplog.clear()
        registry.nodes(env.redis)
    assert "cbw:node:evil" not in caplog.text


def test_an_ad_hoc_test_goes_on_past_a_bad_entry(env):
    register(env.redis, "a")
    _write_bad(env.redis)
    assert registry.find_by_address(env.redis, "198.18.0.1") == "a"
    assert registry.find_by_address(env.redis, "198.18.0.50") is None
