"""The carbon client against plain TCP listeners on loopback (the protocol is one-way lines)."""
import socket
import threading

import pytest

from workers.carbon import CarbonClient, CarbonUnavailable


class Listener:
    """Accepts connections on 127.0.0.1 and collects what each sends."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            self.received.append(data)

    def drop_connections(self):
        for conn in self.connections:
            conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.connections.clear()

    def close(self):
        self.drop_connections()
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def _wait_for(predicate, seconds=2.0):
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_batches_share_one_connection(listener):
    client = CarbonClient("127.0.0.1", listener.port, timeout_s=2)
    client.send(b"a 1 1\n")
    client.send(b"b 2 2\n")
    assert _wait_for(lambda: b"".join(listener.received) == b"a 1 1\nb 2 2\n")
    assert len(listener.connections) == 1
    client.close()


def test_reconnects_when_carbon_closed_the_connection_instead_of_losing_the_batch(listener):
    client = CarbonClient("127.0.0.1", listener.port, timeout_s=2)
    client.send(b"a 1 1\n")
    assert _wait_for(lambda: listener.received)
    listener.drop_connections()
    assert _wait_for(lambda: not listener.connections)
    client.send(b"b 2 2\n")
    assert _wait_for(lambda: b"b 2 2\n" in b"".join(listener.received))
    client.close()


def test_unreachable_carbon_raises_so_the_caller_keeps_the_batch():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    client = CarbonClient("127.0.0.1", port, timeout_s=1)
    with pytest.raises(CarbonUnavailable, match="connecting to carbon"):
        client.send(b"a 1 1\n")
