"""Choosing the two agents of the `helm test` ad-hoc test (workers.selftest.choose_pair)."""
import pytest

from workers.selftest import choose_pair


def node(name, serves=("iperf3",)):
    return {"name": name, "address": f"198.18.0.{len(name)}", "serves": list(serves)}


def test_picks_a_server_and_another_agent():
    measuring, measured = choose_pair([node("a"), node("b", ())], "iperf3", None, None)
    assert (measuring["name"], measured["name"]) == ("b", "a")


def test_named_agents_are_used():
    nodes = [node("a"), node("b"), node("c")]
    measuring, measured = choose_pair(nodes, "iperf3", "c", "b")
    assert (measuring["name"], measured["name"]) == ("c", "b")


def test_the_measuring_agent_is_not_its_own_target():
    measuring, measured = choose_pair([node("a"), node("b")], "iperf3", "a", None)
    assert (measuring["name"], measured["name"]) == ("a", "b")


@pytest.mark.parametrize("nodes, tool, source, target, message", [
    ([], "iperf3", None, None, "no registered agent serves iperf3"),
    ([node("a")], "iperf3", None, None, "only one agent is registered"),
    ([node("a"), node("b")], "netperf", None, None, "no registered agent serves netperf"),
    ([node("a"), node("b")], "iperf3", "zz", None, "agent 'zz' is not registered"),
])
def test_missing_agents_are_named(nodes, tool, source, target, message):
    with pytest.raises(LookupError, match=message):
        choose_pair(nodes, tool, source, target)
