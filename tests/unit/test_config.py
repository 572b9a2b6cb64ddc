import pytest

from workers import config
from workers.config import ConfigError, Target, load, parse_rate, parse_targets


def test_defaults_match_the_original():
    s = load({"NODE_NAME": "n1"})
    assert (s.poll_interval_s, s.poll_length_s) == (300, 5)
    assert (s.download_prefix, s.upload_prefix) == ("bandwidth.download", "bandwidth.upload")
    assert (s.iperf3_port, s.netperf_port, s.graphite_port) == (5201, 12865, 2003)
    assert s.tool == "iperf3" and s.schedule == "mesh" and s.directions == ("download", "upload")
    assert s.parallel == 1 and s.node_queue == "node.n1"


def test_seed_scenario_1_netperf_daemonset_environment():
    env = {"CBANDWIDTH_PERF_SERVERS": "192.168.122.1", "CBANDWIDTH_PERF_SERVER_PORT": "2003",
           "CBANDWIDTH_POLL_INTERVAL": "20", "CBANDWIDTH_POLL_LENGTH": "3",
           "CBANDWIDTH_DOWNLOAD_PREFIX": "bandwidth.netperf",
           "CBANDWIDTH_GRAFANA_ADDRESS": "192.168.122.1", "CBANDWIDTH_GRAFANA_PORT": "2003",
           "CBANDWIDTH_NETPERF": "true", "NODE_NAME": "cluster-d"}
    s = load(env)
    assert s.tool == "netperf" and s.schedule == "aggregate"
    # The original used 12865 for netperf whatever CBANDWIDTH_PERF_SERVER_PORT said.
    assert s.port_for("netperf") == 12865
    assert s.directions == ("download",)
    assert s.graphite_address == "192.168.122.1" and s.graphite_port == 2003
    assert s.perf_servers == (Target("192.168.122.1", "192.168.122.1"),)


def test_seed_scenario_2_poller_environment():
    env = {"CBANDWIDTH_PERF_SERVERS":
           "10.42.0.12:cluster-a,10.42.1.19:cluster-b,10.42.2.3:cluster-c,10.42.3.3:cluster-d",
           "CBANDWIDTH_PERF_SERVER_PORT": "5201", "CBANDWIDTH_POLL_INTERVAL": "300",
           "CBANDWIDTH_POLL_LENGTH": "5"}
    s = load(env)
    assert [t.name for t in s.perf_servers] == ["cluster-a", "cluster-b", "cluster-c",
                                                  "cluster-d"]
    assert s.schedule == "star" and s.port_for("iperf3") == 5201


def test_graphite_names_win_over_the_grafana_aliases():
    s = load({"CBANDWIDTH_GRAFANA_ADDRESS": "10.0.0.1", "CBANDWIDTH_GRAPHITE_ADDRESS": "10.0.0.2",
              "CBANDWIDTH_GRAPHITE_PORT": "2103"})
    assert (s.graphite_address, s.graphite_port) == ("10.0.0.2", 2103)


@pytest.mark.parametrize("text, expected", [
    ("10.0.0.1", [("10.0.0.1", "10.0.0.1")]),
    ("10.0.0.1:a, host.example:b", [("10.0.0.1", "a"), ("host.example", "b")]),
    ("[fd00::1]:six,[::1]", [("fd00::1", "six"), ("::1", "::1")]),
    ("fd00::2", [("fd00::2", "fd00::2")]),
])
def test_perf_servers_parse(text, expected):
    assert [(t.address, t.name) for t in parse_targets(text)] == expected


@pytest.mark.parametrize("variable, value, words", [
    ("CBANDWIDTH_POLL_LENGTH", "-3", "between 1 and 3600"),
    ("CBANDWIDTH_POLL_LENGTH", "five", "whole number"),
    ("CBANDWIDTH_PERF_SERVERS", ":::,", "PERF_SERVERS"),
    ("CBANDWIDTH_PERF_SERVERS", "1.2.3.4; touch pwned", "bad address"),
    ("CBANDWIDTH_PERF_SERVERS", "[fd00::1", "unclosed"),
    ("CBANDWIDTH_TOOL", "ping", "one of iperf3, iperf2, netperf"),
    ("CBANDWIDTH_PERF_SERVER_PORT", "70000", "between 1 and 65535"),
    ("CBANDWIDTH_NETPERF", "maybe", "true or false"),
    ("CBANDWIDTH_DOWNLOAD_PREFIX", "bad prefix", "dot-separated"),
    ("CBANDWIDTH_REDIS_URL", "http://x", "redis://"),
    ("CBANDWIDTH_REDIS_URL", "sentinel://s1:26379;redis://r:6379", "sentinel://"),
    ("CBANDWIDTH_REDIS_URL", "redis://r1:6379;redis://r2:6379", "sentinel://"),
    ("CBANDWIDTH_REDIS_URL", "sentinel://s1:26379;sentinel://s2:x", "bad port"),
    ("CBANDWIDTH_REDIS_SENTINEL_MASTER", "mymaster", "not a sentinel://"),
    ("CBANDWIDTH_REDIS_SENTINEL_PASSWORD", "pw", "not a sentinel://"),
    ("CBANDWIDTH_REDIS_REPLICAS_WAIT", "-1", "between 0 and 16"),
    ("CBANDWIDTH_REDIS_REPLICAS_WAIT", "one", "whole number"),
    ("CBANDWIDTH_REDIS_REPLICAS_TIMEOUT", "30", "between 0.01 and 5"),
    ("CBANDWIDTH_IPERF_PARALLEL", "0", "between 1 and 128"),
    ("CBANDWIDTH_UDP_BANDWIDTH", "fast", "rate"),
    ("CBANDWIDTH_VISIBILITY_TIMEOUT", "61", "longest task"),
    ("CBANDWIDTH_SCHEDULE", "star", "needs CBANDWIDTH_PERF_SERVERS"),
    ("CBANDWIDTH_NODE_LABELS", "zone", "key=value"),
    ("CBANDWIDTH_SERVE", "iperf3,ssh", "servers are"),
    ("NODE_NAME", "a b", "NODE_NAME"),
])
def test_bad_value_names_the_variable_in_one_line(variable, value, words):
    with pytest.raises(ConfigError) as info:
        load({variable: value})
    message = str(info.value)
    assert message.startswith(variable + ":") and words in message and "\n" not in message


