"""The node agent's own test servers (iperf3, iperf2, netserver), started and kept healthy.

Every node runs one server per tool so that the other nodes can test against it. The
``Supervisor`` starts them, restarts any that exits, and frees an iperf3 server that is stuck
"busy": iperf3 serves one client at a time, and a client that died or hung mid-handshake
leaves the server refusing everyone else ("the server is busy running a test") until it gives
up on that client — after its receive timeout (120 s by default) at best, and never at all
when the client hangs right after sending its cookie.

What iperf3 3.12 does and does not do here (tried on loopback, see tests/integration/
test_servers.py):

* ``--idle-timeout N`` only recycles a server that has had *no client at all* for N s (state
  IPERF_START). It does not free a server stuck with a client, so the supervisor has to.
* A client that sends its cookie and then nothing blocks the server inside ``accept`` on a
  read: it stops accepting, and later clients (and our probe) get no answer at all.
* A client that also sent its parameters and then stopped leaves the server waiting for its
  data streams: later clients get ACCESS_DENIED at once.

How processes are run follows ``workers.runners.base``: argument lists, never a shell; each
server in its own session (so a kill reaches the whole process group, netserver's per-test
children included); PR_SET_PDEATHSIG=SIGKILL so servers die with the agent.
"""
from __future__ import annotations

import collections
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from workers.hosts import ip_version, validate_target
from workers.lifetime import die_with_parent

__all__ = [
    "BUSY",
    "CHECK_DOWN",
    "CHECK_FREE",
    "CHECK_LOCK_HELD",
    "CHECK_NOT_RUNNING",
    "CHECK_RESTARTED",
    "CHECK_STRIKE",
    "DOWN",
    "FREE",
    "SERVER_KINDS",
    "ServerStartError",
    "Supervisor",
    "probe_iperf3",
    "server_argv",
]

_log = logging.getLogger(__name__)

SERVER_KINDS = ("iperf3", "iperf2", "netperf")

# probe_iperf3 answers
FREE = "free"
BUSY = "busy"
DOWN = "down"

# What check_iperf3 did (returned for tests and logs)
CHECK_FREE = "free"                  # server accepted the probe: strikes reset
CHECK_LOCK_HELD = "lock-held"        # a test holds the server's lock: busy is expected
CHECK_DOWN = "down"                  # nothing answered; process exits are check_exited's job
CHECK_STRIKE = "strike"              # busy with no lock: first strike, not acted on yet
CHECK_RESTARTED = "restarted"        # second strike in a row: killed and restarted
CHECK_NOT_RUNNING = "not-running"    # iperf3 not supervised, not started, stopped or in backoff

# iperf3 control protocol (src/iperf_api.h): the client sends a cookie of COOKIE_SIZE bytes,
# 36 characters from this alphabet and a NUL; the server answers one signed byte.
_COOKIE_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_COOKIE_SIZE = 37
_PARAM_EXCHANGE = 9                  # b"\x09": the server took us as its client
_ACCESS_DENIED = -1                  # b"\xff": the server is busy with another client

#: Seconds between SIGTERM and SIGKILL of a server's process group in stop().
_TERM_GRACE_S = 2.0
#: A server that exits after running at least this long (s) restarts at once, with no backoff.
_STABLE_S = 60.0
#: Backoff for a server that keeps exiting: 0 s after the first quick exit, then 1, 2, 4, ...
#: seconds, at most _BACKOFF_MAX_S.
_BACKOFF_BASE_S = 1.0
_BACKOFF_MAX_S = 60.0
#: Lines of a server's output kept to explain its exit in the log.
_OUTPUT_LINES = 20


class ServerStartError(RuntimeError):
    """A server could not be started or did not listen in time (Supervisor.start)."""


# --- argument lists -------------------------------------------------------------------------

