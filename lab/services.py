"""Root-namespace services of the lab: a private Redis, carbon-cache and graphite-web.

Each runs as a child process in the foreground (so teardown can always kill it), with its own
temporary state (no persistence, nothing shared with system instances: the system Redis on
127.0.0.1:6379 is never touched) and free ports. Bind them to the lab bridge's address so the
namespace hosts reach them, or to 127.0.0.1 when there is no bridge.

All three: ``start()`` (waits until the service answers), ``stop()``, ``close()`` (stop and
delete a state dir they created themselves), and use as a context manager. ``stop()`` kills the
process even when ``start()`` failed half-way.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO, Self

from .errors import LabError
from .process import LabProcess, ProcessExited, free_port, launch, merged_env, wait_for_tcp

__all__ = ["Carbon", "GraphiteWeb", "RedisReplyError", "RedisServer", "Sentinel"]

# Debian's Graphite stack (carbon 1.1.7, graphite-web 1.1.8, gunicorn 20.1) lives in the system
# interpreter's dist-packages, not in the project's venv.
SYSTEM_PYTHON = "/usr/bin/python3"
CARBON_CACHE = "/usr/bin/carbon-cache"
GUNICORN = "/usr/bin/gunicorn"
GRAPHITE_ROOT = "/usr/share/graphite-web"

# Variables that would point the system interpreter at the venv (or elsewhere) are removed for
# the Graphite processes.
_PYTHON_ENV_UNSET: dict[str, str | None] = {"PYTHONPATH": None, "PYTHONHOME": None, "VIRTUAL_ENV": None}

# urllib honours http_proxy & co. from the environment; lab traffic must never leave the machine.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _Service:
    """Common life cycle: state dir, log file, one foreground process."""

    kind = "service"
    stop_timeout = 5.0

    def __init__(self, bind: str, state_dir: str | os.PathLike[str] | None, log_dir: str | os.PathLike[str] | None):
        self.bind = bind
        self._own_state_dir = state_dir is None
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix=f"lab-{self.kind}-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log_dir or self.state_dir) / f"{self.kind}.log"
        self.process: LabProcess | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive

    def _launch(self, argv: list[str], env: Mapping[str, str | None] | None = None) -> LabProcess:
        self.process = LabProcess(self.kind, launch(argv, log_path=self.log_path, env=env, cwd=self.state_dir), self.log_path)
        return self.process

    def _start(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        """Start the process and wait until it serves; on failure it is killed and re-raised."""
        if self.running:
            return self
        try:
            self._start()
        except BaseException:
            self._terminate()
            raise
        return self

    def _terminate(self) -> None:
        """SIGTERM the process group, SIGKILL after :attr:`stop_timeout` s; no-op if not running."""
        if self.process is not None:
            self.process.stop(self.stop_timeout)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL); no-op if it is not running."""
        self._terminate()

    def close(self) -> None:
        """Stop, and remove the state dir if this object created it (keeps it with
        CBANDWIDTH_LAB_KEEP=1)."""
        self._terminate()
        if self._own_state_dir and os.environ.get("CBANDWIDTH_LAB_KEEP") != "1":
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- Redis -------------------------------------------------------------------------------


class RedisReplyError(LabError):
    """Redis answered a command with an error reply (``-ERR ...``, ``-WRONGPASS ...``)."""


def _resp_encode(args: Iterable[object]) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def _resp_read(stream: BinaryIO) -> object:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise LabError(f"connection closed by Redis (got {line!r})")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RedisReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        size = int(body)
        return None if size < 0 else [_resp_read(stream) for _ in range(size)]
    raise LabError(f"unexpected Redis reply {line!r}")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _command(host: str, port: int, args: Iterable[object], password: str | None,
             timeout: float) -> object:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        try:
            if password:
                sock.sendall(_resp_encode(["AUTH", password]))
                _resp_read(stream)
            sock.sendall(_resp_encode(args))
            return _resp_read(stream)
        finally:
            stream.close()


