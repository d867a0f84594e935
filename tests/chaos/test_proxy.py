"""The fault proxy does what the campaign's faults say: a reset reaches a client whose request is in flight
(it once did not: the pump blocked in recv kept the socket open, and the client hung until its read
timeout), and a black hole answers nothing until the client gives up, also after it heals."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.support.proxy import TcpProxy


@pytest.fixture
def echo_port():
    """A loopback server that echoes every connection's bytes back, except ``wait``: that it holds, unanswered
    (a slow request). Stopped after the test."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    if data != b"wait":
                        conn.sendall(data)
            except OSError:
                pass

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.shutdown(socket.SHUT_RDWR)
    server.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(1.0)
    return sock


def echoes(sock: socket.socket) -> bool:
    sock.sendall(b"ping")
    return sock.recv(4) == b"ping"


def refused(sock: socket.socket) -> bool:
    """The proxy reset or closed ``sock`` (a timeout is not a refusal: the proxy left it hanging)."""
    try:
        return not echoes(sock)
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_down_resets_a_connection_waiting_for_its_answer(echo_port):
    proxy = TcpProxy(echo_port)
    try:
        waiting = connect(proxy)
        assert echoes(waiting)
        waiting.sendall(b"wait")  # a request the server is slow to answer
        time.sleep(0.1)  # both pumps are blocked in recv now: the case that once hung
        began = time.monotonic()
        proxy.down()
        try:
            assert waiting.recv(4) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - began < 0.9, "the client learnt of the outage only from its own timeout"
        try:
            assert refused(connect(proxy))  # new connections are reset too
        except (ConnectionResetError, BrokenPipeError):
            pass  # reset before the handshake was through
        proxy.up()
        assert echoes(connect(proxy))
    finally:
        proxy.close()


def test_blackhole_answers_nothing_and_its_connections_stay_dead(echo_port):
    proxy = TcpProxy(echo_port)
    try:
        in_flight = connect(proxy)
        assert echoes(in_flight)
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            echoes(in_flight)
        meanwhile = connect(proxy)  # the connection is accepted, as a partitioned network's SYN-ACK may be
        with pytest.raises(TimeoutError):
            echoes(meanwhile)
        proxy.up()
        with pytest.raises(TimeoutError):
            echoes(in_flight)
        assert echoes(connect(proxy))
    finally:
        proxy.close()
