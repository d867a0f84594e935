"""Starting and stopping the loopback servers tests and the chaos bench need (moto_server, function
servers), bounded in time. Plain exceptions, not pytest's: bench/chaos.py uses these too."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

MOTO_BUCKET = "rayfun-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(proc: subprocess.Popen, port: int, name: str, timeout: float = 30.0) -> None:
    """Return once ``proc`` listens on ``port``; raise if it exits or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            detail = proc.stderr.read()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}: {detail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f} s") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc`` (if it still runs), killing it if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def s3_options(port: int) -> dict:
    """s3fs storage_options for a moto_server (or a proxy in front of it) on loopback ``port``."""
    return {
        "key": "testing",
        "secret": "testing",
        "use_listings_cache": False,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"},
    }


def moto_executable() -> str | None:
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    return exe if os.path.exists(exe) else None


def start_moto() -> tuple[subprocess.Popen, dict]:
    """A real S3 API (moto_server) on a free loopback port with bucket ``MOTO_BUCKET``: the process (stop it)
    and the s3fs storage_options that reach it."""
    import s3fs

    exe = moto_executable()
    if exe is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(proc, port, "moto_server")
        options = s3_options(port)
        s3fs.S3FileSystem(**options).mkdir(MOTO_BUCKET)
    except BaseException:
        stop(proc)
        raise
    return proc, options
