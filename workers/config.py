"""Configuration: read from the environment (python-decouple, so `.env` / `settings.ini` in the
working directory work too), validated once, at process start — never at import.

A bad value raises ConfigError, whose text is one line naming the variable and what is wrong;
entry points turn it into that line on stderr and a non-zero exit (see `exit_on_error`).
"""
from __future__ import annotations

import os
import re
import socket
import sys
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Callable, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from workers import defaults
from workers.hosts import own_address, validate_target
from workers.measurement import PROTOCOLS, TOOLS

PREFIX = "CBANDWIDTH_"
SCHEDULES = ("mesh", "star", "aggregate", "sampled")
SERVER_KINDS = ("iperf3", "iperf2", "netperf")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]+=[A-Za-z0-9_.-]*$")
DIRECTION_CHOICES = ("both", "download", "upload")
_PATH_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


class ConfigError(ValueError):
    """A setting is missing or invalid. str() is the one line shown to the user."""

    def __init__(self, variable: str, problem: str):
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Target:
    """A static test target from CBANDWIDTH_PERF_SERVERS: where to connect and what to call it."""

    address: str   # IP literal (IPv6 without brackets) or DNS name
    name: str      # the metric name; the address when none was given, as in the original


@dataclass(frozen=True)
class Settings:
    redis_url: str = defaults.REDIS_URL
    redis_sentinel_master: str | None = None    # with sentinel:// URLs: the monitored master
    redis_sentinel_password: str | None = None  # AUTH for the sentinels themselves, if any
    redis_replicas_wait: int = 0  # replicas a lock / hand-over must reach (WAIT); see store.py
    redis_replicas_timeout_s: float = defaults.REDIS_REPLICAS_TIMEOUT
    node_name: str = ""
    node_address: str | None = None
    perf_servers: tuple[Target, ...] = ()
    iperf3_port: int = defaults.IPERF3_PORT
    iperf2_port: int = defaults.IPERF2_PORT
    netperf_port: int = defaults.NETPERF_PORT
    poll_interval_s: int = defaults.POLL_INTERVAL
    poll_length_s: int = defaults.POLL_LENGTH
    download_prefix: str = defaults.DOWNLOAD_PREFIX
    upload_prefix: str = defaults.UPLOAD_PREFIX
    status_prefix: str = defaults.STATUS_PREFIX
    detail_prefix: str = defaults.DETAIL_PREFIX
    graphite_address: str | None = None
    graphite_port: int = defaults.GRAPHITE_PORT
    parallel: int = defaults.IPERF_PARALLEL
    netperf: bool = False
    tool: str = "iperf3"
    protocol: str = "tcp"
    udp_bandwidth_bps: int = defaults.UDP_BANDWIDTH
    directions: tuple[str, ...] = ("download", "upload")
    schedule: str = "star"
    poller: str | None = None
    node_labels: tuple[tuple[str, str], ...] = ()
    zone_label: str = "zone"
    sample_peers: int = defaults.SAMPLE_PEERS
    aggregate_max: int = defaults.AGGREGATE_MAX
    lock_wait_s: int = defaults.LOCK_WAIT
    lock_retries: int = defaults.LOCK_RETRIES
    mesh_prefix: str = defaults.MESH_PREFIX
    scheduler_prefix: str = defaults.SCHEDULER_PREFIX
    serve: tuple[str, ...] = ()
    server_idle_timeout_s: int = defaults.SERVER_IDLE_TIMEOUT
    timeout_margin_s: int = defaults.TIMEOUT_MARGIN
    max_attempts: int = defaults.MAX_ATTEMPTS
    carbon_timeout_s: float = defaults.CARBON_TIMEOUT
    carbon_retry_max_s: int = defaults.CARBON_RETRY_MAX
    results_backlog_max: int = defaults.RESULTS_BACKLOG_MAX
    visibility_timeout_s: int = defaults.VISIBILITY_TIMEOUT
    heartbeat_interval_s: int = defaults.HEARTBEAT_INTERVAL
    traffic_budget_bytes_per_hour: int | None = None   # sampled: None = no budget
    link_capacity_bps: int | None = None
    health_file: str | None = None
    debug: bool = False
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def port_for(self, tool: str) -> int:
        return {"iperf3": self.iperf3_port, "iperf2": self.iperf2_port,
                "netperf": self.netperf_port}[tool]

    @property
    def node_queue(self) -> str:
        return f"node.{self.node_name}"

    def describe(self) -> list[tuple[str, str]]:
        """(setting, value) pairs for `cloud-bandwidth config`, secrets masked."""
        rows = []
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if f.name == "redis_url":
                value = mask_url(value)
            elif f.name == "redis_sentinel_password":
                value = value and "***"
            elif f.name == "perf_servers":
                value = ",".join(f"{t.address}:{t.name}" for t in value) or "(none)"
            elif f.name == "node_labels":
                value = ",".join(f"{k}={v}" for k, v in value)
            elif isinstance(value, tuple):
                value = ",".join(value)
            rows.append((f.name, "" if value is None else str(value)))
        return rows


