"""Fixtures for the checkpoint tests: fresh store URLs (memory://, a local directory, S3 on moto_server)
(helpers live in ckpt_helpers.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest



@pytest.fixture(params=["memory", "local"])
def store_url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://rayfun-test-{uuid.uuid4().hex}"
    return str(tmp_path / "checkpoints")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_s3():
    """A real S3 API (moto_server) on a free loopback port; always stopped, start bounded to 30 s.
    Yields storage_options for s3fs with the bucket ``rayfun-test`` created."""
    s3fs = pytest.importorskip("s3fs")
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto_server not installed")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto_server did not start within 30 s")
                time.sleep(0.1)
        options = {"key": "testing", "secret": "testing", "use_listings_cache": False,
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("rayfun-test")
        yield options
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
