"""Waiting on an application's progress rather than on the clock: a fault timed for one machine's speed
finds nothing under way on a machine 3x faster (the whole workload was read before it)."""

from __future__ import annotations

import threading
import time


def processed(app) -> int:
    """Messages the shards have processed so far (replays after a rollback count again)."""
    return sum(status["processed"] for status in app._statuses())


def wait_until_processed(app, at_least: int, timeout: float = 60.0, stop: threading.Event | None = None) -> bool:
    """Poll until the shards have processed ``at_least`` messages; False on ``timeout`` or once ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while processed(app) < at_least:
        if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