def mask_url(url: str) -> str:
    """The URL with any password replaced by ***; each part of a `;`-separated sentinel list.

    Works on the text as written (a percent-encoded password is masked too, and a URL that
    does not parse is masked from its last '@' back to the scheme)."""
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user}:***@{hostport}{slash}{path}"


# --- reading -------------------------------------------------------------------------------


class _Reader:
    """Looks variables up in an explicit mapping (tests) or through python-decouple."""

    def __init__(self, environ: Mapping[str, str] | None):
        if environ is not None:
            self._get: Callable[[str], str | None] = lambda name: environ.get(name)
        else:
            from decouple import AutoConfig

            # search_path: decouple would otherwise look for .env beside this module, not
            # where the operator runs the command.
            auto = AutoConfig(search_path=os.getcwd())
            self._get = lambda name: auto(name, default=None)
        self.seen: dict[str, str] = {}

    def raw(self, name: str) -> str | None:
        value = self._get(name)
        if value is not None:
            value = str(value).strip()
            self.seen[name] = value
        return value


def _number(reader: _Reader, name: str, default, low, high, kind=int):
    """A whole number (kind=int) or a number (kind=float) within [low, high]."""
    raw = reader.raw(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(name, f"must be {what}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low:g} and {high:g}, got {raw}")
    return value


def _int(reader: _Reader, name: str, default: int, low: int, high: int) -> int:
    return _number(reader, name, default, low, high, int)


def _float(reader: _Reader, name: str, default: float, low: float, high: float) -> float:
    return _number(reader, name, default, low, high, float)


def _bool(reader: _Reader, name: str, default: bool) -> bool:
    raw = reader.raw(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(name, f"must be true or false, got {raw!r}")


def _choice(reader: _Reader, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = reader.raw(name)
    if raw is None or raw == "":
        return default
    value = raw.lower()
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _prefix(reader: _Reader, name: str, default: str) -> str:
    raw = reader.raw(name)
    if raw is None or raw == "":
        return default
    if not _PATH_PREFIX.match(raw):
        raise ConfigError(name, "must be dot-separated parts of letters, digits, '_' and '-', "
                                f"got {raw!r}")
    return raw


def _health_file(reader: _Reader, name: str) -> str | None:
    raw = reader.raw(name)
    if not raw:
        return None
    if not os.path.isabs(raw) or "\0" in raw:
        raise ConfigError(name, f"must be an absolute file path, got {raw!r}")
    return raw


def _port(reader: _Reader, name: str, default: int) -> int:
    return _int(reader, name, default, 1, 65535)


def parse_rate(text: str) -> int:
    """'100M' → 100_000_000 bits per second (k/M/G are powers of 1000, as in iperf)."""
    match = _RATE.match(text.strip())
    if not match:
        raise ValueError(f"not a rate like 500M or 1G: {text!r}")
    number, unit = match.groups()
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[unit.lower()]
    value = int(float(number) * scale)
    if value <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    return value


# --- traffic budget (CBANDWIDTH_TRAFFIC_BUDGET, CBANDWIDTH_LINK_CAPACITY) ---------------------

_BYTES = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kKMGTP])(i?)B?|B)?$")
_SHARE = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
_BYTE_POWERS = {"K": 1, "M": 2, "G": 3, "T": 4, "P": 5}


