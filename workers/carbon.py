"""A carbon plaintext client: one persistent TCP connection, whole batches per write, timeouts.

Carbon's line protocol has no acknowledgement, so the client does what it can to never write
into a connection carbon has already closed: before each batch it checks whether the peer has
hung up (a stopped carbon closes its end; a write into that socket would "succeed" into the
kernel buffer and be lost) and reconnects. Any error raises CarbonUnavailable and drops the
connection; the caller keeps the batch and tries again later.
"""
from __future__ import annotations

import errno
import logging
import select
import socket

log = logging.getLogger(__name__)


class CarbonUnavailable(ConnectionError):
    """Carbon could not be reached or the batch could not be written."""


class CarbonClient:
    def __init__(self, host: str, port: int, timeout_s: float = 5.0):
        """timeout_s bounds the connect and each send: a carbon whose cache is full stops
        reading its sockets, and the result handler must not hang on it forever."""
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._sock: socket.socket | None = None
        self.connections = 0
        """How many connections were opened: what was written into an earlier one may have
        been lost with it (workers.results replays it)."""

    def send(self, payload: bytes) -> None:
        """Write one batch of newline-terminated lines. Raises CarbonUnavailable."""
        if not payload:
            return
        sock = self._connected()
        try:
            sock.sendall(payload)
        except OSError as exc:
            self.close()
            raise CarbonUnavailable(f"writing to carbon {self.host}:{self.port}: {exc}") from exc

    def connect(self) -> int:
        """Connect if not connected (or carbon hung up); returns the connection's number.
        Raises CarbonUnavailable."""
        self._connected()
        return self.connections

    def alive(self) -> bool:
        """Connected, and carbon has not hung up (no data is sent)."""
        return self._sock is not None and not self._peer_closed(self._sock)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def _connected(self) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            log.info("carbon %s:%s closed the connection; reconnecting", self.host, self.port)
            self.close()
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), self.timeout_s)
            except OSError as exc:
                raise CarbonUnavailable(
                    f"connecting to carbon {self.host}:{self.port}: {exc}") from exc
            self.connections += 1
            self._sock.settimeout(self.timeout_s)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._sock

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """True when the peer has hung up (readable with EOF, or an error pending).

        Carbon never writes to us, so a readable socket means EOF or an error."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError as exc:
            return exc.errno != errno.EAGAIN
