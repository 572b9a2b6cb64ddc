"""The Lab: hosts on a bridge, shaping, Redis, carbon and graphite-web, composed and torn down
as one unit.

    with Lab(hosts=2, shaping={"h1": 200}, redis=True, carbon=True, graphite=True) as lab:
        servers = lab.start_servers(lab.host("h2"))
        worker = lab.spawn(lab.host("h1"), "agent-h1", [celery, "-A", "workers", "worker"],
                           env={"NODE_NAME": "h1", "CBANDWIDTH_REDIS_URL": lab.redis.url})
        worker.wait_for_log("ready", timeout=20)

Every part is optional. Whatever happens (exception in the body, Ctrl-C, SIGTERM, interpreter
exit, even SIGKILL of the driving process thanks to parent-death signals and
:func:`lab.netns.cleanup_stale` at the next start) the lab's processes, qdiscs, veths,
namespaces, bridge and temp dir are removed. ``CBANDWIDTH_LAB_KEEP=1`` keeps the state dir
(logs, whisper files, configs) for debugging.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from .errors import LabError
from .netns import DEFAULT_PREFIX, KEPT_MARKER, Bridge, Host, claim_token, cleanup_stale, new_token, release_token
from .preflight import preflight, require
from .process import LabProcess, launch
from .services import Carbon, GraphiteWeb, RedisServer

__all__ = ["Lab"]

KEEP_ENV = "CBANDWIDTH_LAB_KEEP"
_PROCESS_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")

# Labs not closed yet, closed by the atexit hook / SIGTERM handler if their owner did not.
_OPEN_LABS: list[Lab] = []
_hooks_installed = False
_previous_sigterm: object = signal.SIG_DFL
_sigterm_pending = False


def _close_open_labs() -> None:
    for lab in reversed(list(_OPEN_LABS)):
        lab.close(raise_errors=False)


def _die_of_sigterm(signum: int, frame: FrameType | None) -> None:
    if callable(_previous_sigterm):
        _previous_sigterm(signum, frame)
        return
    # Die of SIGTERM as if we had not caught it (exit status 143 for the caller).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _sigterm_pending
    if any(lab._closing for lab in _OPEN_LABS):
        # A teardown is already running further down this very stack: dying now would cut it
        # short. Lab.close() delivers the signal when it is done.
        _sigterm_pending = True
        return
    _close_open_labs()
    _die_of_sigterm(signum, frame)


def _sigterm_after_close() -> None:
    global _sigterm_pending
    if _sigterm_pending and not any(lab._closing for lab in _OPEN_LABS):
        _sigterm_pending = False
        _close_open_labs()
        _die_of_sigterm(signal.SIGTERM, None)


def _install_exit_hooks() -> None:
    global _hooks_installed, _previous_sigterm
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_open_labs)
    # Signal handlers can only be set from the main thread; an ignored SIGTERM stays ignored.
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_IGN:
            _previous_sigterm = previous
            signal.signal(signal.SIGTERM, _on_sigterm)


class Lab:
    """Hosts ``h1..hN`` (or the given names) on a bridge, plus optional services.

    :param hosts: number of hosts (named ``h1..hN``, addresses ``.11, .12, ...`` of the
        bridge's /24, normally 198.18.0.0/24) or a sequence of host names. 0: no bridge at all;
        services then listen on 127.0.0.1.
    :param shaping: host name → rate in Mbit/s (10**6 bit/s of Ethernet frames, both
        directions); see :meth:`lab.netns.Host.shape`.
    :param redis: start a private redis-server (``redis_password`` optional).
    :param carbon: start carbon-cache. ``graphite`` starts graphite-web too (implies carbon).
    :param uts: give each host its own hostname (its name).
    :param keep: keep the state dir after close; default from ``CBANDWIDTH_LAB_KEEP=1``.
    :param carbon_retentions: carbon's storage schema ``retentions`` (default: Carbon's).
    """

    def __init__(
        self,
        hosts: int | Sequence[str] = 2,
        *,
        shaping: Mapping[str, float] | None = None,
        redis: bool = False,
        redis_password: str | None = None,
        carbon: bool = False,
        graphite: bool = False,
        prefix: str = DEFAULT_PREFIX,
        uts: bool = True,
        keep: bool | None = None,
        carbon_retentions: str | None = None,
    ):
        names = [f"h{i}" for i in range(1, hosts + 1)] if isinstance(hosts, int) else list(hosts)
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate host names: {names}")
        unknown = set(shaping or {}) - set(names)
        if unknown:
            raise ValueError(f"shaping names unknown hosts {sorted(unknown)} (hosts: {names})")
        self.host_names = names
        self.shaping = dict(shaping or {})
        self.want_redis = redis
        self.redis_password = redis_password
        self.want_graphite = graphite
        self.want_carbon = carbon or graphite
        self.prefix = prefix
        self.uts = uts
        self.keep = os.environ.get(KEEP_ENV) == "1" if keep is None else keep
        self.carbon_options = {"retentions": carbon_retentions} if carbon_retentions else {}

        self.token: str | None = None
        self.state_dir: Path | None = None
        self.bridge: Bridge | None = None
        self.redis: RedisServer | None = None
        self.carbon: Carbon | None = None
        self.graphite: GraphiteWeb | None = None
        self.processes: list[LabProcess] = []
        self.servers: list[LabProcess] = []
        #: Seconds each start phase took ("hosts", "redis", "carbon", "graphite", "total").
        self.timings: dict[str, float] = {}
        self._started = False
        self._closing = False
        self._closed = False
        self._on_close: list[Callable[[], object]] = []

    # --- prerequisites ---------------------------------------------------------------------

    def _parts(self) -> dict[str, bool]:
        with_hosts = bool(self.host_names)
        return {
            "hosts": with_hosts,
            "shaping": with_hosts,  # any host may be shaped later
            "tools": with_hosts,  # hosts run the measurement servers
            "redis": self.want_redis,
            "carbon": self.want_carbon,
            "graphite": self.want_graphite,
        }

    def preflight(self) -> list[str]:
        """What this machine lacks for this lab's parts (empty list: all there)."""
        return preflight(**self._parts())

    def require(self) -> None:
        """Raise :class:`lab.errors.LabUnavailable` naming everything missing."""
        require(**self._parts())

    # --- life cycle ------------------------------------------------------------------------

    def start(self) -> Lab:
        """Build every part; on any failure tear down what was built and re-raise."""
        if self._closed:
            raise LabError("a closed Lab cannot be started again; create a new one")
        if self._started:
            return self
        self.require()
        self._started = True
        _install_exit_hooks()
        _OPEN_LABS.append(self)
        began = time.monotonic()
        try:
            cleanup_stale(self.prefix)
            self.token = new_token(self.prefix)
            claim_token(self.token)
            # The token in the directory name lets cleanup_stale() find processes of a crashed
            # lab by their command lines (config paths).
            self.state_dir = Path(tempfile.mkdtemp(prefix=f"{self.token}-"))
            (self.state_dir / "logs").mkdir()
            self._start_hosts()
            self._start_services()
        except BaseException:
            self.close(raise_errors=False)
            raise
        self.timings["total"] = time.monotonic() - began
        return self

    def _start_hosts(self) -> None:
        if not self.host_names:
            return
        began = time.monotonic()
        assert self.token is not None
        self.bridge = Bridge(self.token, prefix=self.prefix)
        for name in self.host_names:
            self.bridge.add_host(name, uts=self.uts)
        for name, rate in self.shaping.items():
            self.bridge.host(name).shape(rate)
        self.timings["hosts"] = time.monotonic() - began

    def _start_services(self) -> None:
        assert self.state_dir is not None
        logs = self.state_dir / "logs"
        bind = self.service_address
        if self.want_redis:
            began = time.monotonic()
            self.redis = RedisServer(bind, password=self.redis_password, state_dir=self.state_dir / "redis", log_dir=logs)
            self.redis.start()
            self.timings["redis"] = time.monotonic() - began
        if self.want_carbon:
            began = time.monotonic()
            self.carbon = Carbon(bind, state_dir=self.state_dir / "carbon", log_dir=logs,
                                 **self.carbon_options)
            self.carbon.start()
            self.timings["carbon"] = time.monotonic() - began
        if self.want_graphite:
            assert self.carbon is not None
            began = time.monotonic()
            self.graphite = GraphiteWeb(self.carbon, bind, state_dir=self.state_dir / "graphite", log_dir=logs)
            self.graphite.start()
            self.timings["graphite"] = time.monotonic() - began

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` first thing when the lab closes, while its services still run."""
        self._on_close.append(callback)

    def close(self, raise_errors: bool = True) -> None:
        """Tear everything down, in order: spawned processes, test servers, graphite-web,
        carbon, Redis, then hosts (processes, qdiscs, veths, namespaces) and the bridge, then
        the state dir. Every step runs even if an earlier one failed. Idempotent.

        With ``raise_errors`` a LabError lists whatever could not be removed.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        errors: list[str] = []
        # Clients of this lab's services let go first, while Redis still answers (on_close).
        for callback in self._on_close:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - teardown goes on whatever happens
                errors.append(f"on close: {exc}")

        def step(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        for group, label in ((self.processes, "process"), (self.servers, "server")):
            # Signal the whole group first, then wait: shutdowns overlap (iperf2 alone takes 1 s).
            for process in reversed(group):
                step(f"{label} {process.name}", process.kill)
            for process in reversed(group):
                step(f"{label} {process.name}", process.stop)
        for service in (self.graphite, self.carbon, self.redis):
            if service is not None:
                # close(), not stop(): carbon's stop() waits for a flush nobody reads any more.
                step(service.kind, service.close)
        if self.bridge is not None:
            step("hosts and bridge", self.bridge.close)
        state_dir = self.state_dir
        if state_dir is not None:
            if self.keep:
                step("state dir marker", lambda: (state_dir / KEPT_MARKER).touch())
                print(f"lab: state kept in {state_dir}", file=sys.stderr)
            else:
                step("state dir", lambda: shutil.rmtree(state_dir))
        if self.token is not None:
            release_token(self.token)
        if self in _OPEN_LABS:
            _OPEN_LABS.remove(self)
        self._closed = True
        _sigterm_after_close()
        if errors:
            message = "lab teardown incomplete: " + "; ".join(errors)
            if raise_errors:
                raise LabError(message)
            print(message, file=sys.stderr)

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # A teardown problem must not hide the exception that ended the body.
        self.close(raise_errors=exc_type is None)

    # --- parts -----------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Host]:
        return list(self.bridge.hosts) if self.bridge else []

    def host(self, name: str) -> Host:
        if self.bridge is None:
            raise KeyError(f"this lab has no hosts (asked for {name!r})")
        return self.bridge.host(name)

    @property
    def service_address(self) -> str:
        """Where root-namespace services listen: the bridge address, else 127.0.0.1."""
        return self.bridge.address if self.bridge else "127.0.0.1"

    # --- processes -------------------------------------------------------------------------

    def _log_path(self, name: str) -> Path:
        if self.state_dir is None:
            raise LabError("the lab is not started")
        logs = self.state_dir / "logs"
        path = logs / f"{name}.log"
        number = 2
        while path.exists():
            path = logs / f"{name}-{number}.log"
            number += 1
        return path

    def _resolve_host(self, host: Host | str | None) -> Host | None:
        return self.host(host) if isinstance(host, str) else host

    def spawn(
        self,
        host: Host | str | None,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> LabProcess:
        """Start a long-running process inside ``host`` (None: the root namespace).

        ``env`` is merged over os.environ (None unsets). Output goes to
        ``<state_dir>/logs/<name>.log``. The lab stops it at teardown (SIGTERM to its process
        group, SIGKILL after 5 s); stop it earlier with ``.stop()``.
        """
        if not self._started or self._closed:
            raise LabError("spawn() needs a started, open Lab")
        if not _PROCESS_NAME_RE.match(name):
            raise ValueError(f"process name must match {_PROCESS_NAME_RE.pattern} (it names the log file), got {name!r}")
        resolved = self._resolve_host(host)
        log_path = self._log_path(name)
        if resolved is None:
            popen = launch(argv, log_path=log_path, env=env, cwd=cwd)
        else:
            popen = resolved.popen(argv, env=env, log_path=log_path, cwd=cwd)
        process = LabProcess(name, popen, log_path)
        self.processes.append(process)
        return process

    def start_servers(
        self,
        host: Host | str,
        iperf3_port: int | None = 5201,
        iperf2_port: int | None = 5001,
        netperf_port: int | None = 12865,
        *,
        iperf2_udp_port: int | None = None,
        timeout: float = 10.0,
    ) -> dict[str, LabProcess]:
        """Start the measurement servers inside ``host`` and wait until each listens.

        ``iperf3 -s --idle-timeout 30`` (frees a server a vanished client left busy),
        ``iperf -s`` (and ``iperf -s -u`` on ``iperf2_udp_port`` if given) and
        ``netserver -D`` bound to the host's address. A port of None skips that server.
        Returns ``{"iperf3": ..., "iperf2": ..., "iperf2-udp": ..., "netperf": ...}``.
        """
        target = self._resolve_host(host)
        if target is None:
            raise ValueError("start_servers() needs a host")
        commands: dict[str, tuple[list[str], int | None]] = {
            "iperf3": (["iperf3", "-s", "-p", str(iperf3_port), "--idle-timeout", "30"], iperf3_port),
            "iperf2": (["iperf", "-s", "-p", str(iperf2_port)], iperf2_port),
            "iperf2-udp": (["iperf", "-s", "-u", "-p", str(iperf2_udp_port)], iperf2_udp_port),
            "netperf": (["netserver", "-D", "-L", target.address, "-p", str(netperf_port)], netperf_port),
        }
        started: dict[str, LabProcess] = {}
        for kind, (argv, port) in commands.items():
            if port is None:
                continue
            process = self.spawn(target, f"{target.name}-{kind}", argv)
            self.processes.remove(process)
            self.servers.append(process)
            started[kind] = process
        for kind, process in started.items():
            if kind == "iperf2-udp":
                # UDP has no listening state to probe; iperf2 prints this once bound.
                process.wait_for_log(r"Server listening on UDP port", timeout)
            else:
                target.wait_for_listen(int(commands[kind][1] or 0), timeout, process=process)
        return started

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._started else "new"
        return f"<Lab {self.token or ''} {state} hosts={self.host_names} state_dir={self.state_dir}>"