def test_netperf_flag_conflicting_with_tool_is_refused():
    with pytest.raises(ConfigError, match="CBANDWIDTH_TOOL"):
        load({"CBANDWIDTH_NETPERF": "1", "CBANDWIDTH_TOOL": "iperf3"})


def test_redis_password_is_put_in_the_url_and_masked_in_describe():
    s = load({"CBANDWIDTH_REDIS_URL": "redis://r.example:6380/1",
              "CBANDWIDTH_REDIS_PASSWORD": "s3cr#t"})
    assert s.redis_url == "redis://:s3cr%23t@r.example:6380/1"
    shown = dict(s.describe())["redis_url"]
    assert "s3cr" not in shown and "***" in shown


def test_a_sentinel_url_needs_a_valid_master_name_and_is_kept_whole():
    with pytest.raises(ConfigError, match="^CBANDWIDTH_REDIS_SENTINEL_MASTER: is required"):
        load({"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379;sentinel://s2:26379/0"})
    with pytest.raises(ConfigError, match="^CBANDWIDTH_REDIS_SENTINEL_MASTER: must be"):
        load({"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379",
              "CBANDWIDTH_REDIS_SENTINEL_MASTER": "my master"})
    s = load({"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379;sentinel://s2:26380/2",
              "CBANDWIDTH_REDIS_SENTINEL_MASTER": "cbw"})
    # The database written once at the end is put on every part (kombu and Celery read the
    # first part's).
    assert (s.redis_url, s.redis_sentinel_master) == (
        "sentinel://s1:26379/2;sentinel://s2:26380/2", "cbw")
    with pytest.raises(ConfigError, match="^CBANDWIDTH_REDIS_URL: the sentinels' parts name"):
        load({"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379/1;sentinel://s2:26380/2",
              "CBANDWIDTH_REDIS_SENTINEL_MASTER": "cbw"})


def test_writes_wait_for_one_replica_with_sentinel_and_for_none_without():
    sentinel = {"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379/0",
                "CBANDWIDTH_REDIS_SENTINEL_MASTER": "cbw"}
    assert load(sentinel).redis_replicas_wait == 1
    assert load({}).redis_replicas_wait == 0
    s = load(dict(sentinel, CBANDWIDTH_REDIS_REPLICAS_WAIT="0",
                  CBANDWIDTH_REDIS_REPLICAS_TIMEOUT="0.5"))
    assert (s.redis_replicas_wait, s.redis_replicas_timeout_s) == (0, 0.5)
    assert load({"CBANDWIDTH_REDIS_REPLICAS_WAIT": "2"}).redis_replicas_wait == 2


def test_every_password_of_a_sentinel_url_is_masked_in_describe():
    s = load({"CBANDWIDTH_REDIS_URL": "sentinel://s1:26379;sentinel://s2:26380/0",
              "CBANDWIDTH_REDIS_SENTINEL_MASTER": "cbw",
              "CBANDWIDTH_REDIS_PASSWORD": "m4ster pw",
              "CBANDWIDTH_REDIS_SENTINEL_PASSWORD": "s3nt"})
    assert s.redis_url == "sentinel://:m4ster%20pw@s1:26379/0;sentinel://:m4ster%20pw@s2:26380/0"
    shown = dict(s.describe())
    assert "m4ster" not in shown["redis_url"] and shown["redis_url"].count("***") == 2
    assert shown["redis_sentinel_password"] == "***"


@pytest.mark.parametrize("url, masked", [
    ("sentinel://:pw@s1:26379;sentinel://:pw@s2:26379/0",
     "sentinel://:***@s1:26379;sentinel://:***@s2:26379/0"),
    ("rediss://agent:p%40ss@r:6380/0", "rediss://agent:***@r:6380/0"),
    ("redis://:p@ss@r:6379/0", "redis://:***@r:6379/0"),
    ("redis://agent@r:6379/0", "redis://agent@r:6379/0"),
    ("redis://r:6379/0", "redis://r:6379/0"),
])
def test_mask_url_hides_every_password_as_written(url, masked):
    assert config.mask_url(url) == masked


def test_parse_rate_units_are_powers_of_1000():
    assert parse_rate("100M") == 100_000_000
    assert parse_rate("1.5g") == 1_500_000_000
    assert parse_rate("64k") == 64_000
    with pytest.raises(ValueError):
        parse_rate("0")


def test_exit_on_error_prints_one_line_and_exits_2(capsys):
    def bad():
        return load({"CBANDWIDTH_POLL_LENGTH": "-3"})

    with pytest.raises(SystemExit) as info:
        config.exit_on_error(bad)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CBANDWIDTH_POLL_LENGTH" in err


def test_schedule_defaults_to_mesh_without_static_targets_and_labels_parse():
    s = load({"CBANDWIDTH_NODE_LABELS": "zone=eu-1a, rack=r7", "CBANDWIDTH_SERVE": "iperf3,NETPERF"})
    assert s.schedule == "mesh"
    assert s.node_labels == (("zone", "eu-1a"), ("rack", "r7"))
    assert s.serve == ("iperf3", "netperf")
