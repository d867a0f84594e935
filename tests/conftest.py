"""Shared fixtures: one local Ray for the whole test session (sized for a 2-core machine)."""

from __future__ import annotations

import os

import pytest

from tests.support.servers import moto_executable, start_moto, stop

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from rayfun.ray_auth import keep_token_auth

    if not ray.is_initialized():
        # Ray's token authentication stays on: ray.init makes a token in ~/.ray/auth_token, which the
        # drivers and servers the tests start as the same user find there
        keep_token_auth()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def moto_s3():
    """A real S3 API (moto_server) on a free loopback port; always stopped, start bounded to 30 s.
    Yields storage_options for s3fs with the bucket ``rayfun-test`` created."""
    pytest.importorskip("s3fs")
    if moto_executable() is None:
        pytest.skip("moto_server not installed")
    proc, options = start_moto()
    try:
        yield options
    finally:
        stop(proc)
