"""Per-role Redis ACL users (deploy/redis/users.acl): a real redis-server loads the file as
shipped (with a password appended to each user, as the README says), and each role's real
process runs with its own user: a node agent (registers, takes locks, runs a test), the result
handler (consumes the result, writes carbon), beat (emits a cycle), and the CLI (`status`,
`nodes`). Redis's own ACL LOG must stay empty through all of it (no operation was refused and
swallowed), and the operations a role must not do are refused."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.process import LabProcess, free_port, launch
from lab.services import RedisServer
from tests.conftest import require, wait_until
from tests.integration.inprocess import CarbonListener

ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
BIN = Path(sys.executable).parent
ROLES = ("cbw-agent", "cbw-results", "cbw-beat", "cbw-cli")
ADMIN = "admin-secret"


def password(user: str) -> str:
    return f"{user}-secret"


def installed_acl(where: Path) -> Path:
    """The shipped file with a password per user (the README's step), plus an admin default
    user for the test's own checks."""
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        user = line.split()[1]
        if user == "default":
            line = f"user default on >{ADMIN} ~* &* +@all"
        else:
            line += f" >{password(user)}"
        lines.append(line)
    path = where / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{password(user)}@{server.bind}:{server.port}/0"


def acl_log(server: RedisServer) -> list[str]:
    """ACL LOG as 'user: reason object' lines."""
    entries = []
    for entry in server.command("ACL", "LOG", "128"):
        fields = dict(zip(entry[::2], entry[1::2]))
        entries.append(f"{fields[b'username'].decode()}: {fields[b'reason'].decode()} "
                       f"{fields[b'object'].decode()!r} ({fields[b'context'].decode()})")
    return entries


@pytest.mark.timeout(180)
def test_each_role_works_with_its_own_acl_user_and_only_that(tmp_path):
    require("redis-server", "iperf3")
    import redis

    processes: list[LabProcess] = []
    carbon = CarbonListener()
    iperf_port = free_port()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with RedisServer(password=ADMIN, acl_file=installed_acl(tmp_path),
                     state_dir=tmp_path / "redis") as server:
        base = {k: v for k, v in os.environ.items()
                if not (k.startswith("CBANDWIDTH_") or k == "NODE_NAME")}
        base.update(CBANDWIDTH_GRAPHITE_ADDRESS="127.0.0.1",
                    CBANDWIDTH_GRAPHITE_PORT=str(carbon.port), CBANDWIDTH_POLL_LENGTH="1",
                    CBANDWIDTH_POLL_INTERVAL="30", CBANDWIDTH_SCHEDULE="star",
                    CBANDWIDTH_PERF_SERVERS="127.0.0.1:acltarget",
                    CBANDWIDTH_PERF_SERVER_PORT=str(iperf_port), CBANDWIDTH_DIRECTIONS="download",
                    CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_TIMEOUT_MARGIN="5",
                    PYTHONUNBUFFERED="1")

        def start(name: str, user: str, argv: list[str], **env: str) -> LabProcess:
            log = tmp_path / f"{name}.log"
            process = LabProcess(name, launch([str(BIN / "celery"), "-A", "workers", *argv],
                                              log_path=log, cwd=ROOT,
                                              env=dict(base, CBANDWIDTH_REDIS_URL=url(server, user),
                                                       **env)), log)
            processes.append(process)
            return process

        try:
            start("agent", "cbw-agent", ["worker", "--pool", "solo", "-l", "info"],
                  NODE_NAME="acl-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1")
            start("results", "cbw-results", ["worker", "--pool", "solo", "-Q", "results",
                                             "-l", "info"], NODE_NAME="result-handler")
            for process in processes:
                process.wait_for_log(r"ready\.", timeout=60)
            start("beat", "cbw-beat", ["beat", "-l", "info"], NODE_NAME="beat")
            # A whole cycle: beat plans and sends it, the agent takes its locks, measures and
            # hands the result over, the result handler writes it to carbon.
            line = wait_until(lambda: next((x for x in carbon.lines
                                            if re.search(r"acltarget\S* [0-9.e+]+ ", x)
                                            and "download" in x), None), 90,
                              what="the cycle's download rate in carbon")
            assert float(line.split()[1]) > 0, line
            wait_until(lambda: server.command("EXISTS", "cbw:cycle:last"), 60,
                       what="the cycle's report")

            cli_env = dict(base, CBANDWIDTH_REDIS_URL=url(server, "cbw-cli"))
            for command, shows in ((["nodes"], r"acl-node\s+127\.0\.0\.1"),
                                   (["status"], r"verdict\s+healthy")):
                run = subprocess.run([str(BIN / "cloud-bandwidth"), *command], env=cli_env,
                                     capture_output=True, text=True, timeout=60, cwd=tmp_path)
                assert run.returncode == 0, (command, run.stdout, run.stderr)
                assert re.search(shows, run.stdout), (command, run.stdout)
                assert password("cbw-cli") not in run.stdout + run.stderr

            assert all(p.alive for p in processes), [p.log_tail() for p in processes]
        except BaseException:
            # What Redis refused explains most failures here.
            print("ACL LOG:\n" + "\n".join(acl_log(server)))
            raise
        else:
            refused = acl_log(server)
            assert refused == [], "\n".join(refused)
        finally:
            for process in processes:
                process.stop()
            carbon.close()
            iperf.kill()
            iperf.wait(5)

        # What no role may do, and what a role other than the owner may not write.
        clients = {user: redis.Redis.from_url(url(server, user)) for user in ROLES}
        try:
            for user, r in clients.items():
                for forbidden in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"),
                                  ("SCRIPT", "FLUSH"), ("CLIENT", "KILL", "TYPE", "normal"),
                                  ("SHUTDOWN",), ("ACL", "LIST"), ("SWAPDB", "0", "1"),
                                  ("SET", "other:key", "1")):
                    with pytest.raises(redis.exceptions.NoPermissionError):
                        r.execute_command(*forbidden)
            node = "cbw:node:acl-node"
            for user in ("cbw-cli", "cbw-results", "cbw-beat"):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    clients[user].set(node, "{}")  # a forged registry entry
                clients[user].get(node)  # ...while reading it is allowed (no NoPermissionError)
            with pytest.raises(redis.exceptions.NoPermissionError):
                clients["cbw-cli"].set("cbw:lock:node:acl-node", "x")  # the CLI only reads
            with pytest.raises(redis.exceptions.NoPermissionError):
                clients["cbw-cli"].delete("cbw:cycle:guard")
        finally:
            for r in clients.values():
                r.close()
