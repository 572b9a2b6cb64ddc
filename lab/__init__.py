"""The cloud-bandwidth lab: network-namespace hosts on a bridge with tc shaping, plus private
Redis, carbon-cache and graphite-web, for integration tests, benchmarks and the demo.

Stdlib only; needs root. Modules: :mod:`lab.netns` (bridge, hosts, shaping, crash cleanup),
:mod:`lab.services` (Redis, carbon, graphite-web), :mod:`lab.process` (process handles),
:mod:`lab.preflight` (prerequisite checks), :mod:`lab.core` (the composed :class:`Lab`).
"""

from .core import Lab
from .errors import LabError, LabUnavailable
from .netns import Bridge, Host, cleanup_stale, expected_tcp_goodput_mbit
from .preflight import ci_strict, explain_unavailable, preflight, require
from .process import LabProcess
from .services import Carbon, GraphiteWeb, RedisServer

__all__ = [
    "Bridge",
    "Carbon",
    "GraphiteWeb",
    "Host",
    "Lab",
    "LabError",
    "LabProcess",
    "LabUnavailable",
    "RedisServer",
    "ci_strict",
    "explain_unavailable",
    "cleanup_stale",
    "expected_tcp_goodput_mbit",
    "preflight",
    "require",
]
