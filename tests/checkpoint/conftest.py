"""Fixtures for the checkpoint tests: fresh store URLs (memory://, a local directory, S3 on moto_server)
(helpers live in tests/support/checkpoints.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(params=["memory", "local"])
def store_url(request, tmp_path) -> str:
    if request.param == "memory":
        return f"memory://rayfun-test-{uuid.uuid4().hex}"
    return str(tmp_path / "checkpoints")