def parse_bytes(text: str) -> int:
    """'50GB' → 50·10⁹, '200GiB' → 200·2³⁰, '1.5T' → 1.5·10¹² bytes, '4096' → 4096 bytes:
    k/M/G/T/P are powers of 1000, Ki/Mi/Gi/Ti/Pi powers of 1024, the B optional. A lowercase
    b (bits) is refused rather than guessed."""
    match = _BYTES.match(text.strip())
    if not match:
        raise ValueError(f"not an amount of bytes like 50GB, 200GiB or 1.5T, nor a share "
                         f"like 2%: {text!r}")
    number, unit, binary = match.groups()
    scale = (1024 if binary else 1000) ** _BYTE_POWERS[unit.upper()] if unit else 1
    value = int(Decimal(number) * scale)   # exact: 4611686019GB is 4611686019·10⁹ bytes
    if value <= 0:
        raise ValueError(f"must be positive: {text!r}")
    return value


def _traffic_budget(reader: _Reader, schedule: str) -> tuple[int | None, int | None]:
    """(bytes per node per hour, link capacity in bits/s), both None without a budget.

    The budget is either bytes (parse_bytes) or a share of the link capacity (`2%`: the node's
    test traffic averages at most 2 % of its link). Either way the planner needs the capacity:
    it is the only bound on a test's rate that holds whatever the network does (a flow's last
    measured rate can be beaten by the next test), so the budget cannot be exceeded."""
    budget_var, capacity_var = PREFIX + "TRAFFIC_BUDGET", PREFIX + "LINK_CAPACITY"
    raw_capacity = reader.raw(capacity_var)
    try:
        capacity = parse_rate(raw_capacity) if raw_capacity else None
    except ValueError as exc:
        raise ConfigError(capacity_var, f"{exc} (bits per second of a node's link)") from None
    raw = reader.raw(budget_var)
    if not raw:
        return None, capacity
    if schedule != "sampled":
        raise ConfigError(budget_var, f"applies to the sampled schedule only, "
                                      f"CBANDWIDTH_SCHEDULE is {schedule}")
    if capacity is None:
        raise ConfigError(budget_var, "needs CBANDWIDTH_LINK_CAPACITY (bits per second, e.g. "
                                      "10G): a test's traffic is bounded by the link's rate")
    share = _SHARE.match(raw)
    if share:
        percent = float(share.group(1))
        if not 0 < percent <= 100:
            raise ConfigError(budget_var, f"a share must be above 0 % and at most 100 %, "
                                          f"got {raw!r}")
        return int(percent / 100 * capacity / 8 * 3600), capacity
    try:
        return parse_bytes(raw), capacity
    except ValueError as exc:
        raise ConfigError(budget_var, f"{exc} (bytes per node per hour)") from None


def parse_targets(text: str) -> tuple[Target, ...]:
    """Parse `addr[:name],…` as the original did; IPv6 addresses go in brackets
    (`[fd00::1]:name`), a bare IPv6 literal without a name is accepted too.

    Raises ValueError naming the bad entry.
    """
    targets = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            raise ValueError("empty entry (stray comma?)")
        if entry.startswith("["):
            close = entry.find("]")
            if close < 0:
                raise ValueError(f"unclosed '[' in {entry!r}")
            address, rest = entry[1:close], entry[close + 1:]
            if rest and not rest.startswith(":"):
                raise ValueError(f"expected ':name' after ']' in {entry!r}")
            name = rest[1:]
        elif entry.count(":") >= 2:
            address, name = entry, ""       # a bare IPv6 literal; validated below
        else:
            address, _, name = entry.partition(":")
        try:
            address = validate_target(address)
        except ValueError as exc:
            raise ValueError(f"bad address in {entry!r}: {exc}") from None
        name = name.strip()
        targets.append(Target(address=address, name=name or address))
    return tuple(targets)


_REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
_SENTINEL_MASTER = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _redis_url(reader: _Reader) -> str:
    name = PREFIX + "REDIS_URL"
    url = reader.raw(name) or defaults.REDIS_URL
    parts_list = [urlsplit(part) for part in url.split(";")]
    schemes = {parts.scheme for parts in parts_list}
    if (not schemes <= set(_REDIS_SCHEMES) or len(schemes) != 1
            or (len(parts_list) > 1 and schemes != {"sentinel"})
            or any(p.scheme != "unix" and not p.hostname for p in parts_list)):
        raise ConfigError(name, f"must look like redis://[user:password@]host:port/db, "
                                f"rediss://… for TLS, or sentinel://host:26379;sentinel://…/db "
                                f"for Sentinel, got {mask_url(url)!r}")
    try:
        for parts in parts_list:
            parts.port
    except ValueError:
        raise ConfigError(name, f"bad port in {mask_url(url)!r}") from None
    if len(parts_list) > 1:
        # kombu and Celery take the database from the first sentinel's part, but the natural
        # way to write it is once at the end: every part gets it, so all read the same one.
        dbs = {p.path.strip("/") for p in parts_list} - {""}
        if len(dbs) > 1 or not all(db.isdigit() for db in dbs):
            raise ConfigError(name, f"the sentinels' parts name different or bad databases "
                                    f"({', '.join(sorted(dbs))}) in {mask_url(url)!r}")
        db = "/" + dbs.pop() if dbs else ""
        parts_list = [p._replace(path=db) for p in parts_list]
        url = ";".join(urlunsplit(p) for p in parts_list)
    password = reader.raw(PREFIX + "REDIS_PASSWORD")
    if password:
        # Kept out of the URL so it can come from a Kubernetes secret on its own. With
        # Sentinel it is the master's password (the sentinels' own: REDIS_SENTINEL_PASSWORD).
        rebuilt = []
        for parts in parts_list:
            host = parts.netloc.rpartition("@")[2]
            user = parts.username or ""
            netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
            rebuilt.append(urlunsplit(parts._replace(netloc=netloc)))
        url = ";".join(rebuilt)
    return url


