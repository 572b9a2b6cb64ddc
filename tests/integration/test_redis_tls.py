"""`rediss://` as the README documents it: a node agent starts against a real redis-server that
serves only TLS (`--tls-port`, `--port 0`), with certificates this test makes (a private CA
the processes trust through SSL_CERT_FILE, the standard OpenSSL variable), and announces
itself in the registry over TLS."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lab.process import free_port, launch, LabProcess
from lab.services import RedisServer
from tests.conftest import require, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certificates(where: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for 127.0.0.1, server key)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
             "/CN=cbw test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=where)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=where)
    (where / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "server.pem",
             cwd=where)
    return where / "ca.pem", where / "server.pem", where / "server.key"


class TlsRedis(RedisServer):
    """The lab's redis-server, serving TLS only."""

    def __init__(self, certificates: tuple[Path, Path, Path], **kwargs):
        super().__init__(**kwargs)
        self.ca, self.cert, self.key = certificates

    def _config(self) -> str:
        return super()._config().replace(f"port {self.port}\n", "port 0\n") + "\n".join([
            f"tls-port {self.port}", f'tls-cert-file "{self.cert}"',
            f'tls-key-file "{self.key}"', f'tls-ca-cert-file "{self.ca}"',
            "tls-auth-clients no", ""])

    def _start(self) -> None:  # the lab's PING check speaks plaintext: use redis-py over TLS
        import time

        import redis

        conf = self.state_dir / "redis.conf"
        conf.write_text(self._config())
        self._launch(["redis-server", str(conf)])
        client = redis.Redis.from_url(self.tls_url, ssl_ca_certs=str(self.ca),
                                      password=self.password)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    client.close()
                    return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    @property
    def tls_url(self) -> str:
        return f"rediss://{self.bind}:{self.port}/0"


@pytest.mark.timeout(120)
def test_a_node_agent_starts_and_announces_itself_over_rediss(tmp_path):
    require("redis-server", "openssl")
    import redis

    certificates = make_certificates(tmp_path)
    with TlsRedis(certificates, state_dir=tmp_path / "redis") as server:
        env = dict(os.environ, NODE_NAME="tls-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1",
                   CBANDWIDTH_REDIS_URL=server.tls_url, SSL_CERT_FILE=str(certificates[0]),
                   CBANDWIDTH_HEARTBEAT_INTERVAL="1")
        log = tmp_path / "agent.log"
        agent = LabProcess("agent", launch(
            [str(Path(sys.executable).with_name("celery")), "-A", "workers", "worker",
             "--pool", "solo"], log_path=log, env=env, cwd=ROOT), log)
        try:
            client = redis.Redis.from_url(server.tls_url, ssl_ca_certs=str(certificates[0]),
                                          decode_responses=True)
            raw = wait_until(lambda: agent.alive and client.get("cbw:node:tls-node")
                             or (not agent.alive and "exited"), 60,
                             what="the agent's registry entry over TLS")
            assert raw != "exited", log.read_text()[-3000:]
            assert json.loads(raw)["address"] == "127.0.0.1"
            client.close()
        finally:
            agent.stop()


README = ROOT / "README.md"


def readme_tls_example() -> list[list[str]]:
    """The README's rediss:// example block, as argv lists (one per line)."""
    text = README.read_text()
    marker = text.index("<!-- redis-tls-example")
    block = re.search(r"```sh\n(.*?)```", text[marker:], re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(150)
def test_the_readme_rediss_example_with_a_password_and_acl_users_runs_a_test(tmp_path):
    """The README's example, with only its host, password and CA path replaced, against a
    real TLS-only redis-server that requires passwords (the project's ACL file, users with
    passwords): the agent starts, `cloud-bandwidth test` (as the CLI's user) runs a test on it
    and gets the result; no password shows in the logs or in `cloud-bandwidth config`."""
    require("redis-server", "openssl", "iperf3")
    from tests.integration.test_redis_acl import installed_acl, password

    certificates = make_certificates(tmp_path)
    admin = "admin-secret"
    server = TlsRedis(certificates, password=admin, acl_file=installed_acl(tmp_path),
                      state_dir=tmp_path / "redis")
    iperf_port = str(free_port())
    iperf = subprocess.Popen(["iperf3", "-s", "-p", iperf_port, "-B", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CBANDWIDTH_") or k in ("NODE_NAME", "SSL_CERT_FILE"))}
    *exports, command = readme_tls_example()
    replace = {"redis.example.net:6380": f"127.0.0.1:{server.port}",
               "the cbw-agent password": password("cbw-agent"),
               "/etc/cloud-bandwidth/redis-ca.pem": str(certificates[0])}
    for words in exports:
        assert words[0] == "export", words
        name, _, value = words[1].partition("=")
        for old, new in replace.items():
            value = value.replace(old, new)
        env[name] = value
    assert env["CBANDWIDTH_REDIS_URL"].startswith("rediss://cbw-agent@127.0.0.1:")
    assert command[:2] == ["celery", "-A"]
    env.update(NODE_NAME="tls-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1",
               CBANDWIDTH_HEARTBEAT_INTERVAL="1", PYTHONUNBUFFERED="1")
    log = tmp_path / "agent.log"
    agent = None
    bin_dir = Path(sys.executable).parent
    try:
        server.start()
        argv = [str(bin_dir / "celery"), *command[1:], "-l", "info", "--pool", "solo"]
        agent = LabProcess("agent", launch(argv, log_path=log, env=env, cwd=ROOT), log)
        agent.wait_for_log(r"ready\.", timeout=60)
        cli_env = dict(env, CBANDWIDTH_REDIS_URL=env["CBANDWIDTH_REDIS_URL"].replace(
            "cbw-agent@", "cbw-cli@"), CBANDWIDTH_REDIS_PASSWORD=password("cbw-cli"))
        cli_env.pop("NODE_NAME")

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(bin_dir / "cloud-bandwidth"), *args], env=cli_env,
                                  capture_output=True, text=True, timeout=90, cwd=tmp_path)

        wait_until(lambda: "tls-node" in cli("nodes").stdout, 30,
                   what="the agent in `cloud-bandwidth nodes` over TLS")
        run = cli("test", "tls-node", "127.0.0.1", "--port", iperf_port, "--length", "1",
                  "--directions", "download", "--json")
        assert run.returncode == 0, (run.stdout, run.stderr)
        result = json.loads(run.stdout)
        assert result["download"]["status"] == "ok" and result["download"]["bits_per_second"] > 0
        shown = cli("config")
        assert shown.returncode == 0, shown.stderr
        assert "rediss://cbw-cli:***@127.0.0.1" in shown.stdout
        secrets = (password("cbw-agent"), password("cbw-cli"), admin)
        for text in (shown.stdout, shown.stderr, run.stdout, run.stderr, log.read_text()):
            assert not any(secret in text for secret in secrets)
    finally:
        if agent is not None:
            agent.stop()
        server.close()
        iperf.kill()
        iperf.wait(5)
