"""The task entry points run in this process against a real redis-server (broker, results,
locks, cycle keys) and a real TCP listener standing in for carbon (it records the plaintext
lines it receives). Faults are injected into the real Redis (a key of the wrong type makes
the real server answer WRONGTYPE to exactly the call under test), not by mocking the client.

The server is the session's `redis_server` (tests/integration/conftest.py): the Celery app of
this process keeps its broker and result-backend connections, so every module uses that one.
"""
from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from lab.services import RedisServer
from workers import config, store


class CarbonListener:
    """A real TCP server that keeps every line it is sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while chunk := conn.recv(65536):
                buffer += chunk
                *done, buffer = buffer.split(b"\n")
                with self._lock:
                    self.lines.extend(x.decode() for x in done)

    def close(self) -> None:
        self.sock.close()


@dataclass
class TaskEnv:
    url: str
    redis: Any
    carbon: CarbonListener
    settings: config.Settings
    extra: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        from workers import publisher

        if publisher._client is not None:
            publisher._client.close()
        self.carbon.close()

    def queued(self, queue: str) -> list[dict[str, Any]]:
        """The messages waiting in a kombu Redis queue: [{task, args, kwargs, id}]."""
        found = []
        for raw in self.redis.lrange(queue, 0, -1):
            message = json.loads(raw)
            args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
            found.append({"task": message["headers"]["task"], "args": args, "kwargs": kwargs,
                          "id": message["headers"]["id"]})
        return list(reversed(found))  # kombu LPUSHes: oldest last

    def stream(self) -> list[dict[str, Any]]:
        """The entries of the durable result stream, oldest first: [{id, kind, key, body}]."""
        from workers import results

        return [{"id": entry_id, "kind": fields["kind"], "key": fields["key"],
                 "body": json.loads(fields["body"])}
                for entry_id, fields in self.redis.xrange(results.STREAM)]

    def drain(self, carbon_port: int | None = None, **options: Any) -> int:
        """Run the result handler's drainer here until the stream is empty (against this env's
        carbon stand-in, or a real carbon-cache's port); returns the entries delivered."""
        from workers import results
        from workers.carbon import CarbonClient

        client = CarbonClient("127.0.0.1", carbon_port or self.carbon.port, 5.0)
        options.setdefault("replay_window_s", 0.0)  # settled as soon as written
        drainer = results.Drainer(self.redis, client, self.settings, "test-drainer", **options)
        drainer._next_status = float("inf")  # no status lines unless a test asks for them
        delivered = 0
        try:
            while self.redis.xlen(results.STREAM) or drainer._own_pending or drainer.unsettled:
                delivered += drainer.step(block_ms=10)
        finally:
            client.close()
        return delivered


def register(r, *names: str, ttl_s: int = 600) -> None:
    """Registry entries as node agents write them (addresses in 198.18.0.0/15)."""
    from workers import registry

    for i, name in enumerate(names, start=1):
        registry.announce(r, {"name": name, "address": f"198.18.0.{i}",
                              "ports": {"iperf3": 5201, "iperf2": 5001, "netperf": 12865},
                              "tools": ["iperf3"], "labels": {}, "serves": [],
                              "version": registry.VERSION, "started": 0.0}, ttl_s)


def make_env(redis_server: RedisServer, monkeypatch, **env: str) -> TaskEnv:
    """Point config, the Redis client and the Celery app of this process at `redis_server`."""
    from workers import app, publisher

    carbon = CarbonListener()
    values = {"CBANDWIDTH_REDIS_URL": redis_server.url, "NODE_NAME": "h1",
              "CBANDWIDTH_GRAPHITE_ADDRESS": "127.0.0.1",
              "CBANDWIDTH_GRAPHITE_PORT": str(carbon.port), "CBANDWIDTH_POLL_LENGTH": "1",
              "CBANDWIDTH_LOCK_WAIT": "0", "CBANDWIDTH_LOCK_RETRIES": "0", **env}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_settings", None)
    monkeypatch.setattr(publisher, "_client", None)
    settings = config.get()
    # No result backend: the tasks run here with apply() and store nothing, and a Redis
    # backend would subscribe to every sent task's result and unsubscribe whenever its
    # AsyncResult is collected, possibly after the session's redis-server stopped.
    app.conf.update(broker_url=redis_server.url, result_backend=None, task_always_eager=False)
    vars(app._local).pop("backend", None)  # a backend an earlier test made is made again
    r = store.client(redis_server.url)
    r.flushdb()
    monkeypatch.setattr(store, "client", lambda url=None: r)
    return TaskEnv(redis_server.url, r, carbon, settings, values)
