"""A loopback TCP proxy that fails on demand: an outage of what sits behind it (S3, a function server)
without stopping it (moto holds its data in memory).

Two kinds of outage, as networks fail:

- ``down()``: refused. Live connections are reset (RST) and new ones are reset on accept, so a client
  learns at once and retries.
- ``blackhole()``: silent. Nothing is forwarded any more and nothing is closed: a request in flight, or
  one sent on a connection made meanwhile, never gets an answer, and only the client's own read timeout
  ends it (a partition, a dead NAT entry). Those connections stay dead after ``up()``, as they would;
  only connections made after it work.

A pump thread blocked in ``recv`` keeps its socket open in the kernel even after another thread closes it
(no RST is sent then), so a reset shuts the socket down first: that wakes the pump and resets the peer.
"""

from __future__ import annotations

import socket
import struct
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` until told to fail (see the module)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._mode = "up"  # "up", "down" (reset) or "blackhole" (silent)
        self._closed = False
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()  # forwarding pairs' sockets
        self._dead: set[socket.socket] = set()  # black-holed: held open, never answered, reset by ``close``
        threading.Thread(target=self._accept, daemon=True, name=f"proxy-{self.port}").start()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:  # wakes a pump blocked in recv on it; close alone would leave the kernel socket open
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:  # the mode cannot change between this look and the registration below
                if self._mode != "up":
                    self._turn_away(client)
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                if self._mode != "up":  # the outage began while connecting upstream
                    self._reset(upstream)
                    self._turn_away(client)
                    continue
                self._live.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _turn_away(self, client: socket.socket) -> None:
        """A connection that arrived during an outage (the lock held): reset when down, held unanswered in a
        black hole."""
        if self._mode == "down":
            self._reset(client)
        else:
            self._dead.add(client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if src in self._live:
                    dst.sendall(data)
                # else black-holed: what arrives goes nowhere
        except OSError:
            pass
        with self._lock:
            if src in self._dead and not self._closed:
                return  # black-holed: left open and unanswered (``close`` resets it)
            self._live.discard(src)
            self._live.discard(dst)
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def down(self) -> None:
        """Refuse service: reset every connection, now and on accept, until ``up``."""
        with self._lock:
            self._mode = "down"
            live, self._live = list(self._live), set()
        for s in live:
            self._reset(s)

    def blackhole(self) -> None:
        """Fail silently: forward nothing, answer nothing, close nothing, until ``up`` (see the module)."""
        with self._lock:
            self._mode = "blackhole"
            self._dead.update(self._live)
            self._live = set()

    def up(self) -> None:
        with self._lock:
            self._mode = "up"

    def close(self) -> None:
        self._closed = True
        self.down()
        with self._lock:
            dead, self._dead = list(self._dead), set()
        for s in dead:
            self._reset(s)
        try:  # wakes the thread blocked in accept (close alone does not, on Linux)
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
