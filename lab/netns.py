"""Hosts as Linux network namespaces on a bridge, with tc shaping as the bandwidth ground truth.

Layout (all names derive from one per-lab *token*, so a lab's objects are recognisable and never
collide with another lab's, even one running at the same time in another process)::

    root namespace                         namespace <token>-h1
    bridge <token>br  198.18.0.1/24  ──  veth <token>v1  ══  eth0 198.18.0.11/24
                                     ──  veth <token>v2  ══  eth0 198.18.0.12/24 (namespace <token>-h2)

The token is ``<prefix><owner pid, 5 base-36 digits><2 random base-36 digits>``, e.g.
``cbw02ix3k7q``: the owner pid lets :func:`cleanup_stale` tell leftovers of a crashed run
(owner dead) from a lab that is still in use. Interface names stay within Linux's 15 characters.

Only 198.18.0.0/15 (RFC 2544 benchmarking range) is ever used. Each bridge takes the first /24 of
that range that no root-namespace address is using yet, so normally 198.18.0.0/24, and a second
lab running concurrently gets 198.18.1.0/24 instead of breaking the first one's routing.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .errors import LabError
from .process import LabProcess, launch, merged_env

__all__ = [
    "DEFAULT_PREFIX",
    "LAB_NETWORK",
    "TCP_GOODPUT_FACTOR",
    "Bridge",
    "Host",
    "claim_token",
    "cleanup_stale",
    "expected_tcp_goodput_mbit",
    "new_token",
    "release_token",
    "tbf_args",
]

#: The only address range the lab uses (RFC 2544 benchmarking).
LAB_NETWORK = ipaddress.IPv4Network("198.18.0.0/15")
#: Prefix of every namespace, interface and state directory this project's labs create.
DEFAULT_PREFIX = "cbw"

# Where persistent UTS namespaces (per-host hostnames) and the subnet-allocation lock live.
_RUN_DIR_TEMPLATE = "/run/{prefix}-lab"
_NETNS_CONF_DIR = Path("/etc/netns")
_NETNS_RUN_DIR = Path("/run/netns")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_PID_DIGITS = 5  # 36**5 > 2**22, Linux's largest pid_max
_TOKEN_RANDOM_DIGITS = 2
#: File in a lab state dir kept for debugging: cleanup_stale() leaves such a dir alone.
KEPT_MARKER = "KEPT"
_HOSTNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_PREFIX_RE = re.compile(r"^[a-z]{1,4}$")

# Tokens of labs alive in this process (token → number of claims: a Lab and its Bridge each
# hold one). cleanup_stale() must not remove them even though their owner pid (ours) is alive,
# and must remove our pid's tokens that are *not* live (left by an earlier process that had the
# same pid).
_LIVE_TOKENS: dict[str, int] = {}


def claim_token(token: str) -> None:
    """Mark ``token`` as in use by this process (cleanup_stale() will not touch it)."""
    _LIVE_TOKENS[token] = _LIVE_TOKENS.get(token, 0) + 1


def release_token(token: str) -> None:
    """Undo one :func:`claim_token`."""
    count = _LIVE_TOKENS.get(token, 0) - 1
    if count > 0:
        _LIVE_TOKENS[token] = count
    else:
        _LIVE_TOKENS.pop(token, None)


# --- tc tbf parameters --------------------------------------------------------------------
# Measured on this machine (2 cores, veth + bridge, iperf3 single TCP stream, 3 s, receiver
# side, both directions, MTU 1500):
#   burst 32 kbit (fixed):            50 Mbit → 42.8-45.4, 200 → 182-185, 500 → 429-449
#   burst 2 ms of rate (≥ 15 kB):     500 Mbit → 451-461 (90-92 %)
#   burst 4 ms of rate:               50 → 47.4-47.8, 200 → 190.5-191.2, 500 → 477-478.5
#   burst 10 ms of rate (≥ 64 KiB):   50 → 47.8-48.0, 100 → 95.8-95.9, 200 → 191.7-192.0,
#                                     300 → 287.4-287.9, 500 → 479.5-480.0   (95.6-96.0 %)
#   latency 20 ms vs 100 ms: no measurable difference with the 10 ms burst.
# With a small bucket, tokens that accrue while the qdisc waits for its watchdog timer (or for
# the CPU) overflow the bucket and are lost, and more so at high rates; 10 ms of rate is also
# ≥ rate/HZ for any HZ ≥ 100 and ≥ 40 full frames. What remains is the TCP payload ceiling:
# tbf meters whole Ethernet frames (1514 B carry 1448 B of TCP payload with timestamps), so
# iperf3 reports 1448/1514 = 95.6 % of the configured rate, as a real 1 Gbit/s NIC shows about
# 941 Mbit/s. The bucket adds a one-off burst of 10 ms of rate (< 0.4 % of a 3 s test).
TBF_BURST_SECONDS = 0.010
#: Lower bound of the bucket: a 64 KiB GSO super-packet fits, so tbf need not segment it.
TBF_MIN_BURST_BYTES = 64 * 1024
#: Queue limit expressed as time: about a modest switch buffer; no effect on throughput here.
TBF_LATENCY = "50ms"
#: Share of the shaped (Ethernet frame) rate a TCP stream carries as payload at MTU 1500.
TCP_GOODPUT_FACTOR = 1448 / 1514


def tbf_args(rate_mbit: float) -> list[str]:
    """tc arguments of a tbf qdisc limiting to ``rate_mbit`` Mbit/s (10**6 bit/s, frames)."""
    if not rate_mbit > 0:
        raise ValueError(f"rate must be > 0 Mbit/s, got {rate_mbit!r}")
    rate_bps = round(rate_mbit * 1_000_000)
    burst_bytes = max(int(rate_bps / 8 * TBF_BURST_SECONDS), TBF_MIN_BURST_BYTES)
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst_bytes), "latency", TBF_LATENCY]


def expected_tcp_goodput_mbit(rate_mbit: float) -> float:
    """What a single TCP stream should measure (Mbit/s) through a host shaped to ``rate_mbit``."""
    return rate_mbit * TCP_GOODPUT_FACTOR


# --- commands -----------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    """Run a short administrative command (ip, tc, ...) without a shell."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout} s") from exc
    except FileNotFoundError as exc:
        raise LabError(f"`{argv[0]}` not found (install iproute2 / util-linux)") from exc
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _netns_exists(name: str) -> bool:
    return (_NETNS_RUN_DIR / name).exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_pids(netns: str) -> list[int]:
    done = _run(["ip", "netns", "pids", netns], check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_pids(
    pids_of: Callable[[], list[int]], timeout: float, children: Sequence[subprocess.Popen[bytes]] = ()
) -> list[int]:
    """SIGTERM what ``pids_of()`` lists, wait up to ``timeout`` s, SIGKILL the rest.

    ``children`` are our own Popen objects among them: they are polled while waiting so that
    they are reaped rather than left as zombies. Returns the pids still listed after SIGKILL and
    another 2 s (normally none).
    """
    own = os.getpid()
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        pids = [p for p in pids_of() if p != own]
        if not pids:
            return []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for child in children:
                child.poll()
            if not [p for p in pids_of() if p != own]:
                return []
            time.sleep(0.05)
    return [p for p in pids_of() if p != own]


# --- naming -------------------------------------------------------------------------------


def _b36(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, rest = divmod(number, 36)
        digits.append(_B36[rest])
    if number:
        raise ValueError("number too large for its width")
    return "".join(reversed(digits))


def _check_prefix(prefix: str) -> None:
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"prefix must be 1-4 lowercase letters (interface names ≤ 15 chars), got {prefix!r}")


def new_token(prefix: str = DEFAULT_PREFIX, pid: int | None = None) -> str:
    """A fresh lab token ``<prefix><pid:5 base36><2 random base36>`` not used by any object."""
    _check_prefix(prefix)
    owner = _b36(os.getpid() if pid is None else pid, _PID_DIGITS)
    for _ in range(100):
        token = prefix + owner + "".join(secrets.choice(_B36) for _ in range(_TOKEN_RANDOM_DIGITS))
        taken = (
            token in _LIVE_TOKENS
            or any(p.name.startswith(token) for p in Path("/sys/class/net").iterdir())
            or (_NETNS_RUN_DIR.exists() and any(p.name.startswith(token) for p in _NETNS_RUN_DIR.iterdir()))
        )
        if not taken:
            return token
    raise LabError(f"no free lab token for prefix {prefix!r} and pid {owner}")


def _token_of(name: str, prefix: str) -> str | None:
    """The lab token at the start of ``name`` if it has this prefix's token shape."""
    size = len(prefix) + _PID_DIGITS + _TOKEN_RANDOM_DIGITS
    token = name[:size]
    if len(token) == size and token.startswith(prefix) and all(c in _B36 for c in token[len(prefix):]):
        return token
    return None


def _token_is_stale(token: str, prefix: str) -> bool:
    owner = int(token[len(prefix) : len(prefix) + _PID_DIGITS], 36)
    if owner == os.getpid():
        return token not in _LIVE_TOKENS
    return not _pid_alive(owner)


def _run_dir(prefix: str) -> Path:
    return Path(_RUN_DIR_TEMPLATE.format(prefix=prefix))


@contextlib.contextmanager
def _allocation_lock(prefix: str) -> Iterator[None]:
    """Serialise subnet choice between labs started concurrently by different processes."""
    run_dir = _run_dir(prefix)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "alloc.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _used_networks() -> list[ipaddress.IPv4Network]:
    done = _run(["ip", "-o", "-4", "addr", "show"])
    used = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    return used


# --- bridge and hosts ---------------------------------------------------------------------


class Bridge:
    """A Linux bridge in the root namespace that the lab's hosts hang off.

    ``Bridge(token=None, address=None)`` creates it at once. ``address`` is the bridge's own
    interface address with prefix length (``"198.18.0.1/24"``); by default the first free /24 of
    198.18.0.0/15 is taken and the bridge gets its ``.1``. Services in the root namespace
    (Redis, carbon) listen on :attr:`address` so every host reaches them.
    """

    def __init__(self, token: str | None = None, address: str | None = None, *, prefix: str = DEFAULT_PREFIX):
        _check_prefix(prefix)
        self.prefix = prefix
        self.token = token or new_token(prefix)
        self.name = f"{self.token}br"
        self.hosts: list[Host] = []
        self._closed = False
        self._closing = False
        self._created = False
        claim_token(self.token)
        try:
            with _allocation_lock(prefix):
                self.interface = self._choose_address(address)
                _run(["ip", "link", "add", "name", self.name, "type", "bridge"])
                self._created = True
                _run(["ip", "addr", "add", str(self.interface), "dev", self.name])
            _run(["ip", "link", "set", self.name, "up"])
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _choose_address(address: str | None) -> ipaddress.IPv4Interface:
        used = _used_networks()
        if address is not None:
            interface = ipaddress.IPv4Interface(address)
            if not interface.network.subnet_of(LAB_NETWORK):
                raise ValueError(f"bridge address {address} is outside the lab range {LAB_NETWORK}")
            if any(interface.network.overlaps(n) for n in used):
                raise LabError(f"{interface.network} is already in use in the root namespace (another lab?)")
            return interface
        for subnet in LAB_NETWORK.subnets(new_prefix=24):
            if not any(subnet.overlaps(n) for n in used):
                return ipaddress.IPv4Interface(f"{subnet.network_address + 1}/24")
        raise LabError(f"every /24 of {LAB_NETWORK} is in use")

    @property
    def address(self) -> str:
        """The bridge's IPv4 address (no prefix length), e.g. ``"198.18.0.1"``."""
        return str(self.interface.ip)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return self.interface.network

    def host_address(self, number: int) -> str:
        """The address ``number`` within the bridge's subnet (``10 + i`` for host ``h<i>``)."""
        address = self.network.network_address + number
        if address not in self.network or address in (self.network.network_address, self.network.broadcast_address):
            raise ValueError(f"{address} is not a usable host address of {self.network}")
        return str(address)

    def add_host(self, name: str, address: str | None = None, *, uts: bool = True) -> Host:
        """Create host ``name`` on this bridge (address default: ``.(10 + n)``, n = 1, 2, ...)."""
        return Host(name, address, self, uts=uts)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} on bridge {self.name} (hosts: {[h.name for h in self.hosts]})")

    def _register(self, host: Host) -> int:
        if self._closed:
            raise LabError(f"bridge {self.name} is closed")
        if any(h.name == host.name for h in self.hosts):
            raise ValueError(f"host name {host.name!r} is already used on bridge {self.name}")
        used = {h.index for h in self.hosts}
        index = next(i for i in range(1, 1000) if i not in used)
        self.hosts.append(host)
        return index

    def _unregister(self, host: Host) -> None:
        if host in self.hosts:
            self.hosts.remove(host)
            if not self._closing:
                self.write_hosts_files()

    def hosts_file_text(self) -> str:
        """/etc/hosts as seen inside this bridge's hosts: every host resolves the others."""
        lines = [
            f"# cloud-bandwidth lab {self.token}: written at start, removed at teardown",
            "127.0.0.1\tlocalhost",
            "::1\tlocalhost ip6-localhost ip6-loopback",
        ]
        lines += [f"{h.address}\t{h.name}" for h in self.hosts]
        return "\n".join(lines) + "\n"

    def write_hosts_files(self) -> None:
        """(Re)write /etc/netns/<ns>/hosts of every host, e.g. after a host was added."""
        text = self.hosts_file_text()
        for host in self.hosts:
            host._write_hosts_file(text)

    def close(self) -> None:
        """Remove every host (processes, qdiscs, veths, namespaces), then the bridge. Idempotent.

        Every step runs even if an earlier one failed; failures are raised together at the end.
        """
        errors: list[str] = []
        self._closing = True
        for host in reversed(list(self.hosts)):
            try:
                host.close()
            except Exception as exc:  # keep tearing down the rest
                errors.append(str(exc))
        if self._created and _link_exists(self.name):
            done = _run(["ip", "link", "del", self.name], check=False)
            if done.returncode != 0 and _link_exists(self.name):
                errors.append(f"ip link del {self.name}: {done.stderr.strip()}")
        if not self._closed:
            release_token(self.token)
        self._closed = True
        if errors:
            raise LabError(f"teardown of bridge {self.name} incomplete: " + "; ".join(errors))

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Bridge {self.name} {getattr(self, 'interface', '-')} hosts={[h.name for h in self.hosts]}>"