class RedisServer(_Service):
    """A private ``redis-server``: no persistence, state in a temp dir, optional password.

    ``port`` None picks a free port. :attr:`url` is what clients (Celery, redis-py) use.
    """

    kind = "redis"

    def __init__(
        self,
        bind: str = "127.0.0.1",
        port: int | None = None,
        password: str | None = None,
        *,
        replica_of: "RedisServer | None" = None,
        acl_file: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
    ):
        """``replica_of``: start as its replica (``replicaof``, ``masterauth`` its password).
        ``acl_file``: users from this ACL file (``password`` is then the default user's, and
        the file must give the default user that password for the lab's PING to pass)."""
        super().__init__(bind, state_dir, log_dir)
        self.port = port or free_port(bind)
        self.password = password
        self.replica_of = replica_of
        self.acl_file = Path(acl_file) if acl_file else None

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.bind}:{self.port}/0"

    def _config(self) -> str:
        lines = [
            f"bind {self.bind}",
            f"port {self.port}",
            "protected-mode no",
            "daemonize no",
            # No persistence: an empty save list disables RDB snapshots, AOF stays off.
            'save ""',
            "appendonly no",
            f'dir "{self.state_dir}"',
            'logfile ""',
        ]
        if self.acl_file:
            lines.append(f'aclfile "{self.acl_file}"')
        elif self.password:
            lines.append(f'requirepass "{_quoted(self.password)}"')
        if self.replica_of:
            lines.append(f"replicaof {self.replica_of.bind} {self.replica_of.port}")
            if self.replica_of.password:
                lines.append(f'masterauth "{_quoted(self.replica_of.password)}"')
        return "\n".join(lines) + "\n"

    def _start(self) -> None:
        conf = self.state_dir / "redis.conf"
        conf.write_text(self._config())
        process = self._launch(["redis-server", str(conf)])
        deadline = time.monotonic() + 10.0
        wait_for_tcp(self.bind, self.port, 10.0, process=process)
        while True:  # the port accepts before Redis has loaded; PING proves it serves
            try:
                if self.command("PING") == "PONG":
                    return
            except (OSError, LabError):
                if time.monotonic() > deadline or not process.alive:
                    raise
            time.sleep(0.05)

    def command(self, *args: object, password: str | None = None, timeout: float = 5.0) -> object:
        """Run one command on a fresh connection, authenticating with ``password`` (default:
        the server's). Returns the decoded reply; raises RedisReplyError on an error reply."""
        secret = self.password if password is None else password
        return _command(self.bind, self.port, args, secret, timeout)

    def ping(self) -> bool:
        """True if the server answers PING (with the configured password)."""
        try:
            return self.command("PING", timeout=1.0) == "PONG"
        except (OSError, LabError):
            return False


