"""A small TCP proxy that misbehaves on purpose: delays, cuts, throttles, stalls, corrupts.

It sits between a node and a real server on 127.0.0.1 and damages only the server's
answers (the downstream direction), the way a satellite link or a bad middlebox would.
Settings can be changed while it runs; counters say how many bytes reached the client.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


@dataclass
class Faults:
    cut_every: int = 0  # close the connection each time this many more bytes went down
    throttle: float = 0.0  # bytes per second downstream (0: no limit)
    delay: float = 0.0  # seconds before the first byte of each connection
    stall_after: int = 0  # after this many bytes on a connection, send nothing more...
    stall_connections: int = 0  # ...on this many connections (then behave)
    flip_at: int = -1  # flip one byte at this downstream offset (total across connections)
    refuse: bool = False  # accept and close at once (the far end is down)
    down_after_cuts: int = 0  # after this many cuts, refuse every connection


class FaultProxy:
    def __init__(self, target_port: int, faults: Faults | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.faults = faults or Faults()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.down_bytes = 0  # bytes delivered to clients, all connections
        self.cuts = 0
        self.connections = 0
        self._since_cut = 0
        self._stalled = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            f = self.faults
            if f.refuse or (f.down_after_cuts and self.cuts >= f.down_after_cuts):
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe_down, args=(upstream, client), daemon=True).start()

    def _pipe_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _pipe_down(self, upstream: socket.socket, client: socket.socket) -> None:
        f = self.faults
        conn_bytes = 0
        stall_this = False
        with self._lock:
            if f.stall_after and self._stalled < f.stall_connections:
                self._stalled += 1
                stall_this = True
        try:
            if f.delay:
                time.sleep(f.delay)
            while True:
                data = upstream.recv(16384)
                if not data:
                    break
                with self._lock:
                    if f.flip_at >= 0 and self.down_bytes <= f.flip_at < self.down_bytes + len(
                        data
                    ):
                        i = f.flip_at - self.down_bytes
                        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                        f.flip_at = -1
                    cut = False
                    if f.cut_every and self._since_cut + len(data) >= f.cut_every:
                        data = data[: f.cut_every - self._since_cut]
                        cut = True
                if stall_this and conn_bytes + len(data) >= f.stall_after:
                    data = data[: max(0, f.stall_after - conn_bytes)]
                    self._send(client, data)
                    conn_bytes += len(data)
                    time.sleep(3600)  # the peer's timeout ends this
                    return
                self._send(client, data)
                conn_bytes += len(data)
                if cut:
                    with self._lock:
                        self.cuts += 1
                        self._since_cut = 0
                    return
                with self._lock:
                    self._since_cut += len(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def _send(self, client: socket.socket, data: bytes) -> None:
        rate = self.faults.throttle
        step = 4096 if rate else len(data) or 1
        for i in range(0, len(data), step):
            piece = data[i : i + step]
            client.sendall(piece)
            with self._lock:
                self.down_bytes += len(piece)
            if rate:
                time.sleep(len(piece) / rate)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