class Host:
    """One lab host: a network namespace with ``eth0`` on the bridge, its own /etc/hosts and
    (``uts=True``) its own hostname, so ``socket.gethostname()`` inside it returns ``name``.

    ``Host(name, address, bridge)`` creates it at once; ``address`` None picks ``.(10 + n)``
    where n is the host's number on the bridge (h1 → .11).
    """

    def __init__(self, name: str, address: str | None, bridge: Bridge, *, uts: bool = True):
        if not _HOSTNAME_RE.match(name):
            raise ValueError(f"host name must be a lowercase hostname label (a-z, 0-9, -), got {name!r}")
        self.name = name
        self.bridge = bridge
        self.index = bridge._register(self)
        self.netns = f"{bridge.token}-{name}"
        self.veth = f"{bridge.token}v{self.index}"
        self.address = address or ""
        self.rate_mbit: float | None = None
        self.uts_file: Path | None = _run_dir(bridge.prefix) / f"{self.netns}.uts" if uts else None
        self._popens: list[subprocess.Popen[bytes]] = []
        self._closed = False
        try:
            self.address = address or bridge.host_address(10 + self.index)
            parsed = ipaddress.ip_address(self.address)
            if parsed not in bridge.network or str(parsed) == bridge.address:
                raise ValueError(f"host address {self.address} is not a free address of {bridge.network}")
            self._create()
            bridge.write_hosts_files()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        ns = self.netns
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "link", "set", self.veth, "master", self.bridge.name, "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{self.address}/{self.bridge.network.prefixlen}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self.uts_file is not None:
            # A persistent UTS namespace (bind-mounted on a file) holding the hostname; every
            # command entering the host joins it with nsenter before `ip netns exec`.
            self.uts_file.parent.mkdir(parents=True, exist_ok=True)
            self.uts_file.touch()
            _run(["unshare", f"--uts={self.uts_file}", "hostname", self.name])

    # --- running things inside ----------------------------------------------------------

    def exec_prefix(self) -> list[str]:
        """argv prefix that runs a command inside this host (network, /etc/hosts, hostname)."""
        prefix = ["ip", "netns", "exec", self.netns]
        if self.uts_file is not None:
            prefix = ["nsenter", f"--uts={self.uts_file}", *prefix]
        return prefix

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str | None] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the host (own session; output appended to ``log_path``).

        ``env`` is merged over os.environ. The Popen's pid is the command itself (nsenter and
        ``ip netns exec`` exec in place), so signalling it signals the command.
        """
        self._check_open()
        popen = launch([*self.exec_prefix(), *argv], log_path=log_path, env=env, cwd=cwd)
        self._popens.append(popen)
        return popen

    def run(
        self,
        argv: Sequence[str],
        timeout: float = 30.0,
        *,
        check: bool = False,
        env: Mapping[str, str | None] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside the host, capturing text output; ``timeout`` in s."""
        self._check_open()
        done = subprocess.run(
            [*self.exec_prefix(), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=merged_env(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and done.returncode != 0:
            raise LabError(
                f"`{' '.join(argv)}` in {self.name} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def pids(self) -> list[int]:
        """Pids of every process in the host's network namespace."""
        return _netns_pids(self.netns) if _netns_exists(self.netns) else []

    def kill_all(self, timeout: float = 2.0) -> None:
        """SIGTERM every process in the namespace, wait up to ``timeout`` s, then SIGKILL."""
        left = _kill_pids(self.pids, timeout, self._popens) if _netns_exists(self.netns) else []
        for popen in self._popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(0.5)
        self._popens = [p for p in self._popens if p.returncode is None]
        if left:
            raise LabError(f"processes {left} in {self.netns} survived SIGKILL")

    def listening(self, port: int) -> bool:
        """Whether a TCP socket inside the host listens on ``port``."""
        done = _run(["ss", "-N", self.netns, "-H", "-l", "-t", "-n", f"sport = :{port}"], check=False)
        return bool(done.stdout.strip())

    def wait_for_listen(self, port: int, timeout: float = 10.0, *, process: LabProcess | None = None) -> float:
        """Wait until a TCP socket inside the host listens on ``port``; returns seconds waited.

        A LISTEN socket is what makes the kernel accept connections. It is checked with ``ss``
        inside the namespace rather than by connecting: a probe connection would occupy iperf3's
        single client slot and make it log a bogus failed test. ``process`` (a LabProcess) makes
        the wait fail at once if that process exits.
        """
        start = time.monotonic()
        while not self.listening(port):
            if process is not None and not process.alive:
                raise LabError(
                    f"{process.name} in {self.name} exited ({process.returncode}) before listening "
                    f"on port {port}; log {process.log_path}:\n{process.log_tail()}"
                )
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"nothing listens on {self.name}:{port} after {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - start

    # --- shaping ---------------------------------------------------------------------------

    def shape(self, rate_mbit: float) -> None:
        """Limit the host to ``rate_mbit`` Mbit/s in both directions (replaces earlier shaping).

        Egress: tbf on eth0 inside the namespace. Ingress: tbf on the bridge-side veth, whose
        egress is everything the bridge delivers to this host. The rate counts Ethernet frames;
        a TCP stream measures about :data:`TCP_GOODPUT_FACTOR` of it (see the comment there).
        """
        self._check_open()
        args = tbf_args(rate_mbit)
        _run(["tc", "-n", self.netns, "qdisc", "replace", "dev", "eth0", "root", *args])
        _run(["tc", "qdisc", "replace", "dev", self.veth, "root", *args])
        self.rate_mbit = rate_mbit

    def unshape(self) -> None:
        """Remove the shaping qdiscs (no error if there are none)."""
        if _netns_exists(self.netns):
            _run(["tc", "-n", self.netns, "qdisc", "del", "dev", "eth0", "root"], check=False)
        if _link_exists(self.veth):
            _run(["tc", "qdisc", "del", "dev", self.veth, "root"], check=False)
        self.rate_mbit = None

    # --- hosts file and teardown ---------------------------------------------------------

    @property
    def etc_dir(self) -> Path:
        """/etc/netns/<ns>: ``ip netns exec`` bind-mounts its files over /etc inside the host."""
        return _NETNS_CONF_DIR / self.netns

    def _write_hosts_file(self, text: str) -> None:
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        # Rewrite in place (same inode): processes already running in the host see the file
        # through a bind mount of that inode, so a replaced file would stay invisible to them.
        with open(self.etc_dir / "hosts", "w") as hosts:
            hosts.write(text)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"host {self.name} ({self.netns}) is closed")

    def close(self) -> None:
        """Kill all processes, remove qdiscs, veth, namespace, hostname and /etc/netns entry.

        Idempotent; every step runs even if an earlier one failed.
        """
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        steps = (self.kill_all, self.unshape, self._remove_veth, self._remove_netns, self._remove_uts)
        for step in steps:
            try:
                step()
            except Exception as exc:
                errors.append(str(exc))
        shutil.rmtree(self.etc_dir, ignore_errors=True)
        self.bridge._unregister(self)
        if errors:
            raise LabError(f"teardown of host {self.name} incomplete: " + "; ".join(errors))

    def _remove_veth(self) -> None:
        # Deleting the root-side end removes the pair at once; left to `ip netns del`, eth0 would
        # be destroyed asynchronously and could still be listed right after teardown.
        if _link_exists(self.veth):
            _run(["ip", "link", "del", self.veth])

    def _remove_netns(self) -> None:
        if _netns_exists(self.netns):
            _run(["ip", "netns", "del", self.netns])

    def _remove_uts(self) -> None:
        if self.uts_file is not None:
            _remove_uts_file(self.uts_file)

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        shaped = f" {self.rate_mbit} Mbit/s" if self.rate_mbit else ""
        return f"<Host {self.name} {self.address} ns={self.netns}{shaped}>"


def _remove_uts_file(path: Path) -> None:
    if not path.exists():
        return
    # The file is a mount point while the namespace is bound to it; unmount, then delete.
    _run(["umount", str(path)], check=False)
    path.unlink(missing_ok=True)


# --- crash leftovers ------------------------------------------------------------------------


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove what labs of a crashed run left behind; returns a description of each removal.

    A lab's objects are stale when the pid encoded in their token is dead (or is this process
    but the token is not one of its live labs). Labs of other live processes are left alone,
    so this is safe to call while another test run uses the machine. Removes, in order:
    processes inside stale namespaces, root-namespace processes whose command line names a
    stale lab's state directory, links (veths, bridges), namespaces, /etc/netns entries,
    hostname mounts, and state directories (unless kept on purpose, see KEPT_MARKER).
    """
    _check_prefix(prefix)
    removed: list[str] = []

    def stale(name: str) -> bool:
        token = _token_of(name, prefix)
        return token is not None and _token_is_stale(token, prefix)

    # Without iproute2 this machine cannot have lab namespaces or links (a lab without hosts,
    # e.g. only Redis, needs no `ip`); processes and state dirs are still looked for.
    has_ip = shutil.which("ip") is not None
    namespace_list = _run(["ip", "netns", "list"], check=False).stdout if has_ip else ""
    namespaces = [line.split()[0] for line in namespace_list.splitlines() if line.strip()]
    stale_ns = [ns for ns in namespaces if stale(ns)]
    for ns in stale_ns:
        left = _kill_pids(lambda ns=ns: _netns_pids(ns), 1.0)
        removed.append(f"processes in netns {ns}" + (f" (survivors {left})" if left else ""))

    state_dir = re.compile(re.escape(tempfile.gettempdir()) + "/(" + re.escape(prefix) + "[0-9a-z]{7})-")
    victims = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        match = state_dir.search(cmdline)
        if match and _token_is_stale(match.group(1), prefix):
            victims.append(int(proc.name))
    if victims:
        _kill_pids(lambda: [p for p in victims if _pid_alive(p)], 1.0)
        removed.append(f"root-namespace processes {victims}")

    link_list = _run(["ip", "-o", "link", "show"], check=False).stdout if has_ip else ""
    for line in link_list.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        if stale(name) and _link_exists(name):
            _run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")

    for ns in stale_ns:
        _run(["ip", "netns", "del", ns], check=False)
        removed.append(f"netns {ns}")

    if _NETNS_CONF_DIR.exists():
        for entry in _NETNS_CONF_DIR.iterdir():
            if stale(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(f"{entry}")

    run_dir = _run_dir(prefix)
    if run_dir.exists():
        for entry in run_dir.glob("*.uts"):
            if stale(entry.name):
                _remove_uts_file(entry)
                removed.append(f"{entry}")

    # State dirs (logs, whisper files) of crashed labs; a dir kept on purpose
    # (CBANDWIDTH_LAB_KEEP=1) carries a marker and stays.
    for entry in Path(tempfile.gettempdir()).glob(f"{prefix}*-*"):
        if entry.is_dir() and stale(entry.name) and not (entry / KEPT_MARKER).exists():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(f"{entry}")
    return removed
