"""Cluster tests start their own multi-node Ray (``tests/support/ray_cluster.py``) and run the application
in a separate driver process against it; they never use the session Ray of ``tests/conftest.py``."""

from __future__ import annotations

import pytest

from tests.support.ray_cluster import RayCluster


@pytest.fixture
def ray_cluster():
    """A ``RayCluster`` with nothing started yet (the test starts the head and workers); always stopped,
    every process of every node killed."""
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()
