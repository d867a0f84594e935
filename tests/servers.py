"""Starting and stopping the loopback servers tests need (moto_server, function servers), bounded in time."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, name: str, timeout: float = 30.0) -> None:
    """Return once ``proc`` listens on ``port``; fail the test if it exits or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            detail = proc.stderr.read()[-2000:] if proc.stderr else ""
            pytest.fail(f"{name} exited with {proc.returncode}: {detail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not listen on port {port} within {timeout:.0f} s")
            time.sleep(0.05)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc``, killing it if it does not exit in time."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)