def server_argv(kind: str, address: str | None, port: int, idle_timeout_s: int) -> list[str]:
    """The argument list that runs a ``kind`` server in the foreground on ``address``:``port``.

    ``address`` None listens on every address (IPv4 and IPv6). An IPv6 literal may come in
    brackets. ``idle_timeout_s`` (seconds, iperf3 only) is ``--idle-timeout``: iperf3 3.12
    re-initialises a server that had no client for that long; it does not free a server stuck
    with a client (the Supervisor does). Raises ValueError for an unknown kind, a port outside
    1..65535, an idle timeout below 1 s or an address that is not an IP literal or DNS name.
    """
    if kind not in SERVER_KINDS:
        raise ValueError(f"unknown server kind {kind!r} (one of {', '.join(SERVER_KINDS)})")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port out of range: {port}")
    if int(idle_timeout_s) < 1:
        raise ValueError(f"idle timeout must be at least 1 s: {idle_timeout_s}")
    bind = validate_target(address) if address else None   # strips IPv6 brackets
    version = ip_version(bind) if bind else None
    port_text = str(int(port))

    if kind == "iperf3":
        argv = ["iperf3", "-s", "-p", port_text]
        if bind:
            argv += ["-B", bind]
        return argv + ["--idle-timeout", str(int(idle_timeout_s))]
    if kind == "iperf2":
        argv = ["iperf", "-s", "-p", port_text]
        if bind:
            argv += ["-B", bind]
        if version == 6:
            argv.append("-V")   # iperf2 only binds an IPv6 address with -V
        return argv
    # netserver: -D stays in the foreground, so it is our child and can be supervised.
    argv = ["netserver", "-D", "-p", port_text]
    if bind:
        argv += ["-L", f"{bind},{version}" if version else bind]
    return argv


# --- probing --------------------------------------------------------------------------------

def probe_iperf3(address: str, port: int, timeout_s: float = 2.0) -> str:
    """Whether the iperf3 server at ``address``:``port`` would accept a test: FREE, BUSY or DOWN.

    No test is run: we connect to the control port, send a cookie (36 characters and a NUL)
    and read the server's one-byte answer, then close. PARAM_EXCHANGE (0x09) → FREE: the
    server had taken us as its client and, when we close, logs "unable to receive parameters"
    and goes back to listening. ACCESS_DENIED (0xff) → BUSY. Connected but no answer within
    the timeout → BUSY too: iperf3 3.12 blocks on a client that sent its cookie and stopped,
    so nobody can test against it. Connection refused, connect timeout, or the connection
    closed without a known answer → DOWN. ``timeout_s`` (seconds) bounds the connect and,
    separately, the wait for the answer.

    A FREE probe costs what any finished test costs: iperf3 closes and re-creates its listening
    socket after every client, so for well under a millisecond a connecting client is refused
    or reset (measured on loopback: 2 in 40 connects made at once after a probe, none 0.5 ms
    later). Probe only when no test is about to start (the Supervisor checks the lock first).
    """
    cookie = "".join(secrets.choice(_COOKIE_ALPHABET) for _ in range(_COOKIE_SIZE - 1))
    try:
        sock = socket.create_connection((address, port), timeout=timeout_s)
    except OSError:
        return DOWN
    try:
        sock.settimeout(timeout_s)
        sock.sendall(cookie.encode("ascii") + b"\0")
        answer = sock.recv(1)
    except TimeoutError:
        return BUSY
    except OSError:
        return DOWN
    finally:
        sock.close()
    if not answer:
        return DOWN
    code = int.from_bytes(answer, "big", signed=True)
    if code == _PARAM_EXCHANGE:
        return FREE
    if code == _ACCESS_DENIED:
        return BUSY
    return DOWN   # not an iperf3 server, or one speaking a protocol we do not know


def _tcp_listening(address: str, port: int, timeout_s: float) -> bool:
    """True if a TCP connect to address:port succeeds (for iperf2 and netserver, which take
    concurrent clients, so an empty connection disturbs no test)."""
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True
    except OSError:
        return False


# --- processes ------------------------------------------------------------------------------

def _restart_delay(crashes: int) -> float:
    """Seconds to wait before restarting a server that exited ``crashes`` times in a row soon
    after starting: 0 for the first, then 1, 2, 4, ... up to _BACKOFF_MAX_S."""
    if crashes <= 1:
        return 0.0
    return min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (crashes - 2))


def _listen_inodes(port: int) -> frozenset[str]:
    """Inodes of the sockets listening on TCP ``port`` in this network namespace (empty when
    none or when /proc/net is unreadable)."""
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is TCP_LISTEN; inode is field 9.
            if len(fields) > 9 and fields[3] == "0A" and \
                    int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.add(fields[9])
    return frozenset(found)