def _redis_settings(reader: _Reader) -> dict[str, object]:
    """CBANDWIDTH_REDIS_URL and, with a sentinel:// URL, the Sentinel settings."""
    url = _redis_url(reader)
    sentinel = url.startswith("sentinel://")
    master_var, password_var = PREFIX + "REDIS_SENTINEL_MASTER", PREFIX + "REDIS_SENTINEL_PASSWORD"
    master = reader.raw(master_var) or None
    sentinel_password = reader.raw(password_var) or None
    if sentinel and not master:
        raise ConfigError(master_var, "is required with a sentinel:// CBANDWIDTH_REDIS_URL "
                                      "(the name the sentinels monitor the master by)")
    if master and not _SENTINEL_MASTER.match(master):
        raise ConfigError(master_var, f"must be letters, digits, '.', '_' or '-', got {master!r}")
    for var, value in ((master_var, master), (password_var, sentinel_password)):
        if value and not sentinel:
            raise ConfigError(var, "is set, but CBANDWIDTH_REDIS_URL is not a sentinel:// URL")
    # Writes that must survive a failover (a lock before its test, a result before its ack)
    # wait for this many replicas (Redis WAIT); with Sentinel there is a replica to promote.
    replicas = _int(reader, PREFIX + "REDIS_REPLICAS_WAIT", 1 if sentinel else 0, 0, 16)
    # Below the client's socket timeout (store._OPTIONS), which a longer WAIT would trip.
    timeout = _float(reader, PREFIX + "REDIS_REPLICAS_TIMEOUT", defaults.REDIS_REPLICAS_TIMEOUT,
                     0.01, 5)
    return {"redis_url": url, "redis_sentinel_master": master,
            "redis_sentinel_password": sentinel_password, "redis_replicas_wait": replicas,
            "redis_replicas_timeout_s": timeout}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting. Raises ConfigError on the first bad one."""
    r = _Reader(environ)
    p = PREFIX

    netperf = _bool(r, p + "NETPERF", False)
    tool = _choice(r, p + "TOOL", "netperf" if netperf else "iperf3", TOOLS)
    if netperf and tool != "netperf":
        raise ConfigError(p + "TOOL", f"is {tool!r} but CBANDWIDTH_NETPERF is true")

    raw_servers = r.raw(p + "PERF_SERVERS") or ""
    try:
        perf_servers = parse_targets(raw_servers) if raw_servers else ()
    except ValueError as exc:
        raise ConfigError(p + "PERF_SERVERS", str(exc)) from None

    node_name = r.raw("NODE_NAME") or socket.gethostname()
    if not _NODE_NAME.match(node_name):
        raise ConfigError("NODE_NAME", "must be letters, digits, '.', '_' or '-' "
                                       f"(it names the node's queue), got {node_name!r}")
    node_address = r.raw(p + "NODE_ADDRESS") or None
    if node_address and node_address.lower() == "auto":
        # `auto`: the address this host's name resolves to — in a container its address on
        # the container network, so scaled replicas each register one the others can reach.
        try:
            node_address = own_address()
        except ValueError as exc:
            raise ConfigError(p + "NODE_ADDRESS", f"auto: {exc}; set the address this node "
                                                  "is reached at") from None
    elif node_address:
        try:
            node_address = validate_target(node_address)
        except ValueError as exc:
            raise ConfigError(p + "NODE_ADDRESS", str(exc)) from None

    # CBANDWIDTH_GRAPHITE_* are the clear names; the original's GRAFANA_* name the same
    # carbon receiver and are honoured when the clear ones are absent.
    graphite_address = r.raw(p + "GRAPHITE_ADDRESS") or r.raw(p + "GRAFANA_ADDRESS") or None
    address_var = p + ("GRAPHITE_ADDRESS" if r.raw(p + "GRAPHITE_ADDRESS") else "GRAFANA_ADDRESS")
    if graphite_address:
        try:
            graphite_address = validate_target(graphite_address)
        except ValueError as exc:
            raise ConfigError(address_var, str(exc)) from None
    port_var = p + ("GRAPHITE_PORT" if r.raw(p + "GRAPHITE_PORT") else "GRAFANA_PORT")
    graphite_port = _port(r, port_var, defaults.GRAPHITE_PORT)

    raw_udp = r.raw(p + "UDP_BANDWIDTH")
    try:
        udp_bandwidth = parse_rate(raw_udp) if raw_udp else defaults.UDP_BANDWIDTH
    except ValueError as exc:
        raise ConfigError(p + "UDP_BANDWIDTH", str(exc)) from None

    # The original measured only the download direction with netperf.
    directions = _choice(r, p + "DIRECTIONS", "download" if tool == "netperf" else "both",
                         DIRECTION_CHOICES)
    # Static targets: Scenario 1 of the original (netperf / iperf2 collectors accept concurrent
    # clients) is the aggregate schedule, Scenario 2 (iperf3 servers polled in turn) is star.
    # Without static targets the registered nodes measure each other: mesh.
    if perf_servers:
        default_schedule = "star" if tool == "iperf3" else "aggregate"
    else:
        default_schedule = "mesh"
    schedule = _choice(r, p + "SCHEDULE", default_schedule, SCHEDULES)
    if schedule in ("star", "aggregate") and not perf_servers and r.raw(p + "SCHEDULE"):
        raise ConfigError(p + "SCHEDULE", f"{schedule} needs CBANDWIDTH_PERF_SERVERS")

    labels = []
    for item in filter(None, (x.strip() for x in (r.raw(p + "NODE_LABELS") or "").split(","))):
        if not _LABEL.match(item):
            raise ConfigError(p + "NODE_LABELS", f"expected key=value,…, got {item!r}")
        labels.append(tuple(item.split("=", 1)))

    serve = tuple(dict.fromkeys(filter(None, (x.strip().lower() for x in
                                              (r.raw(p + "SERVE") or "").split(",")))))
    for kind in serve:
        if kind not in SERVER_KINDS:
            raise ConfigError(p + "SERVE", f"servers are {', '.join(SERVER_KINDS)}, got {kind!r}")

    length = _int(r, p + "POLL_LENGTH", defaults.POLL_LENGTH, 1, 3600)
    margin = _int(r, p + "TIMEOUT_MARGIN", defaults.TIMEOUT_MARGIN, 1, 600)
    visibility = _int(r, p + "VISIBILITY_TIMEOUT", defaults.VISIBILITY_TIMEOUT, 60, 7 * 86400)
    lock_wait = _int(r, p + "LOCK_WAIT", defaults.LOCK_WAIT, 0, 3600)
    longest_task = longest_task_s(lock_wait, 2 * (length + margin))
    if visibility <= longest_task:
        raise ConfigError(p + "VISIBILITY_TIMEOUT",
                          f"must exceed the longest task ({longest_task} s: lock wait + test "
                          f"for CBANDWIDTH_POLL_LENGTH={length}), got {visibility}")

    traffic_budget, link_capacity = _traffic_budget(r, schedule)

    poller = r.raw(p + "POLLER") or None
    if poller and not _NODE_NAME.match(poller):
        raise ConfigError(p + "POLLER", f"must be a node name, got {poller!r}")

    return Settings(
        **_redis_settings(r),
        node_name=node_name,
        node_address=node_address,
        perf_servers=perf_servers,
        iperf3_port=_port(r, p + "PERF_SERVER_PORT", defaults.IPERF3_PORT),
        iperf2_port=_port(r, p + "IPERF2_PORT", defaults.IPERF2_PORT),
        netperf_port=_port(r, p + "NETPERF_PORT", defaults.NETPERF_PORT),
        poll_interval_s=_int(r, p + "POLL_INTERVAL", defaults.POLL_INTERVAL, 1, 7 * 86400),
        poll_length_s=length,
        download_prefix=_prefix(r, p + "DOWNLOAD_PREFIX", defaults.DOWNLOAD_PREFIX),
        upload_prefix=_prefix(r, p + "UPLOAD_PREFIX", defaults.UPLOAD_PREFIX),
        status_prefix=_prefix(r, p + "STATUS_PREFIX", defaults.STATUS_PREFIX),
        detail_prefix=_prefix(r, p + "DETAIL_PREFIX", defaults.DETAIL_PREFIX),
        graphite_address=graphite_address,
        graphite_port=graphite_port,
        parallel=_int(r, p + "IPERF_PARALLEL", defaults.IPERF_PARALLEL, 1, 128),
        netperf=netperf,
        tool=tool,
        protocol=_choice(r, p + "PROTOCOL", "tcp", PROTOCOLS),
        udp_bandwidth_bps=udp_bandwidth,
        directions=("download", "upload") if directions == "both" else (directions,),
        schedule=schedule,
        poller=poller,
        node_labels=tuple(labels),
        zone_label=r.raw(p + "ZONE_LABEL") or "zone",
        sample_peers=_int(r, p + "SAMPLE_PEERS", defaults.SAMPLE_PEERS, 1, 10_000),
        aggregate_max=_int(r, p + "AGGREGATE_MAX", defaults.AGGREGATE_MAX, 1, 100_000),
        lock_wait_s=lock_wait,
        lock_retries=_int(r, p + "LOCK_RETRIES", defaults.LOCK_RETRIES, 0, 100),
        mesh_prefix=_prefix(r, p + "MESH_PREFIX", defaults.MESH_PREFIX),
        scheduler_prefix=_prefix(r, p + "SCHEDULER_PREFIX", defaults.SCHEDULER_PREFIX),
        serve=serve,
        server_idle_timeout_s=_int(r, p + "SERVER_IDLE_TIMEOUT", defaults.SERVER_IDLE_TIMEOUT,
                                   1, 86400),
        timeout_margin_s=margin,
        max_attempts=_int(r, p + "MAX_ATTEMPTS", defaults.MAX_ATTEMPTS, 1, 100),
        carbon_timeout_s=_float(r, p + "CARBON_TIMEOUT", defaults.CARBON_TIMEOUT, 0.1, 300),
        carbon_retry_max_s=_int(r, p + "CARBON_RETRY_MAX", defaults.CARBON_RETRY_MAX, 1, 300),
        results_backlog_max=_int(r, p + "RESULTS_BACKLOG_MAX", defaults.RESULTS_BACKLOG_MAX,
                                 100, 100_000_000),
        visibility_timeout_s=visibility,
        heartbeat_interval_s=_int(r, p + "HEARTBEAT_INTERVAL", defaults.HEARTBEAT_INTERVAL,
                                  1, 3600),
        traffic_budget_bytes_per_hour=traffic_budget,
        link_capacity_bps=link_capacity,
        health_file=_health_file(r, p + "HEALTH_FILE"),
        debug=_bool(r, p + "DEBUG", False),
        sources=dict(r.seen),
    )


_settings: Settings | None = None


_acting_as: ContextVar[Settings | None] = ContextVar("cbandwidth_acting_as", default=None)
"""Settings that replace the process's in the current thread/context: set only by the
simulator (workers.simulate), whose one process runs the task path for many virtual nodes,
each with its own name. Nothing else sets it, and no setting or message can."""


def get() -> Settings:
    """The process's settings, loaded on first use and kept (the process reads them once); in
    a simulator thread running a virtual node's task, that node's (see `acting_as`)."""
    acting = _acting_as.get()
    if acting is not None:
        return acting
    global _settings
    if _settings is None:
        _settings = load()
    return _settings


def acting_as(settings: Settings | None) -> Token:
    """Make `get()` return `settings` in the current context until `stop_acting(token)`: the
    simulator's per-task node identity (a thread of its process is one virtual node for the
    length of one task)."""
    return _acting_as.set(settings)


def stop_acting(token: Token) -> None:
    _acting_as.reset(token)


def valid_node_name(name: object) -> bool:
    """A NODE_NAME as config accepts it (it names the node's queue)."""
    return isinstance(name, str) and bool(_NODE_NAME.match(name))


def longest_task_s(lock_wait_s: float, longest_run_s: float) -> float:
    """Seconds one tasks.measure can hold its message: the lock wait, the test's longest run,
    and a minute for the rest. CBANDWIDTH_VISIBILITY_TIMEOUT must exceed it, or Redis hands
    the message to a second worker while the first still measures."""
    return lock_wait_s + longest_run_s + 60


def shutdown_grace_s(settings: Settings) -> int:
    """Seconds a node agent needs after SIGTERM (a rolling restart) to leave nothing behind:
    its own running test (both directions, each killed at length + margin) and its hand-over,
    then one test another node may have started against this node's servers in the meantime
    (the agent stops its servers only when no test involves the node), each lock's slack and
    a few seconds to stop. A test still waiting for its locks is handed back at once, not
    waited for. compose's stop_grace_period and the chart's terminationGracePeriodSeconds
    must be at least this (the defaults: 2 × 30 + 2 × 10 + 10 = 90 s)."""
    longest_run = 2 * (settings.poll_length_s + settings.timeout_margin_s)
    return int(2 * longest_run + 2 * defaults.LOCK_SLACK + 10)


def check_node_identity(settings: Settings) -> Settings:
    """A node agent's name and address, checked once at agent start: other nodes test this
    node at CBANDWIDTH_NODE_ADDRESS, or at NODE_NAME when that is unset, so then NODE_NAME must
    be an IP address or DNS name too (``node_1``, ``gpu-node-``, ``rack1.42`` are not: every
    test against the node would fail as a bad request). The result handler and beat only
    name their queue with NODE_NAME and are not held to this."""
    if settings.node_address:
        return settings
    try:
        validate_target(settings.node_name)
    except ValueError as exc:
        reason = str(exc).split(" (", 1)[-1].rstrip(")") if " (" in str(exc) else str(exc)
        raise ConfigError("NODE_NAME", f"{settings.node_name!r} is not an IP address or DNS "
                          f"name ({reason}), and other nodes reach this node at its name "
                          f"while CBANDWIDTH_NODE_ADDRESS is unset: set "
                          f"CBANDWIDTH_NODE_ADDRESS, or use a DNS-style NODE_NAME") from None
    return settings


def exit_on_error(action: Callable[[], Settings] = get) -> Settings:
    """Run `action`; on ConfigError print its one line to stderr and exit with status 2."""
    try:
        return action()
    except ConfigError as exc:
        print(f"cloud-bandwidth: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