class Sentinel(_Service):
    """A private ``redis-server --sentinel`` monitoring ``master`` under ``name``.

    Quick timings for tests: the master is down after ``down_after_ms`` without an answer, and
    ``quorum`` sentinels must agree. Its config file (which Sentinel rewrites) is in its state
    dir."""

    kind = "sentinel"

    def __init__(self, master: RedisServer, name: str = "cbw", quorum: int = 2,
                 bind: str = "127.0.0.1", port: int | None = None, *, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, state_dir: str | os.PathLike[str] | None = None,
                 log_dir: str | os.PathLike[str] | None = None):
        super().__init__(bind, state_dir, log_dir)
        self.port = port or free_port(bind)
        self.master, self.name, self.quorum = master, name, quorum
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms

    @property
    def url(self) -> str:
        return f"sentinel://{self.bind}:{self.port}"

    def _config(self) -> str:
        lines = [f"bind {self.bind}", f"port {self.port}", "protected-mode no",
                 "daemonize no", f'dir "{self.state_dir}"', 'logfile ""',
                 f"sentinel monitor {self.name} {self.master.bind} {self.master.port} "
                 f"{self.quorum}",
                 f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {self.name} 1"]
        if self.master.password:
            lines.append(f'sentinel auth-pass {self.name} "{_quoted(self.master.password)}"')
        return "\n".join(lines) + "\n"

    def _start(self) -> None:
        conf = self.state_dir / "sentinel.conf"
        conf.write_text(self._config())
        process = self._launch(["redis-server", str(conf), "--sentinel"])
        wait_for_tcp(self.bind, self.port, 10.0, process=process)
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if self.master_address() is not None:
                    return
            except (OSError, LabError):
                if time.monotonic() > deadline or not process.alive:
                    raise
            time.sleep(0.05)

    def command(self, *args: object, timeout: float = 2.0) -> object:
        """Run one command (``SENTINEL …``) on a fresh connection; the decoded reply."""
        return _command(self.bind, self.port, args, None, timeout)

    def master_address(self) -> tuple[str, int] | None:
        """Where this sentinel currently sees the master (SENTINEL get-master-addr-by-name)."""
        reply = self.command("SENTINEL", "get-master-addr-by-name", self.name)
        if not reply:
            return None
        return reply[0].decode(), int(reply[1])


# --- carbon ------------------------------------------------------------------------------


class Carbon(_Service):
    """A private carbon-cache (line, pickle and cache-query receivers on free ports).

    Storage schema ``retentions`` defaults to ``1s:6h,60s:7d``: one point per second for six
    hours, so tests read every point back with its exact timestamp. Writes are not rate limited,
    so points reach whisper files within about a second. ``stop()`` / ``start()`` can be
    repeated: the ports and the storage stay the same across restarts.
    """

    kind = "carbon"
    stop_timeout = 10.0
    #: carbon-cache 1.1.7 does not drain its cache on SIGTERM: the writer thread sleeps 1 s
    #: between passes over the cache and simply ends when it wakes up to a stopped reactor.
    #: Measured: a point sent 50 ms before SIGTERM was lost. Waiting one writer pass first
    #: (the writer is not rate limited, so one pass empties the cache) makes points received
    #: before stop() durable, as a test stopping carbon expects.
    flush_seconds = 1.2

    def __init__(
        self,
        bind: str = "127.0.0.1",
        *,
        state_dir: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        line_port: int | None = None,
        pickle_port: int | None = None,
        query_port: int | None = None,
        retentions: str = "1s:6h,60s:7d",
        extra: dict[str, str] | None = None,
    ):
        """``extra``: more carbon.conf settings, e.g. ``{"CARBON_METRIC_INTERVAL": "1"}`` for
        carbon's own counters (``carbon.agents.*.metricsReceived``) every second."""
        super().__init__(bind, state_dir, log_dir)
        self.extra = dict(extra or {})
        self.line_port = line_port or free_port(bind)
        self.pickle_port = pickle_port or free_port(bind)
        self.query_port = query_port or free_port(bind)
        self.retentions = retentions
        self.conf_dir = self.state_dir / "conf"
        self.storage_dir = self.state_dir / "storage"
        self.whisper_dir = self.storage_dir / "whisper"
        self._write_config()

    def _write_config(self) -> None:
        for directory in (self.conf_dir, self.whisper_dir, self.storage_dir / "log", self.storage_dir / "lists"):
            directory.mkdir(parents=True, exist_ok=True)
        settings = {
            "STORAGE_DIR": f"{self.storage_dir}/",
            "LOCAL_DATA_DIR": f"{self.whisper_dir}/",
            "WHITELISTS_DIR": f"{self.storage_dir / 'lists'}/",
            "CONF_DIR": f"{self.conf_dir}/",
            "LOG_DIR": f"{self.storage_dir / 'log'}/",
            "PID_DIR": f"{self.storage_dir}/",
            "USER": "",  # stay root: the state dir is root's; Debian's default drops to _graphite
            "MAX_CACHE_SIZE": "inf",
            "MAX_UPDATES_PER_SECOND": "inf",
            "MAX_UPDATES_PER_SECOND_ON_SHUTDOWN": "inf",
            "MAX_CREATES_PER_MINUTE": "inf",
            "LINE_RECEIVER_INTERFACE": self.bind,
            "LINE_RECEIVER_PORT": str(self.line_port),
            "ENABLE_UDP_LISTENER": "False",
            "PICKLE_RECEIVER_INTERFACE": self.bind,
            "PICKLE_RECEIVER_PORT": str(self.pickle_port),
            "CACHE_QUERY_INTERFACE": self.bind,
            "CACHE_QUERY_PORT": str(self.query_port),
            "LOG_LISTENER_CONN_SUCCESS": "False",
            "LOG_UPDATES": "False",
            "LOG_CREATES": "True",
            "LOG_CACHE_HITS": "False",
            "LOG_CACHE_QUEUE_SORTS": "False",
            # Tags would make carbon POST every tagged series to graphite-web's tag DB.
            "ENABLE_TAGS": "False",
            "ENABLE_LOGROTATION": "False",
            **self.extra,
        }
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        (self.conf_dir / "carbon.conf").write_text("[cache]\n" + body)
        (self.conf_dir / "storage-schemas.conf").write_text(
            f"[lab]\npattern = .*\nretentions = {self.retentions}\n"
        )
        # xFilesFactor 0: a minute of the coarse archive gets the average of whatever 1 s points
        # exist (measurements arrive every few seconds, far below carbon's default of 50 %).
        (self.conf_dir / "storage-aggregation.conf").write_text(
            "[default]\npattern = .*\nxFilesFactor = 0\naggregationMethod = average\n"
        )

    @property
    def config_path(self) -> Path:
        return self.conf_dir / "carbon.conf"

    def _start(self) -> None:
        pidfile = self.storage_dir / "carbon-cache-a.pid"
        # carbon refuses to start while its pidfile names a live process; after a kill the pid
        # may have been reused by something else.
        pidfile.unlink(missing_ok=True)
        process = self._launch(
            [
                CARBON_CACHE,
                f"--config={self.config_path}",
                f"--pidfile={pidfile}",
                "--debug",  # foreground, log to stdout (our log file)
                "start",
            ],
            env=_PYTHON_ENV_UNSET,
        )
        wait_for_tcp(self.bind, self.line_port, 20.0, process=process)
        wait_for_tcp(self.bind, self.query_port, 10.0, process=process)

    def stop(self, flush: bool = True) -> None:
        """Stop carbon. With ``flush``, first wait one writer pass (:attr:`flush_seconds`) so the
        points received so far are on disk; without it, cached points are lost (a crash)."""
        if flush and self.running:
            time.sleep(self.flush_seconds)
        self._terminate()

    def send(self, datapoints: Iterable[tuple[str, float, float]], timeout: float = 5.0) -> None:
        """Send ``(path, value, unix_timestamp)`` points over the plaintext line protocol."""
        lines = "".join(f"{path} {float(value)!r} {int(ts)}\n" for path, value, ts in datapoints)
        self.send_lines(lines, timeout)

    def send_lines(self, text: str, timeout: float = 5.0) -> None:
        """Send raw line-protocol text (``path value timestamp\\n`` lines) and close."""
        with socket.create_connection((self.bind, self.line_port), timeout=timeout) as sock:
            sock.sendall(text.encode())
            sock.shutdown(socket.SHUT_WR)

    def whisper_file(self, metric: str) -> Path:
        """Where carbon stores ``metric`` (``a.b.c`` → ``<whisper>/a/b/c.wsp``)."""
        return self.whisper_dir.joinpath(*metric.split(".")).with_suffix(".wsp")


# --- graphite-web ------------------------------------------------------------------------


# A freshly migrated database is the same for every instance: the first GraphiteWeb of a process
# migrates (≈1 s) and keeps a copy that later instances start from.
_MIGRATED_DB: dict[str, Path] = {}


def _remember_migrated_db(database: Path) -> None:
    directory = Path(tempfile.mkdtemp(prefix="lab-graphite-db-"))
    atexit.register(shutil.rmtree, directory, True)
    template = directory / "graphite.db"
    shutil.copyfile(database, template)
    _MIGRATED_DB["path"] = template


class GraphiteWeb(_Service):
    """graphite-web under gunicorn, reading ``carbon``'s whisper files and its cache.

    Rendering asks carbon's cache-query port too, so points not yet on disk are returned.
    """

    kind = "graphite-web"
    settings_module = "lab_graphite_settings"

    def __init__(
        self,
        carbon: Carbon,
        bind: str = "127.0.0.1",
        *,
        port: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        log_dir: str | os.PathLike[str] | None = None,
        workers: int = 2,
        timeout: float = 20.0,
    ):
        super().__init__(bind, state_dir, log_dir)
        self.carbon = carbon
        self.port = port or free_port(bind)
        self.workers = workers
        self.timeout = timeout
        self.settings_dir = self.state_dir / "settings"
        self.database = self.state_dir / "graphite.db"

    @property
    def url(self) -> str:
        return f"http://{self.bind}:{self.port}"

    def _env(self) -> dict[str, str | None]:
        return {
            **_PYTHON_ENV_UNSET,
            "PYTHONPATH": str(self.settings_dir),
            "GRAPHITE_SETTINGS_MODULE": self.settings_module,
            "DJANGO_SETTINGS_MODULE": "graphite.settings",
        }

    def _write_settings(self) -> None:
        self.settings_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "log").mkdir(exist_ok=True)
        values = {
            "SECRET_KEY": secrets.token_hex(32),
            "TIME_ZONE": "UTC",
            "DEBUG": False,
            "ALLOWED_HOSTS": ["*"],
            "GRAPHITE_ROOT": GRAPHITE_ROOT,
            "STATIC_ROOT": f"{GRAPHITE_ROOT}/static",
            "CONF_DIR": str(self.state_dir),
            "STORAGE_DIR": str(self.carbon.storage_dir),
            "WHISPER_DIR": str(self.carbon.whisper_dir),
            "STANDARD_DIRS": [str(self.carbon.whisper_dir)],
            "LOG_DIR": str(self.state_dir / "log"),
            "INDEX_FILE": str(self.state_dir / "search_index"),
            "LOG_ROTATION": False,
            "CARBONLINK_HOSTS": [f"{self.carbon.bind}:{self.carbon.query_port}:a"],
            "CARBONLINK_TIMEOUT": 1.0,
            # graphite-web skips a carbon it could not reach for this long (default 15 s); the
            # tests restart carbon and expect its cache to be visible again at once.
            "CARBONLINK_RETRY_DELAY": 1,
            "DEFAULT_CACHE_DURATION": 0,
            "DEFAULT_XFILES_FACTOR": 0,
            "FUNCTION_PLUGINS": [],
            "DATABASES": {"default": {"NAME": str(self.database), "ENGINE": "django.db.backends.sqlite3"}},
        }
        text = "".join(f"{key} = {value!r}\n" for key, value in values.items())
        (self.settings_dir / f"{self.settings_module}.py").write_text(text)

    def _migrate(self) -> None:
        # Without the tables /metrics/find answers HTTP 500; the database is per instance, so
        # this runs once per GraphiteWeb, not per start().
        done = subprocess.run(
            [SYSTEM_PYTHON, "-m", "django", "migrate", "--run-syncdb", "--noinput"],
            env=merged_env(self._env()),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.state_dir,
            check=False,
        )
        with open(self.log_path, "a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise LabError(f"graphite-web migrate failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _start(self) -> None:
        self._write_settings()
        if not self.database.exists():
            template = _MIGRATED_DB.get("path")
            if template is not None and template.exists():
                shutil.copyfile(template, self.database)
            else:
                self._migrate()
                _remember_migrated_db(self.database)
        process = self._launch(
            [
                GUNICORN,
                "--bind", f"{self.bind}:{self.port}",
                "--workers", str(self.workers),
                "--timeout", "60",
                "--graceful-timeout", "2",
                # Also puts the state dir on the command line, where cleanup_stale() finds it.
                "--pythonpath", str(self.settings_dir),
                "--error-logfile", "-",
                "--access-logfile", str(self.log_path.with_name(f"{self.kind}-access.log")),
                "graphite.wsgi:application",
            ],
            env=self._env(),
        )
        wait_for_tcp(self.bind, self.port, self.timeout, process=process)
        deadline = time.monotonic() + self.timeout
        while True:  # the socket is bound before the workers have loaded Django
            try:
                self.find("lab-ready-probe")
                return
            except (OSError, LabError):
                if not process.alive:
                    raise ProcessExited(f"graphite-web exited; log {self.log_path}:\n{process.log_tail()}") from None
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def get(self, path: str, params: Mapping[str, object] | Iterable[tuple[str, object]], timeout: float = 10.0) -> bytes:
        """GET ``path`` with query ``params``; raises LabError on an HTTP error status."""
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with _HTTP.open(url, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise LabError(f"GET {url}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc

    def render_series(self, target: str, from_: str = "-1h", until: str = "now") -> dict[str, list[tuple[float, int]]]:
        """``/render?format=json``: each series' name → its non-null ``(value, unix_ts)`` points.

        ``from_`` / ``until`` take Graphite's syntax (``-1h``, ``now``, unix seconds). Ranges
        within the last 6 h are served at 1 s resolution.
        """
        body = self.get(
            "/render",
            [("target", target), ("from", from_), ("until", until), ("format", "json"), ("noCache", "true")],
        )
        return {
            series["target"]: [(value, int(ts)) for value, ts in series["datapoints"] if value is not None]
            for series in json.loads(body)
        }

    def render(self, target: str, from_: str = "-1h", until: str = "now") -> list[tuple[float, int]]:
        """Non-null ``(value, unix_ts)`` points of ``target`` (of all its series, in order)."""
        return [point for points in self.render_series(target, from_, until).values() for point in points]

    def find(self, query: str) -> list[str]:
        """``/metrics/find``: full paths of the nodes matching ``query`` (e.g. ``bandwidth.*``)."""
        body = self.get("/metrics/find", [("query", query), ("format", "treejson")])
        return [node["id"] for node in json.loads(body)]