def _endpoint(address: str | None, port: int) -> str:
    host = address or "*"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _probe_host(address: str | None) -> str:
    """Where to connect to reach a server bound to ``address`` (None / wildcard: loopback)."""
    if not address or address == "0.0.0.0":
        return "127.0.0.1"
    if address == "::":
        return "::1"
    return address


@dataclass
class _Server:
    kind: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0            # time.monotonic() of the last spawn
    crashes: int = 0                   # consecutive exits within _STABLE_S of starting
    retry_at: float | None = None      # time.monotonic() when a restart is due (backoff)
    output: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=_OUTPUT_LINES))


class Supervisor:
    """Runs this node's test servers and keeps them usable.

    ``kinds``: which of SERVER_KINDS to run; ``address``: bind address (None: all);
    ``ports``: kind → TCP port; ``idle_timeout_s``: iperf3 ``--idle-timeout`` (s);
    ``lock_held()``: True while some test holds this node's iperf3 server lock (a test may be
    running, so "busy" is expected); ``check_interval_s``: seconds between the watch thread's
    checks; ``probe_timeout_s``: seconds for each part of an iperf3 probe;
    ``startup_timeout_s``: seconds start() waits for every server to listen.

    ``restarts`` counts, per kind, every restart after the initial start (exits and stuck
    iperf3 servers alike). Use as a context manager, or call start() and stop().
    """

    def __init__(self, kinds: Iterable[str], address: str | None, ports: Mapping[str, int],
                 idle_timeout_s: int = 30,
                 lock_held: Callable[[], bool] = lambda: False,
                 log: logging.Logger = _log,
                 check_interval_s: float = 10.0,
                 probe_timeout_s: float = 2.0,
                 startup_timeout_s: float = 10.0):
        kinds = tuple(dict.fromkeys(kinds))
        for kind in kinds:
            if kind not in SERVER_KINDS:
                raise ValueError(f"unknown server kind {kind!r} (one of "
                                 f"{', '.join(SERVER_KINDS)})")
            if kind not in ports:
                raise ValueError(f"no port given for the {kind} server")
        if check_interval_s <= 0 or probe_timeout_s <= 0 or startup_timeout_s <= 0:
            raise ValueError("check interval, probe and startup timeouts must be positive")
        self.address = validate_target(address) if address else None
        self.check_interval_s = float(check_interval_s)
        self.probe_timeout_s = float(probe_timeout_s)
        self.startup_timeout_s = float(startup_timeout_s)
        self._lock_held = lock_held
        self._log = log
        self._servers = {
            kind: _Server(kind, server_argv(kind, self.address, ports[kind], idle_timeout_s),
                          int(ports[kind]))
            for kind in kinds
        }
        #: kind → TCP port of its server.
        self.ports = {kind: int(ports[kind]) for kind in kinds}
        self._restarts = {kind: 0 for kind in kinds}
        self._strikes = 0
        self._lock = threading.RLock()          # servers' processes, restarts, _state
        self._check_lock = threading.Lock()     # one check_iperf3 at a time (strikes)
        self._state = "new"                     # new → running → stopped
        self._stop_event = threading.Event()
        self._watcher: threading.Thread | None = None
        # Every server is forked from this one thread: PR_SET_PDEATHSIG fires when the forking
        # *thread* exits, so forking from a short-lived caller thread would kill the server
        # with it. This thread lives until stop().
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="server-spawn")

    # --- public ---------------------------------------------------------------------------

    @property
    def restarts(self) -> dict[str, int]:
        """Restarts per kind since start() (a copy)."""
        with self._lock:
            return dict(self._restarts)

    def pid(self, kind: str) -> int | None:
        """The process id of the running ``kind`` server (also its process group), or None."""
        with self._lock:
            proc = self._servers[kind].proc
            return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> Supervisor:
        """Start every server, wait until each listens, then start the watch thread.

        Raises ServerStartError (after stopping whatever was started) if a server cannot be
        started, exits, or does not listen within ``startup_timeout_s`` seconds.
        """
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"Supervisor.start(): already {self._state}")
            self._state = "running"
        try:
            with self._lock:
                for server in self._servers.values():
                    self._spawn(server)
                    if server.proc is None:
                        raise ServerStartError(
                            f"{server.kind} server could not be started: "
                            f"{' '.join(server.output)}")
            self._wait_listening()
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="server-watch", daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        """Stop watching and kill every server: SIGTERM to its process group, SIGKILL after
        2 s, then reap. Idempotent; safe from any thread."""
        with self._lock:
            already = self._state == "stopped"
            self._state = "stopped"
        self._stop_event.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            # The watch thread may be in a probe (bounded by probe_timeout_s) or a check.
            watcher.join(timeout=2 * self.probe_timeout_s + _TERM_GRACE_S + 1)
        if already:
            return
        with self._lock:
            for server in self._servers.values():
                self._terminate(server, graceful=True)
        self._spawner.shutdown(wait=True)

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def check_exited(self) -> list[str]:
        """Restart every server that exited (once its backoff is over); return their kinds.

        Each exit is logged once as a warning with its exit code and last output line. A
        server that exits within _STABLE_S seconds of starting again and again is restarted
        after 0, 1, 2, 4 ... (at most 60) seconds, so a crash loop cannot spin.
        """
        restarted = []
        with self._lock:
            if self._state != "running":
                return restarted
            now = time.monotonic()
            for server in self._servers.values():
                if server.proc is not None and server.proc.poll() is not None:
                    self._note_exit(server, now)
                if server.proc is None and server.retry_at is not None and now >= server.retry_at:
                    self._spawn(server)
                    self._restarts[server.kind] += 1
                    if server.proc is not None:
                        restarted.append(server.kind)
        return restarted

    def check_iperf3(self) -> str:
        """Probe the iperf3 server; restart it if it is busy while no test holds its lock.

        "Busy" with the lock free is one strike; a second strike in a row kills and restarts
        the server. Why two: a test may take the lock and connect between our lock check and
        our probe (we look at the lock before and after, but a whole short test could fit in
        between), so one busy answer proves nothing; the same server busy and unlocked at two
        checks ``check_interval_s`` apart is stuck. A free answer, the lock held, or no answer
        reset the strikes. Returns one of the CHECK_* strings: what was seen or done.
        """
        server = self._servers.get("iperf3")
        if server is None:
            return CHECK_NOT_RUNNING
        with self._check_lock:
            with self._lock:
                running = (self._state == "running" and server.proc is not None
                           and server.proc.poll() is None)
            if not running:
                self._strikes = 0
                return CHECK_NOT_RUNNING
            if self._lock_is_held():
                self._strikes = 0
                return CHECK_LOCK_HELD
            state = self._probe_iperf3(server, self.probe_timeout_s)
            if self._lock_is_held():
                self._strikes = 0
                return CHECK_LOCK_HELD
            if state == FREE:
                self._strikes = 0
                return CHECK_FREE
            if state == DOWN:
                self._strikes = 0
                return CHECK_DOWN
            self._strikes += 1
            if self._strikes < 2:
                self._log.debug("iperf3 server on %s busy with no test holding its lock "
                                "(strike %d)", _endpoint(self.address, server.port),
                                self._strikes)
                return CHECK_STRIKE
            self._strikes = 0
            with self._lock:
                if self._state != "running":
                    return CHECK_NOT_RUNNING
                # Killed at once, no SIGTERM grace: a stuck server has nothing to finish.
                self._terminate(server, graceful=False)
                self._spawn(server)
                self._restarts["iperf3"] += 1
            self._log.warning("iperf3 server on %s was busy with no test holding its lock; "
                              "restarted it", _endpoint(self.address, server.port))
            return CHECK_RESTARTED

    # --- internals ------------------------------------------------------------------------

    def _lock_is_held(self) -> bool:
        """lock_held(), and True if it fails: when we cannot tell, never kill a server."""
        try:
            return bool(self._lock_held())
        except Exception:
            self._log.exception("could not tell whether a test holds the iperf3 server's lock")
            return True

    def _watch(self) -> None:
        """The watch thread: every check_interval_s, restart exited servers, check iperf3."""
        while not self._stop_event.wait(self.check_interval_s):
            try:
                self.check_exited()
                if "iperf3" in self._servers:
                    self.check_iperf3()
            except Exception:   # the thread must outlive any one bad check
                self._log.exception("server supervision check failed")

    def _spawn(self, server: _Server) -> None:
        """Start ``server`` (caller holds self._lock). On failure proc stays None and a retry
        is scheduled with backoff."""
        server.retry_at = None
        server.output.clear()
        try:
            proc = self._spawner.submit(self._popen, server.argv).result()
        except OSError as exc:
            server.proc = None
            server.crashes += 1
            delay = max(_restart_delay(server.crashes), _BACKOFF_BASE_S)
            server.retry_at = time.monotonic() + delay
            server.output.append(f"{server.argv[0]}: {exc.strerror or exc}")
            self._log.error("%s server on %s could not be started (%s); retrying in %.0f s",
                            server.kind, _endpoint(self.address, server.port),
                            exc.strerror or exc, delay)
            return
        server.proc = proc
        server.started_at = time.monotonic()
        threading.Thread(target=self._drain, args=(proc, server.output),
                         name=f"server-output-{server.kind}", daemon=True).start()

    @staticmethod
    def _popen(argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL, os.getpid()),
        )

    @staticmethod
    def _drain(proc: subprocess.Popen[bytes], output: collections.deque[str]) -> None:
        """Read a server's output until it closes (a full pipe would stall the server), keeping
        the last lines to explain an exit."""
        stream = proc.stdout
        if stream is None:
            return
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", errors="replace").strip()
                if line and not set(line) <= {"-"}:
                    output.append(line)

    def _note_exit(self, server: _Server, now: float) -> None:
        """Log an unexpected exit, clean up its group, schedule the restart (holds _lock)."""
        proc = server.proc
        assert proc is not None
        code = proc.returncode
        self._kill_group(proc.pid)   # leftovers, e.g. netserver children serving a test
        ran = now - server.started_at
        server.crashes = server.crashes + 1 if ran < _STABLE_S else 1
        delay = _restart_delay(server.crashes)
        server.proc = None
        server.retry_at = now + delay
        last = server.output[-1] if server.output else "no output"
        self._log.warning("%s server on %s exited with code %s after %.1f s (%s); restarting "
                          "it in %.0f s", server.kind, _endpoint(self.address, server.port),
                          code, ran, last, delay)

    def _terminate(self, server: _Server, graceful: bool) -> None:
        """Kill ``server``'s process group and reap it (caller holds self._lock)."""
        proc, server.proc, server.retry_at = server.proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            if graceful:
                self._kill_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=_TERM_GRACE_S)
                except subprocess.TimeoutExpired:
                    pass
        # SIGKILL the group even after the leader exited: children may remain in it.
        self._kill_group(proc.pid)
        proc.wait()

    @staticmethod
    def _kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass   # the group is gone

    def _probe_iperf3(self, server: _Server, timeout_s: float) -> str:
        """probe_iperf3 on our own server; after FREE, also wait (at most 1 s) until the server
        has re-created its listening socket, so that it is ready when this returns."""
        before = _listen_inodes(server.port)
        state = probe_iperf3(_probe_host(self.address), server.port, timeout_s)
        if state == FREE and before:
            deadline = time.monotonic() + 1.0
            while _listen_inodes(server.port) in (before, frozenset()):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.002)
        return state

    def _wait_listening(self) -> None:
        """Wait until every server listens (startup_timeout_s in all); raise ServerStartError.

        iperf3 is checked with probe_iperf3 (a bare connect would count as a client and make
        it log an error); iperf2 and netserver, which take concurrent clients, with a connect.
        """
        host = _probe_host(self.address)
        deadline = time.monotonic() + self.startup_timeout_s
        pending = dict(self._servers)
        while pending:
            for kind, server in list(pending.items()):
                with self._lock:
                    proc = server.proc
                if proc is None or proc.poll() is not None:
                    time.sleep(0.1)   # let the drain thread catch the last words
                    raise ServerStartError(
                        f"{kind} server on {_endpoint(self.address, server.port)} exited "
                        f"with code {proc.returncode if proc else None}: "
                        f"{' / '.join(server.output) or 'no output'}")
                if kind == "iperf3":
                    up = self._probe_iperf3(server, timeout_s=0.5) == FREE
                else:
                    up = _tcp_listening(host, server.port, timeout_s=0.5)
                if up:
                    del pending[kind]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"not listening after {self.startup_timeout_s:g} s: "
                    + ", ".join(f"{kind} on {_endpoint(self.address, s.port)}"
                                for kind, s in pending.items()))
            time.sleep(0.05)
