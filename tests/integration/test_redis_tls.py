"""`rediss://` as the README documents it: a node agent starts against a real redis-server that
serves only TLS (`--tls-port`, `--port 0`), with certificates this test makes (a private CA
the processes trust through SSL_CERT_FILE, the standard OpenSSL variable), and announces
itself in the registry over TLS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lab.process import launch, LabProcess
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
        client = redis.Redis.from_url(self.tls_url, ssl_ca_certs=str(self.ca))
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
