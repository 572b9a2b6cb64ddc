import ipaddress

import pytest

from workers.hosts import ip_version, validate_target


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1", "127.0.0.1"),
    ("198.18.0.11", "198.18.0.11"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("fd00:0:0:0:0:0:0:2", "fd00::2"),
    ("[FD00::2]", "fd00::2"),
    ("::ffff:127.0.0.1", str(ipaddress.ip_address("::ffff:127.0.0.1"))),
    ("localhost", "localhost"),
    ("h1", "h1"),
    ("node-3.cluster.local", "node-3.cluster.local"),
    ("node-3.cluster.local.", "node-3.cluster.local."),
    ("3com.example", "3com.example"),
    ("a" * 63 + ".example", "a" * 63 + ".example"),
    (".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61])),  # 253
])
def test_accepts_ip_literals_and_dns_names(text, expected):
    assert validate_target(text) == expected


@pytest.mark.parametrize("text", [
    "",
    " ",
    "1.2.3.4; touch pwned",
    "1.2.3.4 ",
    " 1.2.3.4",
    "host\n",
    "host name",
    "$(reboot)",
    "`id`",
    "a|b",
    "a&&b",
    "a>b",
    "-oProxyCommand=x",
    "-c",
    "host-",
    "ho_st",
    ":::",
    "1:2:3:4:5:6:7:8:9",
    "[1.2.3.4]",
    "[::1",
    "::1]",
    "[]",
    "[host]",
    "fe80::1%eth0",
    "[fe80::1%eth0]",
    "1.2.3.4:5201",
    "256.1.1.1",
    "1.2.3",
    "127.1",
    "0x7f000001",
    "01.2.3.4",
    "1.2.3.04",
    "host..example",
    ".example",
    "example..",
    ".",
    "a" * 64 + ".example",
    ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters
    "näme.example",
    "host\x00",
])
def test_rejects_everything_else(text):
    with pytest.raises(ValueError, match="not an IP address or DNS name"):
        validate_target(text)


def test_the_message_names_the_input():
    with pytest.raises(ValueError, match=r"not an IP address or DNS name: '1\.2\.3\.4; touch"):
        validate_target("1.2.3.4; touch pwned")


@pytest.mark.parametrize("value", [None, 1234, b"127.0.0.1"])
def test_rejects_non_strings(value):
    with pytest.raises(ValueError):
        validate_target(value)


@pytest.mark.parametrize("text, version", [
    ("127.0.0.1", 4), ("::1", 6), ("[::1]", 6), ("localhost", None), ("1.2.3", None)])
def test_ip_version(text, version):
    assert ip_version(text) == version
