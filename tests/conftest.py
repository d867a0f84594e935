"""Shared fixtures: one local Ray for the whole test session (sized for a 2-core machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from .servers import free_port, stop, wait_for_port

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # Ray's token authentication stays on (its default): ray.init makes a token in ~/.ray/auth_token,
        # which the drivers and servers the tests start as the same user find there
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API (moto_server) on a free loopback port; always stopped, start bounded to 30 s.
    Yields storage_options for s3fs with the bucket ``rayfun-test`` created."""
    s3fs = pytest.importorskip("s3fs")
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto_server not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(proc, port, "moto_server")
        options = {"key": "testing", "secret": "testing", "use_listings_cache": False,
                   "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "eu-west-1"}}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("rayfun-test")
        yield options
    finally:
        stop(proc)
